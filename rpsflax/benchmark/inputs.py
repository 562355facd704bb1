"""What the benchmark measures: the config (overrides applied), parameters, synthetic batches.

Inputs are synthetic uint8 batches (values do not change the work), parameters (and BatchNorm
statistics) random unless `weights` is given (speed does not depend on them).
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


def random_variables(config, model, seed: int = 0) -> dict:
  """{'params', 'batch_stats'} from the model's shapes in NumPy (no init compile): He-normal
  kernels, zero biases, BatchNorm as the identity (scale and moving variance 1, moving mean 0).
  'batch_stats' is {} for a model without BatchNorm."""
  size = config.data.image_size
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.RandomState(seed)
  constant = {"bias": 0.0, "mean": 0.0, "scale": 1.0, "var": 1.0}

  def init(path, s):
    name = path[-1].key
    if name in constant:
      return np.full(s.shape, constant[name], np.float32)
    std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * std).astype(np.float32)
  v = jax.tree_util.tree_map_with_path(init, dict(shapes))
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def random_params(config, model, seed: int = 0) -> dict:
  """The 'params' of `random_variables`."""
  return random_variables(config, model, seed)["params"]


def bench_variables(config, model) -> dict:
  """{'params', 'batch_stats'}: config.weights loaded over random ones, or the random ones when
  it is ''."""
  variables = random_variables(config, model)
  if not config.weights:
    return variables
  loaded = weights_lib.load_variables_for_model(config.weights, variables,
                                                models.keras_layer_map(config),
                                                rel=weights_lib.imagenet_release(config))
  return {"params": loaded["params"], "batch_stats": loaded.get("batch_stats", {})}


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """uint8 images and labels: the host arrays both JAX and Keras are fed."""
  rng = np.random.RandomState(seed)
  size = config.data.image_size
  classes = max(2, int(config.head.num_classes))
  return {"image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
          "label": rng.randint(0, classes, batch_size).astype(np.int32),
          "mask": np.ones(batch_size, bool)}
