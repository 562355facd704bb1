"""The converter for the BatchNorm backbones (ResNet50, MobileNetV2), with no Keras model built:
BN statistics into batch_stats, depthwise kernels reshaped both ways, the Keras 2 release layout
and its legacy top names, the official releases per backbone and 'imagenet' resolving to them.
(Parity of the converted networks against Keras: tests/test_parity_bn_backbones.py.)"""

import inspect
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import config_base
from rpsflax import weights as W
from rpsflax.errors import WeightsError
from rpsflax.models import build_model, keras_layer_map, resnet


def keras_arrays(name, include_top=False, seed=0) -> dict[str, list[np.ndarray]]:
  """Random arrays in Keras' layouts for every weighted layer of backbone `name`, Keras order."""
  shapes, layer_map, _ = W.backbone_target(name, include_top)
  rng = np.random.default_rng(seed)
  out = {}
  for layer in layer_map:
    p, s = shapes["params"][layer], shapes["batch_stats"].get(layer)
    if s is not None:  # BN: gamma, beta, moving_mean, moving_variance
      n = p["scale"].shape
      out[layer] = [rng.uniform(0.5, 1.5, n), rng.standard_normal(n), rng.standard_normal(n),
                    rng.uniform(0.5, 2.0, n)]
    else:
      kshape = p["kernel"].shape
      if layer.endswith("depthwise"):  # Keras' DepthwiseConv2D kernel: (kh, kw, C, 1)
        kshape = kshape[:2] + (kshape[3], 1)
      out[layer] = [rng.standard_normal(kshape)] + (
          [rng.standard_normal(p["bias"].shape)] if "bias" in p else [])
    out[layer] = [a.astype(np.float32) for a in out[layer]]
  return out


def release_file(path, arrays, renames=None):
  """Keras 2 release layout (input layer, weighted layers, Keras 2 weight names)."""
  renames = renames or {}
  layers = [("input_1", [], [])]
  for layer, ws in arrays.items():
    n = renames.get(layer, layer)
    if len(ws) == 4:
      wn = ["gamma", "beta", "moving_mean", "moving_variance"]
    elif layer.endswith("depthwise"):
      wn = ["depthwise_kernel"]
    else:
      wn = ["kernel", "bias"][:len(ws)]
    layers.append((n, ws, [f"{n}/{w}:0" for w in wn]))
  return kr.write_keras2_release(path, layers)


@pytest.fixture(scope="module")
def mnv2_arrays():
  return keras_arrays("mobilenet_v2")


@pytest.fixture(scope="module")
def mnv2_file(tmp_path_factory, mnv2_arrays):
  return release_file(tmp_path_factory.mktemp("mnv2") / "mnv2.h5", mnv2_arrays)


def test_bn_statistics_fill_batch_stats_and_depthwise_kernels_are_reshaped(mnv2_file, mnv2_arrays):
  v = W.load_keras_backbone(mnv2_file, "mobilenet_v2")
  gamma, beta, mean, var = mnv2_arrays["block_5_depthwise_BN"]
  np.testing.assert_array_equal(v["params"]["block_5_depthwise_BN"]["scale"], gamma)
  np.testing.assert_array_equal(v["params"]["block_5_depthwise_BN"]["bias"], beta)
  np.testing.assert_array_equal(v["batch_stats"]["block_5_depthwise_BN"]["mean"], mean)
  np.testing.assert_array_equal(v["batch_stats"]["block_5_depthwise_BN"]["var"], var)
  keras_kernel = mnv2_arrays["block_5_depthwise"][0]  # (3, 3, 192, 1)
  flax_kernel = np.asarray(v["params"]["block_5_depthwise"]["kernel"])
  assert keras_kernel.shape == (3, 3, 192, 1) and flax_kernel.shape == (3, 3, 1, 192)
  for c in (0, 7, 191):  # channel c's 3x3 filter is group c's
    np.testing.assert_array_equal(flax_kernel[:, :, 0, c], keras_kernel[:, :, c, 0])


def test_manifest_names_collections_and_keras_shapes(tmp_path, mnv2_file, mnv2_arrays):
  shapes, layer_map, ignore = W.backbone_target("mobilenet_v2")
  variables, manifest = W.convert_keras_file(mnv2_file, shapes, layer_map, ignore=ignore)
  bn = manifest["layers"]["bn_Conv1"]["weights"]
  assert list(bn) == ["scale", "bias", "batch_stats/mean", "batch_stats/var"]
  assert manifest["layers"]["block_1_depthwise"]["keras_shapes"] == [[3, 3, 96, 1]]
  folder = W.save_converted(tmp_path / "conv", variables, manifest)
  back = W.converted_as_keras(folder)
  for layer, arrays in mnv2_arrays.items():
    for a, b in zip(back[layer], arrays, strict=True):
      np.testing.assert_array_equal(a, b)


def test_bn_layer_without_moving_variance_is_refused(tmp_path, mnv2_arrays):
  arrays = dict(mnv2_arrays)
  arrays["block_3_expand_BN"] = arrays["block_3_expand_BN"][:3]
  path = release_file(tmp_path / "broken.h5", arrays)
  with pytest.raises(WeightsError) as e:
    W.load_keras_backbone(path, "mobilenet_v2")
  msg = str(e.value)
  assert "layer 'block_3_expand_BN'" in msg and "batch_stats/var (144,)" in msg, msg


