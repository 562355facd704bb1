"""--format=onnx: tf_graph.py's function converted by tf2onnx (uint8 `images` in, `probabilities`
out, preprocessing inside), run by ONNX Runtime for the parity check.

Why tf2onnx from the Keras graph: it is the ONNX project's converter for TensorFlow, it installs
beside TensorFlow 2.21 without changing any pinned package, and the Keras model is already the
one --format=keras ships. jax2onnx (straight from JAX) would pin an older orbax-checkpoint than
this project uses.
"""

import numpy as np

from rpsflax.errors import ExportError
from rpsflax.export import parity, tf_graph

SUFFIX = ".onnx"
DEFAULT_MAX_DIFF = parity.ONNX_MAX_DIFF  # justified in parity.py
PREPROCESSING_INSIDE = True
OPSET = 17
RUNTIME = "onnxruntime.InferenceSession(path).run(['probabilities'], {'images': images})"
INSTALL = 'pip install -e ".[export]" (tf2onnx, onnx, onnxruntime)'


def _require(name: str):
  import importlib  # noqa: PLC0415

  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ExportError(f"--format=onnx needs the {name} package: {INSTALL}") from e


def check(config, options: dict) -> None:
  for name in ("tf2onnx", "onnxruntime"):
    _require(name)
  tf_graph.check(config, options)


def write(source, path, options: dict) -> None:
  tf2onnx = _require("tf2onnx")
  serve, _ = tf_graph.serving_function(source)
  tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=OPSET,
                                output_path=str(path))


def runner(path, source, options: dict):
  ort = _require("onnxruntime")
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return lambda images: session.run([tf_graph.OUTPUT_NAME],
                                    {tf_graph.INPUT_NAME: np.asarray(images, np.uint8)})[0]


def interface(source, options: dict) -> dict:
  return {**tf_graph.interface(source, RUNTIME), "opset": OPSET}
