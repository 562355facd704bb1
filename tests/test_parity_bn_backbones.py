"""Flax ResNet50 and MobileNetV2 vs keras.applications: same seeded weights, same input.

Weights go Keras -> file (the legacy layout of the Keras 2 release files, Keras 3 .weights.h5,
.keras, and a converted folder) -> our converter -> Flax, and outputs are compared after every
stage (ResNet50: conv1_relu, pool1_pool, conv2..conv5 ends; MobileNetV2: the stem, each of its
17 blocks, out_relu) and at the end, with and without the top, in inference mode, on a real image
and on random pixels, with VGG16's fp32 bounds (tests/test_parity_vgg.py). The inputs are 72x72:
small enough for two shared cores, and odd sizes appear deep in both networks (9, 5, 3 pixels),
so MobileNetV2's correct_pad runs both its even and its odd branch.
"""

from collections.abc import Mapping

import jax
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import weights as W
from rpsflax.models import backbone_layer_names, backbone_module
from rpsflax.models import mobilenet_v2 as mnv2
from rpsflax.models.mobilenet_v2 import mobilenet_v2_stage_names
from rpsflax.models.resnet import resnet50_stage_names
from rpsflax.preprocess import get_preprocessor
from test_parity_vgg import element_error

SIZE = 72
# fp32 bounds. VGG16's (2e-5 max|err|/max|act|, 5e-4 per element) hold for its 13 layers; these
# networks are 53 (MobileNetV2) and 54 (ResNet50) conv+BN layers deep, and fp32 rounding grows
# with depth in Keras as much as in ours: against a float64 evaluation of the same network
# (test_as_close_to_keras_as_keras_is_to_float64), Keras' own fp32 output is off by up to
# 2.0e-5 (MobileNetV2 out_relu), ours by as much. Measured Keras-vs-ours worst, over every stage,
# route and input here: 2.54e-5 max|err|/max|act| (MobileNetV2, depthwise convs as fused
# multiply-adds; ResNet50 1.74e-5) and 1.25e-3 per element (MobileNetV2 out_relu, elements above
# 1% of the max). Bounds: about 2x over that.
TOL = 5e-5
ELEMENT_TOL = 3e-3
STAGES = {"resnet50": resnet50_stage_names(), "mobilenet_v2": mobilenet_v2_stage_names()}
# keras-applications (Keras 2, which made the release files) named the top layer differently.
RELEASE_TOP = {"resnet50": "probs", "mobilenet_v2": "Logits"}
ROUTES = ("legacy", "weights_h5", "keras", "converted")
_APPLY = {}


def flax_outputs(name, include_top, variables, x, **module_kw) -> dict[str, np.ndarray]:
  key = (name, include_top, tuple(sorted(module_kw.items())))
  if key not in _APPLY:
    model = backbone_module(name, include_top=include_top, **module_kw)
    _APPLY[key] = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))
  out, state = _APPLY[key](variables, x)
  res = {}
  for k, v in state["intermediates"].items():  # a BN layer sows under <layer>/output
    res[k] = np.asarray(v["output"][0] if isinstance(v, Mapping) else v[0])
  res["output"] = np.asarray(out)
  return res


@pytest.fixture(scope="module")
def inputs():
  img, source = kr.natural_image(SIZE, "rps")
  return np.stack([img, kr.random_image(SIZE)]), ["natural: " + source, "random"]


@pytest.fixture(scope="module")
def references(tmp_path_factory, inputs):
  """(backbone, include_top) -> seeded Keras model, its weight files, its outputs."""
  cache = {}

  def get(name: str, include_top: bool) -> dict:
    if (name, include_top) not in cache:
      model = kr.seeded_bn_backbone(name, include_top, SIZE)
      d = tmp_path_factory.mktemp(f"{name}_{'top' if include_top else 'notop'}")
      renames = {"predictions": RELEASE_TOP[name]} if include_top else {}
      files = {
          "legacy": kr.write_keras2_release(d / f"{name}_release.h5",
                                            kr.keras2_layers(model, renames)),
          "weights_h5": kr.write_weights_h5(model, d / f"{name}.weights.h5"),
          "keras": kr.write_keras(model, d / f"{name}.keras"),
      }
      x = np.asarray(get_preprocessor(name)(inputs[0]))
      want = kr.keras_outputs(model, x, STAGES[name])
      cache[name, include_top] = {"name": name, "include_top": include_top, "files": files,
                                  "want": want, "model": model, "dir": d, "x": x}
    return cache[name, include_top]

  return get


