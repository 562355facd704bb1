"""--format=stablehlo: a `jax.export` artifact (serialized StableHLO with its calling convention).

The exported function is `rpsflax.predict`'s own (steps.make_predict_fn) with the checkpoint's
parameters and BatchNorm statistics baked in as constants: uint8 RGB images [batch, H, W, 3] in
(batch symbolic, any size), float32 probabilities [batch, C] out (a sigmoid head gives
[1 - p, p]), the config's preprocessing inside. Any JAX >= the exporting version's serialization
support loads it with `jax.export.deserialize(bytes).call(images)`, without this package.
"""

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax.export import parity

SUFFIX = ""
DEFAULT_MAX_DIFF = parity.TIGHT_MAX_DIFF  # justified in parity.py
PREPROCESSING_INSIDE = True
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
RUNTIME = "jax.export.deserialize(...).call(images)"


def check(config, options: dict) -> None:
  """Every model the configs build can be expressed: nothing to refuse."""


def exported(source, platforms=DEFAULT_PLATFORMS) -> jax.export.Exported:
  params = source.params
  fn = jax.jit(lambda images: source.predict_fn(params, images))
  batch, = jax.export.symbolic_shape("batch")
  size = source.image_size
  spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  return jax.export.export(fn, platforms=tuple(platforms))(spec)


def write(source, path, options: dict) -> None:
  exp = exported(source, options.get("platforms") or DEFAULT_PLATFORMS)
  with open(path, "wb") as f:
    f.write(exp.serialize())


def runner(path, source, options: dict):
  with open(path, "rb") as f:
    exp = jax.export.deserialize(bytearray(f.read()))
  return lambda images: np.asarray(exp.call(np.asarray(images, np.uint8)))


def interface(source, options: dict) -> dict:
  size, c = source.image_size, len(source.class_names)
  return {
      "input": {"name": "images", "shape": [None, size, size, 3], "dtype": "uint8",
                "layout": "NHWC", "channels": "RGB",
                "resize": f"to {size}x{size} with '{source.config.data.resize_method}' "
                          "interpolation, as rpsflax.predict reads files"},
      "output": {"name": "probabilities", "shape": [None, c], "dtype": "float32",
                 "meaning": "one column per class_names entry, in order, summing to 1"},
      "platforms": list(options.get("platforms") or DEFAULT_PLATFORMS),
      "runtime": RUNTIME,
  }
