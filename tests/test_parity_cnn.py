"""The cats-vs-dogs model of configs/catsdogs.py vs the Keras tutorial's Sequential model.

Same seeded weights, converted by name through `keras_layer_map(config)` into
`build_model(config)`: sigmoid(logits) must equal Keras' probabilities in fp32, and the Flatten
(row-major over H, W, C in both) is proven right position by position.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import weights as W
from rpsflax.models import build_model, keras_layer_map
from rpsflax.preprocess import rescale
from rpsflax import errors

SIZE = 150
PROB_TOL = 1e-5   # abs error on probabilities
FEAT_TOL = 1e-5   # error relative to the largest activation
ROUTES = ("weights_h5", "legacy_keras2", "legacy_release", "keras", "cli_folder")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  model = kr.seeded_catsdogs_cnn(image_size=SIZE)
  img, source = kr.natural_image(SIZE, "catsdogs")
  x = np.asarray(rescale(np.stack([img, kr.random_image(SIZE)])))
  want = kr.keras_outputs(model, x, ["max_pooling2d_3", "flatten"])
  d = tmp_path_factory.mktemp("cnn")
  files = {
      "weights_h5": kr.write_weights_h5(model, d / "catsdogs.weights.h5"),
      "legacy_keras2": kr.write_legacy_h5(model, d / "catsdogs_keras2.h5", style="keras2"),
      "legacy_release": kr.write_legacy_h5(model, d / "catsdogs_release.h5", style="release"),
      "keras": kr.write_keras(model, d / "catsdogs.keras"),
  }
  config = kr.load_recipe("catsdogs")
  flax_model = build_model(config)
  init = flax_model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  return dict(model=model, x=x, want=want, files=files, dir=d, config=config,
              flax_model=flax_model, init=init, labels=["natural: " + source, "random"])


def cli_main():
  spec = importlib.util.spec_from_file_location("convert_keras_weights",
                                                kr.REPO / "scripts" / "convert_keras_weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


def load_params(ref, route):
  layer_map = keras_layer_map(ref["config"])
  if route == "cli_folder":
    out = ref["dir"] / "converted"
    assert cli_main()(["--model", "cnn", "--input", ref["files"]["weights_h5"],
                       "--output", str(out)]) == 0
    return W.load_for_model(str(out), ref["init"], layer_map)
  return W.load_for_model(ref["files"][route], ref["init"], layer_map)


def probabilities(ref, params, features=None):
  m, v = ref["flax_model"], {"params": params}
  logits = (m.apply(v, ref["x"]) if features is None else
            m.apply(v, features, method=m.classify))
  return np.asarray(jax.nn.sigmoid(logits))


@pytest.mark.parametrize("route", ROUTES)
def test_probabilities_match_keras(ref, route):
  params = load_params(ref, route)
  got, want = probabilities(ref, params), ref["want"]["output"]
  assert got.shape == want.shape == (2, 1)
  for i, label in enumerate(ref["labels"]):
    err = abs(float(got[i, 0]) - float(want[i, 0]))
    print(f"[{route}] {label[:40]:40s} keras p(dog) {want[i, 0]:.6f} flax {got[i, 0]:.6f} "
          f"abs err {err:.2e}")
    assert err < PROB_TOL
  # Informative outputs: not saturated, and the two inputs differ.
  assert np.all((want > 0.01) & (want < 0.99)) and abs(float(want[0, 0] - want[1, 0])) > 1e-3


def test_features_match_position_by_position(ref):
  """Conv stack output (N, 7, 7, 128) equals Keras' last MaxPool, and our row-major flatten of it
  equals Keras' Flatten output element by element."""
  params = load_params(ref, "weights_h5")
  m = ref["flax_model"]
  feats = np.asarray(m.apply({"params": params}, ref["x"], method=m.features))
  assert feats.shape == (2, 7, 7, 128)
  _, scale, rel = kr.rel_error(feats, ref["want"]["max_pooling2d_3"])
  print(f"features: rel err {rel:.2e} (max|act| {scale:.2e})")
  assert rel < FEAT_TOL
  flat_keras = ref["want"]["flatten"]
  assert kr.rel_error(feats.reshape(2, -1), flat_keras)[2] < FEAT_TOL
  # The position of every element: Keras' flat index h*7*128 + w*128 + c holds feature (h, w, c).
  h, w, c = 3, 5, 17
  np.testing.assert_allclose(flat_keras[:, h * 7 * 128 + w * 128 + c], feats[:, h, w, c],
                             rtol=1e-5, atol=1e-6)


def test_channel_first_flatten_would_fail(ref):
  """A port that flattened (C, H, W) like PyTorch would give different probabilities."""
  params = load_params(ref, "weights_h5")
  m = ref["flax_model"]
  feats = m.apply({"params": params}, ref["x"], method=m.features)
  right = probabilities(ref, params, feats.reshape(2, -1))
  wrong = probabilities(ref, params, jnp.transpose(feats, (0, 3, 1, 2)).reshape(2, -1))
  want = ref["want"]["output"]
  assert np.abs(right - want).max() < PROB_TOL
  print(f"channel-first flatten: abs err {np.abs(wrong - want).max():.2e}")
  assert np.abs(wrong - want).max() > 100 * PROB_TOL


def test_file_without_head_leaves_head_initialised(ref, tmp_path):
  """A conv-only file fills the backbone; the (optional) head stays as initialised."""
  convs = [(l.name, l.get_weights()) for l in ref["model"].layers if l.name.startswith("conv2d")]
  path = kr.write_legacy_arrays(tmp_path / "convs.h5", convs)
  params = W.load_for_model(path, ref["init"], keras_layer_map(ref["config"]))
  for name, (kernel, bias) in convs:
    np.testing.assert_array_equal(params["backbone"][name]["kernel"], kernel)
    np.testing.assert_array_equal(params["backbone"][name]["bias"], bias)
  for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(ref["init"]["head"])):
    np.testing.assert_array_equal(a, b)


def test_head_with_wrong_width_is_named(ref, tmp_path):
  """A file whose dense layer does not fit config.head is refused with layer and shapes."""
  layers = [(l.name, l.get_weights()) for l in ref["model"].layers]
  narrow = {"dense": lambda k, b: [k[:, :256], b[:256]], "dense_1": lambda k, b: [k[:256], b]}
  layers = [(n, narrow[n](*ws) if n in narrow else ws) for n, ws in layers]
  path = kr.write_legacy_arrays(tmp_path / "narrow.h5", layers)
  with pytest.raises(errors.WeightsError) as e:
    W.load_for_model(path, ref["init"], keras_layer_map(ref["config"]))
  msg = str(e.value)
  assert "narrow.h5" in msg and "'dense'" in msg and "(6272, 512)" in msg and "(6272, 256)" in msg
  assert "'dense_1'" in msg and "(512, 1)" in msg and "(256, 1)" in msg
