"""The TensorFlow graph that --format=savedmodel saves and --format=onnx converts: the Keras model
of --format=keras under a `tf.function` that takes what rpsflax.predict and the StableHLO export
take and returns what they return: uint8 RGB images [batch, H, W, 3] in, the config's Keras
preprocessing inside (keras.applications' preprocess_input, or x * (1/255)), float32
probabilities [batch, C] out (a sigmoid head gives [1 - p, p]).

Built from the Keras model rather than by jax2tf, so the graph is ordinary TensorFlow ops: TF
Serving of any recent version, TFLite and tf2onnx all take it.
"""

from rpsflax import keras_models, preprocess
from rpsflax.errors import ExportError
from rpsflax.export import to_keras

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def tensorflow():
  import tensorflow as tf  # noqa: PLC0415  (only these routes need TensorFlow)

  return tf


def check(config, options: dict) -> None:
  to_keras.check(config, options)
  import keras  # noqa: PLC0415

  if keras.backend.backend() != "tensorflow":
    raise ExportError(f"--format={options.get('format')}: needs Keras on TensorFlow; unset "
                      f"KERAS_BACKEND (it is {keras.backend.backend()!r})")


def serving_function(source):
  """(tf.function of uint8 images -> {'probabilities': [B, C]}, the Keras model it calls)."""
  tf = tensorflow()
  import keras  # noqa: PLC0415

  model = to_keras.keras_model(source)
  size, name = source.image_size, source.config.preprocess
  sigmoid = int(source.config.head.num_classes) == 1

  @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)])
  def serve(images):
    x = keras_models.PREPROCESS[preprocess.PREPROCESS_MODES[name]](keras,
                                                                  tf.cast(images, tf.float32))
    p = model(x, training=False)
    if sigmoid:
      p = tf.concat([1.0 - p, p], axis=-1)
    return {OUTPUT_NAME: tf.identity(p, name=OUTPUT_NAME)}

  return serve, model


def interface(source, runtime: str) -> dict:
  size, c = source.image_size, len(source.class_names)
  return {
      "input": {"name": INPUT_NAME, "shape": [None, size, size, 3], "dtype": "uint8",
                "layout": "NHWC", "channels": "RGB",
                "resize": f"to {size}x{size} with '{source.config.data.resize_method}' "
                          "interpolation, as rpsflax.predict reads files"},
      "output": {"name": OUTPUT_NAME, "shape": [None, c], "dtype": "float32",
                 "meaning": "one column per class_names entry, in order, summing to 1"},
      "runtime": runtime,
  }