def load(route, ref):
  name, include_top = ref["name"], ref["include_top"]
  if route != "converted":
    return W.load_keras_backbone(ref["files"][route], name, include_top)
  shapes, layer_map, ignore = W.backbone_target(name, include_top)
  variables, manifest = W.convert_keras_file(ref["files"]["legacy"], shapes, layer_map,
                                             ignore=ignore)
  folder = W.save_converted(ref["dir"] / "converted", variables, manifest)
  return W.load_converted(folder)


def compare(got, want, names, labels, tag) -> float:
  worst = 0.0
  for layer in names + ["output"]:
    for i, label in enumerate(labels):
      err, scale, rel = kr.rel_error(got[layer][i], want[layer][i])
      element = element_error(got[layer][i], want[layer][i])
      print(f"{tag} {layer:26s} {label[:24]:24s} max|err| {err:.2e} max|act| {scale:.2e} "
            f"rel {rel:.2e} per-element {element:.2e}")
      assert scale > 0, f"{layer}: all-zero activations make the comparison meaningless"
      assert rel < TOL, f"{tag} {layer} on {label}: rel error {rel:.2e} (abs {err:.2e})"
      assert element < ELEMENT_TOL, (f"{tag} {layer} on {label}: an element {element:.2e} off "
                                     "relative to its own magnitude")
      worst = max(worst, rel)
  return worst


# Every file route without top; with top only the release (legacy) layout: the other loaders are
# the same code for the top's two extra arrays, and each case costs ~10 s of the suite.
CASES = [(n, top, r) for n in STAGES for top in (False, True) for r in ROUTES
         if not top or r == "legacy"]


@pytest.mark.parametrize("name,include_top,route", CASES)
def test_matches_keras_stage_by_stage(references, inputs, name, include_top, route):
  ref = references(name, include_top)
  variables = load(route, ref)
  assert set(variables) == {"params", "batch_stats"}
  got = flax_outputs(name, include_top, variables, ref["x"])
  tag = f"[{name}, {route}, include_top={include_top}]"
  worst = compare(got, ref["want"], STAGES[name], inputs[1], tag)
  print(f"{tag} worst relative error {worst:.2e}")
  if include_top:  # not a degenerate softmax: two images, two different distributions
    probs = got["output"]
    assert probs.max() < 0.9 and np.abs(probs[0] - probs[1]).max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Negative controls: the comparison fails for each classic porting mistake.

def _fails(got, want, layer):
  return kr.rel_error(got[layer], want[layer])[2] > 20 * TOL


def test_swapped_moving_mean_and_variance_would_fail(references):
  """ResNet50 with one BN layer's moving mean and variance swapped (the converter's order):
  within the bound before that layer, far off after."""
  ref = references("resnet50", False)
  v = W.load_keras_backbone(ref["files"]["legacy"], "resnet50")
  stats = jax.tree.map(lambda a: a, v["batch_stats"])
  bn = dict(stats["conv4_block1_1_bn"])
  bn["mean"], bn["var"] = bn["var"], np.abs(bn["mean"])  # abs: a variance must stay positive
  stats["conv4_block1_1_bn"] = bn
  got = flax_outputs("resnet50", False, {"params": v["params"], "batch_stats": stats}, ref["x"])
  print("swapped mean/var: conv4_block6_out rel error",
        kr.rel_error(got["conv4_block6_out"], ref["want"]["conv4_block6_out"])[2])
  assert kr.rel_error(got["conv3_block4_out"], ref["want"]["conv3_block4_out"])[2] < TOL
  assert _fails(got, ref["want"], "conv4_block6_out")


def test_spatially_transposed_depthwise_kernel_would_fail(references):
  """MobileNetV2 with every depthwise kernel read as (kw, kh) instead of (kh, kw)."""
  ref = references("mobilenet_v2", False)
  v = W.load_keras_backbone(ref["files"]["legacy"], "mobilenet_v2")
  params = {k: (dict(p, kernel=np.swapaxes(np.asarray(p["kernel"]), 0, 1))
                if k.endswith("depthwise") else p) for k, p in v["params"].items()}
  got = flax_outputs("mobilenet_v2", False, {"params": params, "batch_stats": v["batch_stats"]},
                     ref["x"])
  assert _fails(got, ref["want"], "expanded_conv_project_BN")
  assert _fails(got, ref["want"], "out_relu")


