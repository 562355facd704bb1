import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpsflax import config_base
from rpsflax.models import build_model
from rpsflax.models.layers import ConvReLU, max_pool_2x2


@pytest.mark.parametrize("name,size,classes,feat", [("vgg16", 64, 3, (2, 2, 512)),
                                                     ("cnn", 150, 1, (7, 7, 128))])
def test_classifier_paths_and_shapes(name, size, classes, feat):
  c = config_base.get_config()
  c.model.name, c.data.image_size, c.head.num_classes = name, size, classes
  model = build_model(c)
  x = jnp.zeros((2, size, size, 3))
  v = model.init(jax.random.key(0), x)
  assert set(v["params"]) == {"backbone", "head"}
  assert model.apply(v, x).shape == (2, classes)
  assert model.apply(v, x, method=model.features).shape == (2, *feat)


def test_registry_is_the_one_list_of_backbones():
  """Each model file's SPEC under its own name; the lists other modules read are views of it;
  an unknown name fails naming the choices."""
  from rpsflax import models, preprocess

  assert models.BACKBONES == tuple(models.REGISTRY)
  assert all(name == spec.name for name, spec in models.REGISTRY.items())
  assert set(models.IMAGENET_BACKBONES) == {n for n, s in models.REGISTRY.items() if s.release}
  for name, spec in models.REGISTRY.items():
    assert spec.preprocess_mode in preprocess.MODES
    assert bool(spec.bn_names) == spec.takes_train == (name in models.BATCHNORM_BACKBONES)
    if spec.release:  # a Keras application: config.preprocess may name it
      assert spec.keras_application and name in preprocess.PREPROCESSORS
      assert spec.release(False, 224, 1.0).backbone == name
  with pytest.raises(ValueError, match="no such backbone; use one of .*'vgg16'"):
    models.get_spec("vgg61")


class _ConvReLUThenPool(nn.Module):
  """What models.layers.ConvReLU replaces: nn.Conv -> ReLU -> max_pool_2x2, in that order."""

  features: int
  padding: str

  @nn.compact
  def __call__(self, x):
    return max_pool_2x2(nn.relu(nn.Conv(self.features, (3, 3), padding=self.padding,
                                        name="conv")(x)))


class _PoolThenBiasAndReLU(nn.Module):
  features: int
  padding: str

  @nn.compact
  def __call__(self, x):
    return ConvReLU(self.features, padding=self.padding, pool=True, name="conv")(x)


@pytest.mark.parametrize("padding,side,cin", [("VALID", 15, 3), ("SAME", 12, 8)])
def test_pooling_before_bias_and_relu_gives_the_same_bits(padding, side, cin):
  """ConvReLU(pool=True) pools, then adds the bias and applies the ReLU: the same parameters
  and initialisation as nn.Conv, the same output bits as conv -> ReLU -> pool (odd sides
  included), the same kernel and input gradients; the bias gradient equal to rounding."""
  x = jax.random.normal(jax.random.key(1), (4, side, side, cin))
  ref = _ConvReLUThenPool(16, padding)
  fast = _PoolThenBiasAndReLU(16, padding)
  v_ref, v_fast = ref.init(jax.random.key(0), x), fast.init(jax.random.key(0), x)
  assert jax.tree.map(lambda a, b: bool((a == b).all()), v_ref, v_fast) == jax.tree.map(
      lambda a: True, v_ref)
  # A bias that makes the ReLU cut some windows wholly, some partly, some not at all.
  v_ref["params"]["conv"]["bias"] = jnp.linspace(-1.0, 1.0, 16)
  out_ref, out_fast = jax.jit(ref.apply)(v_ref, x), jax.jit(fast.apply)(v_ref, x)
  assert (out_ref == out_fast).all()
  w = jax.random.normal(jax.random.key(2), out_ref.shape)
  g_ref, g_fast = (jax.jit(jax.grad(lambda v, x, f=f: jnp.sum(f(v, x) * w), argnums=(0, 1)))(
      v_ref, x) for f in (ref.apply, fast.apply))
  assert (g_ref[1] == g_fast[1]).all()
  assert (g_ref[0]["params"]["conv"]["kernel"] == g_fast[0]["params"]["conv"]["kernel"]).all()
  np.testing.assert_allclose(g_fast[0]["params"]["conv"]["bias"],
                             g_ref[0]["params"]["conv"]["bias"], rtol=1e-5, atol=1e-6)
