"""build_model for the BatchNorm backbones: variable trees, BN modes from the config, dtype.
(A frozen BN's train-mode apply against Keras: tests/test_bn_semantics.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpsflax import config_base
from rpsflax.models import BACKBONES, backbone_layer_names, build_model, keras_layer_map
from rpsflax.models.resnet import resnet50_bn_names


def recipe(name, **model):
  c = config_base.get_config()
  c.model.name = name
  c.head.num_classes = 1
  c.head.pooling = "avg"
  c.model.update(model)
  return c


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_classifier_variables_and_layer_map(name):
  c = recipe(name)
  shapes = jax.eval_shape(build_model(c).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert set(shapes) == {"params", "batch_stats"}
  assert set(shapes["params"]) == {"backbone", "head"} and set(shapes["batch_stats"]) == {"backbone"}
  layer_map = keras_layer_map(c)
  assert list(layer_map) == backbone_layer_names(name)
  for kname, path in layer_map.items():  # every Keras layer has its module, BN in both trees
    assert kname in shapes["params"]["backbone"], kname
    assert (kname in shapes["batch_stats"]["backbone"]) == ("bn" in kname.lower()), kname


def test_model_names_live_in_one_place():
  """config_check reads models.BACKBONES: its error lists the new backbones."""
  from rpsflax import config_check
  from rpsflax.errors import ConfigError
  assert set(BACKBONES) == {"vgg16", "resnet50", "mobilenet_v2", "cnn"}
  c = recipe("resnet5O")
  with pytest.raises(ConfigError) as e:
    config_check.check_config(c)
  assert "'resnet50', 'mobilenet_v2'" in str(e.value)
  c = recipe("mobilenet_v2", alpha=0.9)
  with pytest.raises(ConfigError, match=r"config.model.alpha=0.9: use one of 0.35"):
    config_check.check_config(c)


def test_bn_modes_reach_the_module():
  frozen = build_model(recipe("resnet50", bn_trainable=False))
  assert frozen.backbone.bn_training == ()
  c = recipe("resnet50", bn_trainable=True)
  c.trainable = ("head/.*", "backbone/conv5_.*")
  modes = build_model(c).backbone.bn_training
  assert set(modes) == {n for n in resnet50_bn_names() if n.startswith("conv5_")}


def test_bfloat16_forward_close_to_float32():
  c = recipe("mobilenet_v2", alpha=0.35)
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
  # Stand-in variables (an op-by-op init of MobileNetV2 takes about 15 s on a CPU).
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(build_model(c).init, jax.random.key(0), x)
  v = jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(np.float32), shapes)
  v["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 1.0, v["batch_stats"])
  c16 = recipe("mobilenet_v2", alpha=0.35, dtype="bfloat16")
  f32, bf16 = jax.jit(lambda v, x: (build_model(c).apply(v, x, method="features"),
                                    build_model(c16).apply(v, x, method="features")))(v, x)
  assert bf16.dtype == jnp.bfloat16
  rel = float(jnp.abs(bf16.astype(jnp.float32) - f32).max() / jnp.abs(f32).max())
  print(f"MobileNetV2 bf16 vs fp32 features: {rel:.2e}")
  assert rel < 0.1