def test_flax_default_bn_epsilon_would_fail(references, monkeypatch):
  """MobileNetV2's BatchNorm with Flax's default epsilon (1e-5) instead of Keras' 1e-3."""
  ref = references("mobilenet_v2", False)
  v = W.load_keras_backbone(ref["files"]["legacy"], "mobilenet_v2")
  monkeypatch.setattr(mnv2, "MOBILENET_BN_EPSILON", 1e-5)
  model = backbone_module("mobilenet_v2")
  out, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(v, ref["x"])
  rel = kr.rel_error(np.asarray(out), ref["want"]["out_relu"])[2]
  print(f"MobileNetV2 with epsilon 1e-5: out_relu rel error {rel:.2e}")
  assert rel > 20 * TOL


@pytest.mark.parametrize("name", list(STAGES))
def test_as_close_to_keras_as_keras_is_to_float64(references, name):
  """The fp32 bound above, measured: the same network evaluated in float64 (our module, its
  weights upcast) is the reference both fp32 results are rounded approximations of. At every
  stage ours is no further from it than 2x Keras' own distance (plus one float32 ulp), and the
  Keras-Flax difference is of that size: a port error would show as a distance to float64 that
  Keras does not have."""
  ref = references(name, False)
  v = W.load_keras_backbone(ref["files"]["legacy"], name)
  got = flax_outputs(name, False, v, ref["x"])
  with jax.enable_x64(True):
    model = backbone_module(name, dtype=np.float64)
    v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), v)
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(
        v64, np.asarray(ref["x"], np.float64))
    exact = {k: np.asarray(a["output"][0] if isinstance(a, Mapping) else a[0])
             for k, a in state["intermediates"].items()}
  assert exact[STAGES[name][-1]].dtype == np.float64
  ulp = float(np.finfo(np.float32).eps)
  for layer in STAGES[name]:
    for i in range(len(ref["x"])):
      keras_err = kr.rel_error(ref["want"][layer][i], exact[layer][i])[2]
      ours_err = kr.rel_error(got[layer][i], exact[layer][i])[2]
      keras_el = element_error(ref["want"][layer][i], exact[layer][i])
      ours_el = element_error(got[layer][i], exact[layer][i])
      print(f"[{name}] {layer:26s} image {i}: vs float64: Keras {keras_err:.2e} (per element "
            f"{keras_el:.2e}), ours {ours_err:.2e} ({ours_el:.2e})")
      assert ours_err <= 2 * keras_err + ulp, (layer, i, ours_err, keras_err)
      assert ours_el <= 2 * keras_el + ulp, (layer, i, ours_el, keras_el)


def test_release_layout_is_what_keras_itself_loads(references):
  """Our Keras 2 release-layout writer produces a file Keras' own legacy loader takes, weights
  intact (it loads by position, so the renamed top does not matter to it)."""
  k = kr.keras()
  for name in STAGES:
    ref = references(name, True)
    build = k.applications.ResNet50 if name == "resnet50" else k.applications.MobileNetV2
    fresh = build(weights=None, include_top=True, input_shape=(SIZE, SIZE, 3))
    fresh.load_weights(ref["files"]["legacy"])
    for a, b in zip(fresh.get_weights(), ref["model"].get_weights(), strict=True):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(STAGES))
def test_layer_names_are_keras_weighted_layers_in_order(references, name):
  model = references(name, True)["model"]
  assert backbone_layer_names(name, True) == [l.name for l in model.layers if l.get_weights()]


@pytest.mark.parametrize("name", list(STAGES))
def test_converted_folder_reads_back_in_keras_layout(references, name):
  """A converted folder read back as Keras arrays: BN's four arrays in Keras' order, the
  depthwise kernel in Keras' (3, 3, C, 1) layout again."""
  ref = references(name, False)
  load("converted", ref)
  back = W.converted_as_keras(ref["dir"] / "converted")
  model = ref["model"]
  for layer in model.layers:
    want = layer.get_weights()
    if want:
      for a, b in zip(back[layer.name], want, strict=True):
        np.testing.assert_array_equal(a, b)