def test_depthwise_kernel_of_wrong_depth_is_refused(tmp_path, mnv2_arrays):
  arrays = dict(mnv2_arrays)
  arrays["block_2_depthwise"] = [np.zeros((3, 3, 96, 1), np.float32)]  # block_2 has 144 channels
  path = release_file(tmp_path / "wrong.h5", arrays)
  with pytest.raises(WeightsError, match=r"layer 'block_2_depthwise'.*\(3, 3, 1, 144\)"):
    W.load_keras_backbone(path, "mobilenet_v2")


@pytest.mark.parametrize("name,legacy_top", [("resnet50", "probs"), ("mobilenet_v2", "Logits")])
def test_release_top_names_of_keras_applications(tmp_path, name, legacy_top):
  """keras-applications named the top 'probs' (ResNet50) and 'Logits' (MobileNetV2); a release
  file with its top converts to 'predictions', and without --include-top the top is ignored."""
  arrays = keras_arrays(name, include_top=True)
  path = release_file(tmp_path / "top.h5", arrays, {"predictions": legacy_top})
  v = W.load_keras_backbone(path, name, include_top=True)
  np.testing.assert_array_equal(v["params"]["predictions"]["kernel"], arrays["predictions"][0])
  assert "predictions" not in W.load_keras_backbone(path, name, include_top=False)["params"]


# ---------------------------------------------------------------------------------------------
# The official releases and config.weights='imagenet'.

def test_release_constants_are_keras_own():
  from keras.src.applications import mobilenet_v2 as keras_mnv2
  from keras.src.applications import resnet as keras_resnet
  for top, i in ((True, 0), (False, 1)):
    rel = W.release("resnet50", top)
    assert rel.url == keras_resnet.BASE_WEIGHTS_PATH + rel.fname
    assert rel.md5 == keras_resnet.WEIGHTS_HASHES["resnet50"][i]
    want = f"resnet50_weights_tf_dim_ordering_tf_kernels{'' if top else '_notop'}.h5"
    assert rel.fname == want and want.replace("resnet50", "{weights_name}") in (
        inspect.getsource(keras_resnet).replace('f"{weights_name}', '"{weights_name}'))
  src = inspect.getsource(keras_mnv2.MobileNetV2)
  for top in (False, True):
    rel = W.release("mobilenet_v2", top, 160, 0.35)
    assert rel.url == keras_mnv2.BASE_WEIGHT_PATH + rel.fname
    suffix = "" if top else "_no_top"
    assert rel.fname == f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_160{suffix}.h5"
    # Keras' source passes no file_hash for these files: there is no md5 to check.
    assert rel.md5 is None and "file_hash" not in src
  # Other sizes load the 224 file, as Keras does; only Keras' alphas have releases.
  assert W.release("mobilenet_v2", False, 72).fname.endswith("_1.0_224_no_top.h5")
  with pytest.raises(WeightsError, match="config.model.alpha=0.9"):
    W.release("mobilenet_v2", False, 224, 0.9)


def recipe(name, image_size):
  c = config_base.get_config()
  c.model.name, c.data.image_size = name, image_size
  c.preprocess = name
  return c


@pytest.mark.parametrize("name,size,fname", [
    ("resnet50", 64, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("mobilenet_v2", 160, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"),
    ("mobilenet_v2", 64, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
])
def test_imagenet_resolves_the_release_of_each_backbone(tmp_path, monkeypatch, name, size, fname):
  """'imagenet' finds config.model's own release in Keras' cache (no Keras import) and fills the
  backbone's params and batch_stats; the head keeps its initialisation."""
  config = recipe(name, size)
  arrays = keras_arrays(name)
  (tmp_path / "models").mkdir()
  path = release_file(tmp_path / "models" / fname, arrays)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setitem(resnet.RESNET50_MD5, False, W.file_md5(path))  # a stand-in for the real file
  monkeypatch.setattr(W.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
  monkeypatch.setattr(W.keras_files, "import_keras", lambda why: pytest.fail("Keras imported: " + why))
  rel = W.release_for_config(config)
  assert rel.fname == fname and W.check_spec("imagenet", rel) == path
  # Stand-in variables of the model's shapes (compiling its init costs half a minute on a CPU).
  shapes = jax.eval_shape(build_model(config).init, jax.random.key(0),
                          np.zeros((1, size, size, 3), np.float32))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
  loaded = W.load_variables_for_model("imagenet", variables, keras_layer_map(config), rel=rel)
  bn = "conv1_bn" if name == "resnet50" else "bn_Conv1"
  np.testing.assert_array_equal(loaded["batch_stats"]["backbone"][bn]["var"], arrays[bn][3])
  np.testing.assert_array_equal(loaded["params"]["backbone"][bn]["scale"], arrays[bn][0])
  np.testing.assert_array_equal(loaded["params"]["head"]["predictions"]["kernel"],
                                variables["params"]["head"]["predictions"]["kernel"])


def test_cli_converts_a_mobilenet_v2_release_file(tmp_path, mnv2_file, mnv2_arrays):
  out = tmp_path / "mnv2"
  r = subprocess.run([sys.executable, str(kr.REPO / "scripts" / "convert_keras_weights.py"),
                      "--model", "mobilenet_v2", "--input", mnv2_file, "--output", str(out)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "104 layers" in r.stdout and "MobileNetV2(include_top=False, alpha=1.0)" in r.stdout
  v = W.load_converted(out)
  np.testing.assert_array_equal(v["batch_stats"]["Conv_1_bn"]["mean"], mnv2_arrays["Conv_1_bn"][2])
  assert json.loads((out / "manifest.json").read_text())["source_format"] == "legacy-h5"
