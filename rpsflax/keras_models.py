"""The Keras models this project ports, defined once: Keras' own VGG16, ResNet50 and
MobileNetV2, the cats-vs-dogs tutorial's convnet, and any of them under a head and optimizer
read from a config.

The parity tests (tests/keras_reference.py) hold the Flax models against `application` and
`tutorial_cnn`; the benchmark's Keras worker times `classifier(spec)`. The numbers below are the
tutorial's, written out here rather than read from rpsflax.models: this is the reference the
port is tested against, so it must not follow the port. Which Keras application and which
preprocessing mode a backbone is comes from its registry entry (rpsflax.models.get_spec), passed
in by the caller: this module imports nothing of the port, so the Keras worker stays free of Flax.

Keras is imported inside the functions, never at import time: TensorFlow takes seconds to import,
the benchmark's worker sets KERAS_BACKEND before it, and a machine without TensorFlow can still
import this module. Model and step code never import it.
"""

import numpy as np

CNN_FILTERS = (32, 64, 128, 128)  # Conv2D(f, (3, 3), relu) + MaxPooling2D((2, 2)) each
CNN_CONV_NAMES = ("conv2d", "conv2d_1", "conv2d_2", "conv2d_3")  # a fresh Sequential's names
CNN_POOL_NAMES = ("max_pooling2d", "max_pooling2d_1", "max_pooling2d_2", "max_pooling2d_3")
# The tutorial's classifier: Flatten, Dropout(0.5), Dense(512, relu), Dense(1, sigmoid).
TUTORIAL_HEAD = {"pooling": "flatten", "dropout": 0.5, "hidden": (512,),
                 "hidden_activation": "relu", "hidden_dropout": 0.0, "num_classes": 1}
TUTORIAL_DENSE_NAMES = ("dense", "dense_1")

# config.head.pooling -> (Keras layer class, the name a fresh model gives it).
POOLINGS = {"max": ("GlobalMaxPooling2D", "global_max_pooling2d"),
            "avg": ("GlobalAveragePooling2D", "global_average_pooling2d"),
            "flatten": ("Flatten", "flatten")}
# config.optim.name -> the Keras optimizer with the config's settings.
OPTIMIZERS = {
    "rmsprop": lambda k, o: k.optimizers.RMSprop(o["learning_rate"], rho=o["rho"],
                                                 momentum=o["momentum"], epsilon=o["epsilon"]),
    "adam": lambda k, o: k.optimizers.Adam(o["learning_rate"], epsilon=o["epsilon"]),
    "sgd": lambda k, o: k.optimizers.SGD(o["learning_rate"], momentum=o["momentum"]),
}
# Keras' preprocessing modes (rpsflax.preprocess.MODES) -> the Keras-side transform of float32
# pixels: keras.applications.<app>.preprocess_input is imagenet_utils' with the app's mode.
PREPROCESS = {
    "caffe": lambda k, x: k.applications.imagenet_utils.preprocess_input(x, mode="caffe"),
    "tf": lambda k, x: k.applications.imagenet_utils.preprocess_input(x, mode="tf"),
    "rescale": lambda k, x: x * np.float32(1.0 / 255.0),
    "none": lambda k, x: x,
}


def _keras():
  import keras  # noqa: PLC0415  (lazily: see the module docstring)

  return keras


def application(keras_name: str, image_size: int, *, include_top: bool = False, **kwargs):
  """keras.applications.<keras_name> (a spec's keras_application: VGG16, ResNet50, MobileNetV2),
  weights=None; kwargs: its width (spec.keras_kwargs(alpha))."""
  build = getattr(_keras().applications, keras_name)
  return build(weights=None, include_top=include_top, input_shape=(image_size, image_size, 3),
               **kwargs)


def cnn_layers(conv_names=CNN_CONV_NAMES) -> list:
  """The tutorial's conv stack: 3x3 'valid' ReLU convs, each followed by a 2x2 max-pool."""
  L = _keras().layers
  out = []
  for filters, conv, pool in zip(CNN_FILTERS, conv_names, CNN_POOL_NAMES, strict=True):
    out += [L.Conv2D(filters, (3, 3), activation="relu", name=conv),
            L.MaxPooling2D((2, 2), name=pool)]
  return out


