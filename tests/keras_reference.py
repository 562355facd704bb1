"""Keras reference models and weight files for the parity and converter tests.

Everything here builds what Keras itself would: `keras.applications.VGG16(weights=None)` (and
ResNet50, MobileNetV2) and the cats-vs-dogs tutorial's Sequential model (all defined once, in
rpsflax/keras_models.py, which the benchmark's Keras worker uses too), with seeded weights,
written in the file layouts our converter reads (the legacy release HDF5 layout, Keras 3
`.weights.h5`, `.keras`).

Weights are re-drawn He-normal (plus small random biases) so activations stay O(1) relative to the
input through every layer; errors divided by the activation scale then mean something.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from rpsflax import keras_models, models  # noqa: E402  (Keras only when a model is built)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("RPSFLAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def keras():
  import keras as k  # imported lazily: TensorFlow takes seconds to import
  return k


def load_recipe(name: str):
  """configs/<name>.py's get_config()."""
  from rpsflax import config_base
  return config_base.load_sibling(str(REPO / "configs" / "x.py"), name).get_config()


# ---------------------------------------------------------------------------------------------
# Seeded weights.

def reseed_weights(model, seed: int = 0, out_scale: dict | None = None,
                   bias_std: float = 0.1) -> None:
  """He-normal kernels and N(0, bias_std) biases for every layer, from one seeded NumPy RNG.

  `out_scale` multiplies the kernels of named layers (e.g. a classifier layer, so its logits
  are O(1) and a softmax/sigmoid is not saturated).
  """
  rng = np.random.default_rng(seed)
  out_scale = out_scale or {}
  for layer in _leaf_layers(model):
    ws = layer.get_weights()
    if not ws:
      continue
    kernel, *rest = ws
    fan_in = int(np.prod(kernel.shape[:-1]))
    std = np.sqrt(2.0 / fan_in) * out_scale.get(layer.name, 1.0)
    new = [rng.standard_normal(kernel.shape, dtype=np.float32) * np.float32(std)]
    new += [rng.standard_normal(w.shape, dtype=np.float32) * np.float32(bias_std) for w in rest]
    layer.set_weights(new)


def _leaf_layers(model):
  k = keras()
  for layer in model.layers:
    if isinstance(layer, k.Model):
      yield from _leaf_layers(layer)
    else:
      yield layer


def seeded_vgg16(include_top: bool, seed: int = 0):
  """keras.applications.VGG16(weights=None) with seeded He-normal weights (224x224 input)."""
  keras().utils.set_random_seed(seed)
  model = keras_models.application(models.get_spec("vgg16").keras_application, 224,
                                   include_top=include_top)
  # Inputs are caffe-preprocessed pixels (O(100)): biases of N(0, 5) matter at that scale.
  # predictions: logits O(1) so the 1000-way softmax is informative, not one-hot.
  reseed_weights(model, seed, out_scale={"predictions": 0.01}, bias_std=5.0)
  return model


CNN_LAYER_NAMES = (*keras_models.CNN_CONV_NAMES, *keras_models.TUTORIAL_DENSE_NAMES)


def seeded_catsdogs_cnn(seed: int = 0, image_size: int = 150):
  """The tutorial's cats-vs-dogs Sequential model (rpsflax.keras_models), seeded weights."""
  keras().utils.set_random_seed(seed)
  model = keras_models.tutorial_cnn(image_size)
  # dense_1: logits of a few units, so sigmoid probabilities are far from 0 and 1.
  reseed_weights(model, seed, out_scale={"dense_1": 0.2})
  return model


# ---------------------------------------------------------------------------------------------
# Files.

def write_legacy_h5(model, path, style: str = "release", keras_version: str = "2.2.4") -> str:
  """Write a Keras model's weights in the legacy Keras HDF5 weights layout (see write_legacy_arrays)."""
  k = keras()
  layers = [(l.name, l.get_weights()) for l in model.layers
            if not isinstance(l, k.layers.InputLayer)]
  return write_legacy_arrays(path, layers, style, keras_version)


