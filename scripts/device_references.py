r"""Keras reference outputs for the device check (scripts/device_check.py), where Keras cannot run.

Weights are drawn from a seed with NumPy's legacy RandomState (its streams are frozen across NumPy
versions), so only the inputs and Keras' outputs are stored (scripts/device_references.npz,
~0.4 MB): VGG16 (notop) at 32x32 with every block's pool output, and the cats-vs-dogs CNN at its
real 150x150 with its last pool and its sigmoid output, two images each. A sha256 of the drawn
weights is stored too, so a machine whose NumPy drew different weights fails loudly instead of
comparing unrelated models.

Regenerate here (needs Keras/TensorFlow, seconds):
  python scripts/device_references.py
"""

import hashlib
import pathlib
import sys

import h5py
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rpsflax.models.vgg import VGG16_BLOCKS  # noqa: E402

OUT = REPO / "scripts" / "device_references.npz"
SEED = 14
VGG_SIZE = 32   # the smallest input VGG16's five pools accept
CNN_SIZE = 150  # the recipe's size (the Flatten -> Dense width depends on it)
VGG_POOLS = [f"block{b}_pool" for b, _, _ in VGG16_BLOCKS]
CNN_LAYERS = [("conv2d", 3, 32), ("conv2d_1", 32, 64), ("conv2d_2", 64, 128),
              ("conv2d_3", 128, 128)]


def _draw(rng, shape, std):
  return (rng.standard_normal(shape) * std).astype(np.float32)


def vgg16_layers(seed: int = SEED) -> list[tuple[str, list[np.ndarray]]]:
  """[(keras layer name, [kernel, bias])] of VGG16 notop, pools included (no weights), in
  order: He-normal kernels (the first divided by 100: caffe inputs are O(100)), N(0, 0.01) bias."""
  rng = np.random.RandomState(seed)
  out, cin = [], 3
  for block, convs, filters in VGG16_BLOCKS:
    for i in range(1, convs + 1):
      std = np.sqrt(2.0 / (9 * cin)) / (100.0 if cin == 3 else 1.0)
      out.append((f"block{block}_conv{i}", [_draw(rng, (3, 3, cin, filters), std),
                                            _draw(rng, (filters,), 0.01)]))
      cin = filters
    out.append((f"block{block}_pool", []))
  return out


def cnn_layers(seed: int = SEED, size: int = CNN_SIZE) -> list[tuple[str, list[np.ndarray]]]:
  """The tutorial's Sequential model, He-normal, N(0, 0.1) biases; the output layer scaled 0.2
  so its sigmoid is not saturated."""
  rng = np.random.RandomState(seed)
  out, side = [], size
  for i, (name, cin, cout) in enumerate(CNN_LAYERS):
    out.append((name, [_draw(rng, (3, 3, cin, cout), np.sqrt(2.0 / (9 * cin))),
                       _draw(rng, (cout,), 0.1)]))
    out.append((f"max_pooling2d{'' if i == 0 else f'_{i}'}", []))
    side = (side - 2) // 2
  flat = side * side * CNN_LAYERS[-1][2]
  out += [("flatten", []), ("dropout", []),
          ("dense", [_draw(rng, (flat, 512), np.sqrt(2.0 / flat)), _draw(rng, (512,), 0.1)]),
          ("dense_1", [_draw(rng, (512, 1), 0.2 * np.sqrt(2.0 / 512)), _draw(rng, (1,), 0.1)])]
  return out


def digest(layers) -> str:
  h = hashlib.sha256()
  for name, arrays in layers:
    h.update(name.encode())
    for a in arrays:
      h.update(np.ascontiguousarray(a, np.float32).tobytes())
  return h.hexdigest()


def write_legacy_h5(path, layers) -> str:
  """The legacy Keras HDF5 layout of the ImageNet release files (what rpsflax.weights reads)."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for name, arrays in layers:
      g = f.create_group(name)
      names = [f"{name}_{s}_1:0" for s in ("W", "b")][:len(arrays)]
      g.attrs["weight_names"] = np.array([n.encode() for n in names]) if names else []
      for n, a in zip(names, arrays):
        g.create_dataset(n, data=a)
  return str(path)


def images(size: int, seed: int) -> np.ndarray:
  """Two uint8 RGB images: smooth gradients with a few disks (image-like), and white noise."""
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.stack([200 * xx + 30, 180 * yy + 40, 120 * (1 - xx * yy) + 60], -1)
  for _ in range(6):
    cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
  img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
  return np.stack([img, rng.randint(0, 256, img.shape).astype(np.uint8)])


def make(out=OUT):
  import keras  # noqa: PLC0415  (here only: the device machine has no Keras)

  vgg = keras.applications.VGG16(weights=None, include_top=False,
                                 input_shape=(VGG_SIZE, VGG_SIZE, 3))
  vl = vgg16_layers()
  for name, arrays in vl:
    if arrays:
      vgg.get_layer(name).set_weights(arrays)
  x_vgg = images(VGG_SIZE, SEED)
  sub = keras.Model(vgg.inputs, [vgg.get_layer(n).output for n in VGG_POOLS])
  pre = keras.applications.vgg16.preprocess_input(x_vgg.astype(np.float32))
  vgg_out = dict(zip(VGG_POOLS, sub.predict(pre, verbose=0)))

  L = keras.layers
  cl = cnn_layers()
  cnn = keras.Sequential([keras.Input((CNN_SIZE, CNN_SIZE, 3))] + [
      L.Conv2D(a[0].shape[-1], 3, activation="relu", name=n) if n.startswith("conv") else
      L.MaxPooling2D(2, name=n) if n.startswith("max") else L.Flatten(name=n) if n == "flatten"
      else L.Dropout(0.5, name=n) if n == "dropout" else
      L.Dense(a[0].shape[-1], activation="relu" if n == "dense" else "sigmoid", name=n)
      for n, a in cl])
  for name, arrays in cl:
    if arrays:
      cnn.get_layer(name).set_weights(arrays)
  x_cnn = images(CNN_SIZE, SEED + 1)
  rescaled = x_cnn.astype(np.float32) * np.float32(1 / 255)
  pool = keras.Model(cnn.inputs, cnn.get_layer("max_pooling2d_3").output)
  refs = {"vgg_images": x_vgg, "cnn_images": x_cnn,
          "vgg_digest": np.array(digest(vl)), "cnn_digest": np.array(digest(cl)),
          "cnn_max_pooling2d_3": pool.predict(rescaled, verbose=0),
          "cnn_output": cnn.predict(rescaled, verbose=0),
          "keras_version": np.array(keras.__version__),
          **{f"vgg_{k}": v for k, v in vgg_out.items()}}
  assert np.all((refs["cnn_output"] > 0.01) & (refs["cnn_output"] < 0.99)), refs["cnn_output"]
  np.savez_compressed(out, **refs)
  print(f"{out}: {out.stat().st_size / 1e3:.0f} kB, keras {keras.__version__}")


if __name__ == "__main__":
  make()
