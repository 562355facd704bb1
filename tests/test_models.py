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
