import jax
import jax.numpy as jnp
import pytest

from rpsflax import config_base
from rpsflax.models import build_model


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
