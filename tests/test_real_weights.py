"""Real trained VGG16 weights through the real converter: Flax vs Keras, block by block.

`../shared/weights/vgg16_mri_notop.h5` is a real trained VGG16 (Keras' ImageNet VGG16 fine-tuned
on brain MRI, in the exact legacy layout of Keras' release file; see ../shared/weights/README.md).
Seeded He-normal weights (tests/test_parity_vgg.py) give activations of a designed scale; real
weights give real ones: a few large channels, many near-zero ones, large biases in block1.

The test converts the file with `scripts/convert_keras_weights.py` (the command a user runs, in
a subprocess), loads the converted folder, and compares every block's output (block1_pool ...
block5_pool) with `keras.applications.VGG16` loading the very same .h5 with Keras' own legacy
loader (independent of our reader), on real RPS photos from ../shared/data at 224x224.

Errors are max |flax - keras| / max |keras| over each block's output (and the relative L2 error).

float32: the parity tests' bound, 1e-4.

bfloat16 (`VGG16(dtype=bfloat16)`, float32 params, float32 accumulation on XLA): bfloat16 keeps
8 significant bits, a unit roundoff of u = 2^-8 = 3.9e-3. Each convolution rounds its input
activations and its weights to bf16 (a product of two rounded factors is off by up to 2u) and
accumulates in float32, so a layer adds a relative error of up to 2u of its output's scale
(max-pooling and ReLU are 1-Lipschitz and add nothing). The roundings of different layers are
independent, so after n convolutions the errors add like a random walk: sqrt(n) * 2u. The bound
at a block is therefore 2u * sqrt(n), with n the convolutions up to it (2, 4, 7, 10, 13): from
1.1e-2 after block1 to 2.8e-2 after block5. Measured on this file (CPU, 3 RPS photos, run with
-s to see the table): rel max 4.3e-3..5.3e-3 after block1, up to 1.7e-2 after block5; rel L2 up to
1.2e-2. float32 measured exactly 0 here (likely because Keras 3's TensorFlow backend compiles
predict with XLA too, so the same CPU kernels run; not verified); the bound stays 1e-4. The relative L2 error must also be above 1e-4, which proves bf16 really ran.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import weights as W
from rpsflax.models.vgg import VGG16
from rpsflax.preprocess import vgg16_preprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = kr.SHARED_DATA.parent / "weights" / "vgg16_mri_notop.h5"
SHA256 = "9352ecab1b2cafc98450a67eaed40c565ce4ecf12a95ab751e70ab90bf8dcb0b"  # weights/README.md
SIZE = 224
POOLS = [f"block{i}_pool" for i in range(1, 6)]
CONVS_UP_TO = dict(zip(POOLS, (2, 4, 7, 10, 13)))
FP32_TOL = 1e-4                    # tests/test_parity_vgg.py's bound
BF16_U = 2.0 ** -8                 # bfloat16's unit roundoff (8 significant bits)
BF16_TOL = {p: 2 * BF16_U * np.sqrt(n) for p, n in CONVS_UP_TO.items()}


def real_weights_file() -> pathlib.Path:
  if not SHARED_WEIGHTS.is_file():
    pytest.skip(f"real VGG16 weights not found at {SHARED_WEIGHTS} (they live in ../shared/weights "
                "beside the repo; set RPSFLAX_SHARED_DATA to its data folder)")
  return SHARED_WEIGHTS


def rps_images(shared_data) -> tuple[np.ndarray, list[str]]:
  """One real photo per class, from the training sample and the other hands of validation."""
  from PIL import Image
  files = [sorted((shared_data / "rps" / "train" / c).glob("*.png"))[0] for c in ("rock", "paper")]
  files.append(sorted((shared_data / "rps" / "validation").glob("scissors*.png"))[0])
  imgs = []
  for f in files:
    with Image.open(f) as im:
      imgs.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.NEAREST), np.uint8))
  return np.stack(imgs), [f.name for f in files]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The real file converted by the real command; returns (h5 path, converted folder)."""
  h5 = real_weights_file()
  digest = hashlib.sha256(h5.read_bytes()).hexdigest()
  assert digest == SHA256, f"{h5}: sha256 {digest}, the README says {SHA256}"
  out = tmp_path_factory.mktemp("real") / "vgg16_mri"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_keras_weights.py"),
                         "--input", str(h5), "--output", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"converter exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["source_md5"] == W.file_md5(h5) and manifest["include_top"] is False
  return h5, out


@pytest.fixture(scope="module")
def inputs(shared_data):
  images, names = rps_images(shared_data)
  return np.asarray(vgg16_preprocess(images)), names


@pytest.fixture(scope="module")
def keras_blocks(converted, inputs):
  """Keras' own VGG16 with Keras' own loader reading the real .h5."""
  h5, _ = converted
  k = kr.keras()
  model = k.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
  model.load_weights(str(h5))
  return kr.keras_outputs(model, inputs[0], POOLS)


def flax_blocks(variables, x, dtype) -> dict[str, np.ndarray]:
  model = VGG16(include_top=False, dtype=dtype)
  out, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, x)
  res = {k: np.asarray(v[0].astype(jnp.float32)) for k, v in state["intermediates"].items()}
  res["output"] = np.asarray(out.astype(jnp.float32))
  return res


def _errors(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  _, scale, rel_max = kr.rel_error(got, want)
  rel_l2 = float(np.linalg.norm(got - want) / np.linalg.norm(want))
  return scale, rel_max, rel_l2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_vgg16_matches_keras_block_by_block(converted, inputs, keras_blocks, dtype):
  _, folder = converted
  x, names = inputs
  variables = W.load_converted(folder)
  got = flax_blocks(variables, x, jnp.dtype(dtype))
  assert set(got) >= set(POOLS)
  for layer in POOLS:
    for i, name in enumerate(names):
      scale, rel_max, rel_l2 = _errors(got[layer][i], keras_blocks[layer][i])
      tol = FP32_TOL if dtype == "float32" else BF16_TOL[layer]
      print(f"[{dtype}] {layer} {name:24s} max|act| {scale:9.3e}  rel max {rel_max:.2e}  "
            f"rel L2 {rel_l2:.2e}  (bound {tol:.1e})")
      # Real, not degenerate activations: block5 of a trained net is sparse but far from zero.
      assert scale > 1.0, f"{layer} on {name}: activations vanished ({scale})"
      assert rel_max < tol and rel_l2 < tol, (dtype, layer, name, rel_max, rel_l2, tol)
      if dtype == "bfloat16":
        assert rel_l2 > 1e-4, f"{layer}: bf16 equals Keras' float32 exactly: bf16 did not run"
  np.testing.assert_array_equal(got["output"], got["block5_pool"])  # notop: the last pool


def test_real_weights_differ_from_a_swapped_layer(converted, inputs, keras_blocks):
  """The comparison can fail on these weights: swapping two same-shaped layers breaks it."""
  _, folder = converted
  x, _ = inputs
  p = dict(W.load_converted(folder)["params"])
  p["block5_conv2"], p["block5_conv3"] = p["block5_conv3"], p["block5_conv2"]
  got = flax_blocks({"params": p}, x, jnp.float32)
  assert _errors(got["block4_pool"], keras_blocks["block4_pool"])[1] < FP32_TOL
  assert _errors(got["block5_pool"], keras_blocks["block5_pool"])[1] > 100 * FP32_TOL
