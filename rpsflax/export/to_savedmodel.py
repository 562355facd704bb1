"""--format=savedmodel: a TensorFlow SavedModel for TF Serving (tf_graph.py's function as the
`serving_default` signature: uint8 `images` in, `probabilities` out, preprocessing inside).

For TF Serving, name a numbered folder: --output=models/rps/1.
"""

import numpy as np

from rpsflax.export import parity, tf_graph

SUFFIX = ""
DEFAULT_MAX_DIFF = parity.KERNELS_MAX_DIFF  # justified in parity.py
PREPROCESSING_INSIDE = True
RUNTIME = "tf.saved_model.load(path).signatures['serving_default'](images=...)"


def check(config, options: dict) -> None:
  tf_graph.check(config, options)


def write(source, path, options: dict) -> None:
  tf = tf_graph.tensorflow()
  serve, model = tf_graph.serving_function(source)
  module = tf.Module()
  module.model, module.serve = model, serve  # tracked: the variables are saved
  tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def runner(path, source, options: dict):
  tf = tf_graph.tensorflow()
  fn = tf.saved_model.load(str(path)).signatures["serving_default"]
  return lambda images: np.asarray(
      fn(**{tf_graph.INPUT_NAME: tf.constant(np.asarray(images, np.uint8))})[tf_graph.OUTPUT_NAME])


def interface(source, options: dict) -> dict:
  return tf_graph.interface(source, RUNTIME)