def write_legacy_arrays(path, layers, style: str = "release", keras_version: str = "2.2.4") -> str:
  """Write [(layer name, [arrays])] in the legacy Keras HDF5 weights layout.

  style='release': as the released VGG16 files: root attr `layer_names` lists every layer but
    the input (pools included), each layer group has attr `weight_names` `<layer>_W_1:0`,
    `<layer>_b_1:0` (kernel first) and the datasets sit directly in the group.
  style='keras2': as Keras 2's `save_weights('x.h5')`: weight names `<layer>/kernel:0`, so the
    datasets sit in a nested group `<layer>/<layer>/kernel:0`.
  Layers without weights (pools, flatten, dropout) are listed with an empty `weight_names`.
  """
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = keras_version.encode("utf8")
    for name, ws in layers:
      g = f.create_group(name)
      if style == "release":
        names = [f"{name}_{s}_1:0" for s in ("W", "b")][:len(ws)]
      elif style == "keras2":
        names = [f"{name}/{s}:0" for s in ("kernel", "bias")][:len(ws)]
      else:
        raise ValueError(style)
      # Keras 2 stores an empty list for weightless layers (an empty float array in HDF5).
      g.attrs["weight_names"] = np.array([n.encode("utf8") for n in names]) if names else []
      for n, w in zip(names, ws):
        g.create_dataset(n, data=np.asarray(w))
  return str(path)


def write_weights_h5(model, path) -> str:
  """Keras 3 `model.save_weights` (`.weights.h5`)."""
  assert str(path).endswith(".weights.h5")
  model.save_weights(str(path))
  return str(path)


def write_keras(model, path) -> str:
  """Keras 3 `model.save` (`.keras` zip)."""
  assert str(path).endswith(".keras")
  model.save(str(path))
  return str(path)


# ---------------------------------------------------------------------------------------------
# Inputs and outputs.

def natural_image(size: int, kind: str = "rps") -> tuple[np.ndarray, str]:
  """A real photo from the shared sample data resized to size x size (uint8 RGB), or a synthetic
  natural-looking one when the samples are not beside the repo. Returns (image, description)."""
  from PIL import Image
  candidates = {
      "rps": ["rps/train/rock", "rps/train/paper", "rps/train/scissors"],
      "catsdogs": ["catsdogs/train"],
  }[kind]
  for sub in candidates:
    folder = SHARED_DATA / sub
    if folder.is_dir():
      files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
      if files:
        with Image.open(files[0]) as im:
          im = im.convert("RGB").resize((size, size), Image.BILINEAR)
          return np.asarray(im, np.uint8), str(files[0])
  return synthetic_image(size), "synthetic"


def synthetic_image(size: int, seed: int = 1) -> np.ndarray:
  """Smooth gradients, a few flat shapes and mild noise: image-like statistics, not white noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.stack([200 * xx + 30, 180 * yy + 40, 120 * (1 - xx * yy) + 60], -1)
  for _ in range(6):
    cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.05, 0.2)]
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    img[disk] = rng.uniform(0, 255, 3)
  img += rng.normal(0, 6, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def random_image(size: int, seed: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def keras_outputs(model, x, layer_names) -> dict[str, np.ndarray]:
  """Outputs of the named layers of `model` (plus 'output', from model.predict) for batch x."""
  k = keras()
  out = {"output": np.asarray(model.predict(x, verbose=0, batch_size=len(x)))}
  if isinstance(model, k.Sequential):  # run the layers one by one, in inference mode
    y = k.ops.convert_to_tensor(x)
    for layer in model.layers:
      y = layer(y, training=False)
      if layer.name in layer_names:
        out[layer.name] = np.asarray(k.ops.convert_to_numpy(y))
  else:
    sub = k.Model(model.inputs, [model.get_layer(n).output for n in layer_names])
    values = sub.predict(x, verbose=0, batch_size=len(x))
    out.update(zip(layer_names, [np.asarray(v) for v in values]))
  return out


def rel_error(got, want) -> tuple[float, float, float]:
  """(max abs error, max abs activation, their ratio)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  err, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
  return err, scale, err / max(scale, 1e-30)


# ---------------------------------------------------------------------------------------------
# The BatchNorm backbones (ResNet50, MobileNetV2).