def head_layers(head: dict, dense_names=None) -> list:
  """Pooling, dropout, the hidden dense layers (each with its dropout if any), the output layer
  (sigmoid for 1 class, else softmax; float32 under a mixed policy). `dense_names`: the hidden
  layers' then the output's (default hidden_0, ..., predictions, as in rpsflax.models.Head)."""
  L = _keras().layers
  hidden = list(head["hidden"])
  dense_names = dense_names or [f"hidden_{i}" for i in range(len(hidden))] + ["predictions"]
  pool_class, pool_name = POOLINGS[head["pooling"]]
  out = [getattr(L, pool_class)(name=pool_name), L.Dropout(head["dropout"], name="dropout")]
  for i, (width, name) in enumerate(zip(hidden, dense_names)):
    out.append(L.Dense(width, activation=head["hidden_activation"], name=name))
    if head["hidden_dropout"]:
      out.append(L.Dropout(head["hidden_dropout"], name=f"dropout_{i + 1}"))
  sigmoid = head["num_classes"] == 1
  out.append(L.Dense(head["num_classes"], activation="sigmoid" if sigmoid else "softmax",
                     dtype="float32", name=dense_names[len(hidden)]))
  return out


def tutorial_cnn(image_size: int = 150):
  """The cats-vs-dogs tutorial's Sequential model, flat, with the names Keras gives it."""
  k = _keras()
  return k.Sequential([k.Input((image_size, image_size, 3)), *cnn_layers(),
                       *head_layers(TUTORIAL_HEAD, TUTORIAL_DENSE_NAMES)], name="sequential")


def preprocess(mode: str, images: np.ndarray) -> np.ndarray:
  """uint8 or float pixels -> the model's input, as Keras users preprocess them (`mode`: a key
  of PREPROCESS)."""
  return PREPROCESS[mode](_keras(), images.astype(np.float32))


def classifier(spec: dict):
  """(compiled model, backbone) as the tutorials build them, from a config's Keras spec
  (rpsflax.benchmark.keras_peer.keras_spec): backbone (its Keras application, or '' for the
  tutorial's conv stack), head, trainable flags, optimizer, loss.
  A fully frozen backbone is `base.trainable = False` and called with training=False, the
  transfer-learning tutorial's way; otherwise each layer keeps its own flag, and the backbone
  is still called with training=False unless spec['bn_trainable'] (BatchNorm in inference mode,
  as Keras' fine-tuning guide keeps it; VGG16 and the CNN have no layer it changes)."""
  k = _keras()
  size = spec["image_size"]
  if not spec["keras_application"]:  # the tutorial's convnet
    base = k.Sequential([k.Input((size, size, 3)), *cnn_layers(spec["backbone"])],
                        name=spec["model"])
  else:
    base = application(spec["keras_application"], size, **spec["keras_kwargs"])
  flags = [spec["trainable"][n] for n in spec["backbone"]]
  if not any(flags):
    base.trainable = False
  else:
    for name, flag in zip(spec["backbone"], flags):
      base.get_layer(name).trainable = flag
  inputs = k.Input((size, size, 3))
  bn_training = any(flags) and spec.get("bn_trainable", False)
  x = base(inputs) if bn_training else base(inputs, training=False)
  for layer in head_layers(spec["head"]):
    x = layer(x)
  model = k.Model(inputs, x)
  for name in [f"hidden_{i}" for i in range(len(spec["head"]["hidden"]))] + ["predictions"]:
    model.get_layer(name).trainable = spec["trainable"][name]
  sigmoid = spec["head"]["num_classes"] == 1
  model.compile(optimizer=OPTIMIZERS[spec["optim"]["name"]](k, spec["optim"]),
                metrics=["accuracy"],
                loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
  return model, base
