"""What the benchmark measures: the config (overrides applied), parameters, synthetic batches.

Inputs are synthetic uint8 batches (values do not change the work), parameters random unless
`weights` is given (speed does not depend on them).
"""

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import models, weights as weights_lib


def bench_config(config, *, batch_size: int = 0, image_size: int = 0, dtype: str = "",
                 weights: str = ""):
  """The config to measure: overrides applied, weights '' (random) unless given."""
  c = config.copy_and_resolve_references()
  if batch_size:
    c.batch_size = c.eval_batch_size = int(batch_size)
  else:
    c.eval_batch_size = c.batch_size
  if image_size:
    c.data.image_size = int(image_size)
  if dtype:
    c.model.dtype = dtype
  c.weights = weights
  return c


def finetune_config(config):
  """The same config with everything trainable (the fine-tune step)."""
  c = config.copy_and_resolve_references()
  c.trainable, c.lr_groups = (".*",), ()
  return c


def random_params(config, model, seed: int = 0) -> dict:
  """He-normal kernels, zero biases, from the model's shapes in NumPy (no init compile)."""
  size = config.data.image_size
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False)["params"],
                          jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.RandomState(seed)

  def init(path, s):
    if path[-1].key == "bias":
      return np.zeros(s.shape, np.float32)
    std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * std).astype(np.float32)
  return jax.tree_util.tree_map_with_path(init, shapes)


def model_params(config, model):
  """config.weights loaded into the model's parameters, or random ones when it is ''."""
  if not config.weights:
    return random_params(config, model)
  return weights_lib.load_for_model(config.weights, random_params(config, model),
                                    models.keras_layer_map(config))


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """uint8 images and labels: the host arrays both JAX and Keras are fed."""
  rng = np.random.RandomState(seed)
  size = config.data.image_size
  classes = max(2, int(config.head.num_classes))
  return {"image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
          "label": rng.randint(0, classes, batch_size).astype(np.int32),
          "mask": np.ones(batch_size, bool)}
