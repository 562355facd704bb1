"""Parameter labels from config patterns, and optimizers with Keras' update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from rpsflax import config_base, models, optim


def _config(**overrides):
  c = config_base.get_config()
  c.data.image_size = 32
  for key, value in overrides.items():
    c[key] = value
  return c


def _vgg_shapes(config):
  """VGG16 + head parameter shapes, computed without running anything."""
  model = models.build_model(config)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda r, x: model.init(r, x), jax.random.PRNGKey(0), x)["params"]


def _flat_labels(params, config):
  return {"/".join(k): v for k, v in
          traverse_util.flatten_dict(optim.param_labels(params, config)).items()}


def test_default_rps_labels_freeze_the_backbone():
  labels = _flat_labels(_vgg_shapes(_config()), _config())
  assert labels["head/predictions/kernel"] == "trainable"
  assert labels["head/predictions/bias"] == "trainable"
  backbone = {k: v for k, v in labels.items() if k.startswith("backbone/")}
  assert len(backbone) == 26  # 13 convs x (kernel, bias)
  assert set(backbone.values()) == {"frozen"}


def test_finetune_config_puts_block5_in_its_own_group(repo_root):
  rps_finetune = config_base.load_sibling(str(repo_root / "configs" / "x.py"), "rps_finetune")
  config = rps_finetune.get_config()
  config.data.image_size = 32
  labels = _flat_labels(_vgg_shapes(config), config)
  for name, label in labels.items():
    if name.startswith("backbone/block5_"):
      assert label == "group_0", name
    elif name.startswith("backbone/"):
      assert label == "frozen", name
    else:
      assert label == "trainable", name
  assert sum(k.startswith("backbone/block5_") for k in labels) == 6
  assert optim.learning_rates(config) == {"trainable": 1e-3, "group_0": 1e-5}


def test_groups_win_over_trainable_and_params_prefix_is_ignored():
  params = {"params": {"a": {"w": 1.0, "b": 2.0}, "c": {"w": 3.0}}}
  config = _config(trainable=(".*",), lr_groups=(("^a/w$", 0.5),))
  labels = _flat_labels(params, config)
  assert labels == {"params/a/w": "group_0", "params/a/b": "trainable", "params/c/w": "trainable"}


@pytest.mark.parametrize("overrides, key", [
    ({"trainable": ("head/.*", "blokc5_.*")}, "config.trainable"),
    ({"lr_groups": (("backbone/block9_.*", 1e-5),)}, "config.lr_groups[0]"),
    ({"trainable": (), "lr_groups": ()}, "config.trainable"),
    ({"trainable": ("nothing",)}, "config.trainable"),
])
def test_bad_patterns_name_the_key(overrides, key):
  config = _config(**overrides)
  with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
    optim.param_labels(_vgg_shapes(_config()), config)


def test_frozen_params_hold_no_optimizer_state():
  params = {"backbone": {"w": jnp.ones((50, 50))}, "head": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}}
  tx = optim.create_optimizer(_config(), params)
  sizes = [x.size for x in jax.tree.leaves(tx.init(params))]
  assert sum(sizes) == 3 * 2 + 2  # RMSprop's nu for the head only, nothing for the 2,500 frozen


def test_group_learning_rate_is_used():
  params = {"head": {"w": jnp.ones(3)}, "backbone": {"w": jnp.ones(3)}}
  config = _config(trainable=("head/.*",), lr_groups=(("backbone/.*", 1e-5),))
  config.optim.name = "sgd"
  tx = optim.create_optimizer(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["w"], -1e-3)
  np.testing.assert_allclose(updates["backbone"]["w"], -1e-5)


def _keras_updates(name, grads, lr, **kwargs):
  import keras  # a required dependency: a missing Keras must fail, not skip
  var = keras.Variable(np.zeros_like(grads[0]))
  opt = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
         "sgd": keras.optimizers.SGD}[name](learning_rate=lr, **kwargs)
  values = []
  for g in grads:
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    values.append(np.array(var.numpy()))
  return values


def _optax_updates(config, grads):
  params = {"head": {"w": jnp.zeros_like(grads[0])}}
  tx = optim.create_optimizer(config, params)
  state = tx.init(params)
  values = []
  for g in grads:
    updates, state = tx.update({"head": {"w": jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)
    values.append(np.asarray(params["head"]["w"]))
  return values


@pytest.mark.parametrize("name, momentum, kwargs", [
    ("rmsprop", 0.0, {"rho": 0.9, "epsilon": 1e-7}),
    ("rmsprop", 0.5, {"rho": 0.9, "epsilon": 1e-7, "momentum": 0.5}),
    ("sgd", 0.9, {"momentum": 0.9}),
])
def test_updates_match_keras(name, momentum, kwargs):
  # Tiny gradients make epsilon matter: sqrt(v + eps) and sqrt(v) + eps differ ~10x here.
  rng = np.random.RandomState(0)
  grads = [(rng.randn(5) * 1e-4).astype(np.float32) for _ in range(4)]
  config = _config()
  config.optim.name = name
  config.optim.momentum = momentum
  expected = _keras_updates(name, grads, 1e-3, **kwargs)
  got = _optax_updates(config, grads)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-9)


def test_adam_matches_keras_up_to_epsilon_placement():
  rng = np.random.RandomState(1)
  grads = [rng.randn(5).astype(np.float32) for _ in range(4)]  # eps negligible at this scale
  config = _config()
  config.optim.name = "adam"
  expected = _keras_updates("adam", grads, 1e-3, epsilon=1e-7)
  for e, g in zip(expected, _optax_updates(config, grads)):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-8)
