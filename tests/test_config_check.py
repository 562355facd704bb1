import ml_collections
import pytest

from rpsflax import config_base
from rpsflax.config_check import check_config, min_image_size
from rpsflax.errors import ConfigError


def _load(repo_root, name):
  return config_base.load_sibling(str(repo_root / "configs" / "x.py"), name).get_config()


@pytest.mark.parametrize("name", ["rps", "catsdogs", "rps_avgpool", "catsdogs_small_data"])
def test_recipes_are_valid(repo_root, name):
  check_config(_load(repo_root, name))


@pytest.mark.parametrize("mutate,key", [
    (lambda c: setattr(c, "batch_size", 0), "config.batch_size"),
    (lambda c: setattr(c.optim, "learning_rate", -1e-3), "config.optim.learning_rate"),
    (lambda c: setattr(c.data, "image_size", 16), "config.data.image_size"),
    (lambda c: setattr(c.head, "dropout", 1.0), "config.head.dropout"),
    (lambda c: setattr(c.head, "pooling", "min"), "config.head.pooling"),
    (lambda c: setattr(c.model, "dtype", "float64"), "config.model.dtype"),
    (lambda c: setattr(c, "trainable", ("head/(",)), "config.trainable"),
    (lambda c: setattr(c, "lr_groups", (("backbone/block5_.*", -1.0),)), "config.lr_groups[0]"),
    (lambda c: setattr(c.augment, "zoom_range", 1.5), "config.augment.zoom_range"),
])
def test_impossible_values_name_the_key(mutate, key):
  c = config_base.get_config()
  mutate(c)
  with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace(".", r"\.")):
    check_config(c)


def test_unknown_key_suggests_the_right_one():
  c = config_base.get_config()
  c.optim.learning_rat = 0.1  # a typo in a recipe adds a new key
  with pytest.raises(ConfigError, match=r"config\.optim\.learning_rat: unknown key "
                                        r"\(did you mean config\.optim\.learning_rate\?\)"):
    check_config(c)


def test_wrong_type_is_reported():
  c = config_base.get_config()
  c.data = ml_collections.ConfigDict(dict(c.data))
  c.data.unlock()
  del c.data["image_size"]
  c.data.image_size = "224"  # a new field of the wrong type
  with pytest.raises(ConfigError, match=r"config\.data\.image_size: expected int, got str"):
    check_config(c)


def test_all_problems_reported_at_once():
  c = config_base.get_config()
  c.batch_size = 0
  c.num_epochs = 0
  with pytest.raises(ConfigError) as e:
    check_config(c)
  assert "2 problems" in str(e.value)
  assert "config.batch_size" in str(e.value) and "config.num_epochs" in str(e.value)


def test_min_image_size_matches_the_models():
  import jax
  import jax.numpy as jnp
  from rpsflax.models import build_model
  for name in ("vgg16", "cnn"):
    c = config_base.get_config()
    c.model.name = name
    s = min_image_size(name)
    model = build_model(c)
    feats = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x,
                                                            method=model.features)[0],
                           jnp.zeros((1, s, s, 3)))
    assert min(feats.shape[1:3]) == 1, (name, feats.shape)
    c.head.pooling = "max"
    # two pixels less leave an empty (0x0) feature map, which the head's global max refuses
    with pytest.raises(ValueError, match="zero-size array to reduction operation max"):
      jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                     jnp.zeros((1, s - 2, s - 2, 3)))