def seeded_bn_backbone(name: str, include_top: bool, size: int, seed: int = 0, alpha: float = 1.0):
  """keras.applications.ResNet50 / MobileNetV2 (weights=None) with seeded weights that keep
  every activation O(1) through the network, so relative errors mean something at every stage.

  Kernels are He-normal (a depthwise kernel's fan-in is its 3x3 window), conv biases N(0, 0.1),
  BN gamma U(0.5, 1.5) and beta N(0, 0.2). The moving statistics are calibrated: one forward in
  training mode with momentum 0 on a seeded batch of synthetic images sets every BN layer's
  moving mean and variance to the batch statistics of its input, which are then perturbed
  (mean + N(0, 0.1) std, variance x U(0.7, 1.4)) so inference differs from training mode.
  """
  k = keras()
  k.utils.set_random_seed(seed)
  spec = models.get_spec(name)
  model = keras_models.application(spec.keras_application, size, include_top=include_top,
                                   **spec.keras_kwargs(alpha))
  prep = lambda x: keras_models.PREPROCESS[spec.preprocess_mode](k, x)  # its preprocess_input
  rng = np.random.default_rng(seed)
  bns = []
  for layer in _leaf_layers(model):
    ws = layer.get_weights()
    if not ws:
      continue
    if isinstance(layer, k.layers.BatchNormalization):
      gamma = rng.uniform(0.5, 1.5, ws[0].shape).astype(np.float32)
      beta = (rng.standard_normal(ws[1].shape) * 0.2).astype(np.float32)
      layer.set_weights([gamma, beta, ws[2], ws[3]])
      bns.append(layer)
      continue
    kernel, *rest = ws
    depthwise = isinstance(layer, k.layers.DepthwiseConv2D)
    fan_in = int(np.prod(kernel.shape[:2])) if depthwise else int(np.prod(kernel.shape[:-1]))
    scale = 0.2 if layer.name == "predictions" else 1.0  # logits O(1): softmax not one-hot
    new = [(rng.standard_normal(kernel.shape) * np.sqrt(2.0 / fan_in) * scale).astype(np.float32)]
    new += [(rng.standard_normal(w.shape) * 0.1).astype(np.float32) for w in rest]
    layer.set_weights(new)
  calib = np.stack([synthetic_image(size, seed=100 + i) for i in range(4)]).astype(np.float32)
  momenta = [bn.momentum for bn in bns]
  for bn in bns:
    bn.momentum = 0.0
  model(prep(calib), training=True)
  for bn, m in zip(bns, momenta):
    bn.momentum = m
    gamma, beta, mean, var = bn.get_weights()
    std = np.sqrt(var + 1e-3)
    mean = (mean + rng.standard_normal(mean.shape) * 0.1 * std).astype(np.float32)
    var = (var * rng.uniform(0.7, 1.4, var.shape)).astype(np.float32)
    bn.set_weights([gamma, beta, mean, var])
  return model


def keras2_layers(model, renames: dict | None = None) -> list:
  """[(layer name, [arrays], [weight names])] of every layer, the input layer included, as
  Keras 2 (which wrote the ResNet50 and MobileNetV2 release files) lists a functional model.
  Weight names are Keras 2's '<layer>/<variable>:0' (kernel, bias, depthwise_kernel, gamma, beta,
  moving_mean, moving_variance). `renames` gives a layer another name (keras-applications named
  the top 'probs' in ResNet50 and 'Logits' in MobileNetV2)."""
  k = keras()
  renames = renames or {}
  out = []
  for layer in model.layers:
    name = "input_1" if isinstance(layer, k.layers.InputLayer) else renames.get(layer.name,
                                                                                 layer.name)
    # trainable then non-trainable weights: the order Keras' legacy loader assigns them in
    weights = list(layer.trainable_weights) + list(layer.non_trainable_weights)
    depthwise = isinstance(layer, k.layers.DepthwiseConv2D)  # Keras 2: 'depthwise_kernel'
    wnames = [f"{name}/{'depthwise_kernel' if depthwise and w.name == 'kernel' else w.name}:0"
              for w in weights]
    out.append((name, [np.asarray(w.numpy()) for w in weights], wnames))
  return out


def write_keras2_release(path, layers, keras_version: str = "2.2.4") -> str:
  """Write keras2_layers(...) in the legacy HDF5 weights layout of a Keras 2 release file: root
  attrs `layer_names`, `backend`, `keras_version`; per layer a group with attr `weight_names`
  and the datasets under those names ('conv1_conv/kernel:0' nests a group conv1_conv)."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _, _ in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = keras_version.encode("utf8")
    for name, arrays, wnames in layers:
      g = f.create_group(name)
      g.attrs["weight_names"] = np.array([n.encode("utf8") for n in wnames]) if wnames else []
      for n, w in zip(wnames, arrays):
        g.create_dataset(n, data=w)
  return str(path)
