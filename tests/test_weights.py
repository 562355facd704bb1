"""rpsflax.weights: file layouts, name/shape checks, converted folders, the CLI, offline download.

Most files here are written with h5py from NumPy arrays (no Keras), so these tests are fast;
Keras is imported only for the `.keras`, download and safe_mode cases.
"""

import json
import shutil
import subprocess
import sys
import zipfile

import h5py
import jax
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import config_base
from rpsflax import weights as W
from rpsflax.models import build_model, keras_layer_map, vgg
from rpsflax.models.vgg import vgg16_layer_names
from rpsflax import errors

POOLS = [f"block{i}_pool" for i in range(1, 6)]


def vgg_arrays(include_top=False, seed=0) -> dict[str, list[np.ndarray]]:
  """Random arrays of VGG16's shapes, keyed by Keras layer name, kernel first."""
  shapes, layer_map, _ = W.vgg16_target(include_top)
  rng = np.random.default_rng(seed)
  return {name: [rng.standard_normal(shapes[name][p].shape, dtype=np.float32)
                 for p in ("kernel", "bias")] for name in layer_map}


def release_layers(arrays) -> list:
  """The release file's layer list: convs and pools in Keras order (no input layer)."""
  out = []
  for name in vgg16_layer_names(False):
    out.append((name, arrays[name]))
    block = name.split("_")[0]
    if name in ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"):
      out.append((f"{block}_pool", []))
  return out + [(n, arrays[n]) for n in ("fc1", "fc2", "predictions") if n in arrays]


@pytest.fixture(scope="module")
def notop():
  return vgg_arrays(False)


@pytest.fixture(scope="module")
def notop_file(tmp_path_factory, notop):
  path = tmp_path_factory.mktemp("release") / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  return kr.write_legacy_arrays(path, release_layers(notop))


def vgg_config(image_size=32):
  c = config_base.get_config()
  c.model.name, c.data.image_size = "vgg16", image_size
  return c


# ---------------------------------------------------------------------------------------------
# Reading layouts.

def test_reads_release_layout_by_name(notop_file, notop):
  with h5py.File(notop_file) as f:  # the layout DESIGN.md describes
    assert [n.decode() for n in f.attrs["layer_names"]][:3] == ["block1_conv1", "block1_conv2",
                                                                 "block1_pool"]
    assert [n.decode() for n in f["block1_conv1"].attrs["weight_names"]] == [
        "block1_conv1_W_1:0", "block1_conv1_b_1:0"]
  weights = W.read_keras_weights(notop_file)
  assert list(weights) == vgg16_layer_names(False)  # pools (no weights) are skipped
  for name, arrays in weights.items():
    assert len(arrays) == len(notop[name]) == 2, (name, len(arrays))  # kernel and bias
    for a, b in zip(arrays, notop[name], strict=True):
      np.testing.assert_array_equal(a, b)


def test_load_keras_h5_fills_every_param(notop_file, notop):
  variables = W.load_keras_h5(notop_file)
  assert set(variables["params"]) == set(notop)
  for name, (kernel, bias) in notop.items():
    np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
    np.testing.assert_array_equal(variables["params"][name]["bias"], bias)


def test_weight_names_order_not_file_order(tmp_path):
  """Arrays are read in `weight_names` order, whatever order the datasets were created in."""
  k, b = np.ones((3, 3, 3, 4), np.float32), np.arange(4, dtype=np.float32)
  path = tmp_path / "x.h5"
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"conv"]
    g = f.create_group("conv")
    g.create_dataset("conv_b_1:0", data=b)  # bias created first
    g.create_dataset("conv_W_1:0", data=k)
    g.attrs["weight_names"] = [b"conv_W_1:0", b"conv_b_1:0"]
  w = W.read_keras_weights(path)["conv"]
  assert w[0].shape == (3, 3, 3, 4) and w[1].shape == (4,)


def test_keras3_layout_matched_by_layer_name_not_group_key(tmp_path, notop):
  """In .weights.h5 the groups are class-based keys (conv2d_7); the name is the vars attr."""
  path = tmp_path / "vgg.weights.h5"
  with h5py.File(path, "w") as f:
    keys = [f"conv2d_{i}" if i else "conv2d" for i in range(13)]
    # Shuffle which key holds which layer: only the name attribute may decide.
    for key, name in zip(keys, reversed(vgg16_layer_names(False))):
      v = f.create_group(f"layers/{key}/vars")
      v.attrs["name"] = name
      for i, a in enumerate(notop[name]):
        v.create_dataset(str(i), data=a)
    f.create_group("vars").attrs["name"] = "vgg16"
  variables = W.load_keras_h5(path)
  for name, (kernel, bias) in notop.items():
    np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
    np.testing.assert_array_equal(variables["params"][name]["bias"], bias)


def test_legacy_full_model_save_reads_model_weights_group(tmp_path, notop):
  path = tmp_path / "full.h5"
  kr.write_legacy_arrays(path, release_layers(notop))
  with h5py.File(path, "a") as f:  # model.save('x.h5') nests the weights under model_weights/
    g = f.create_group("model_weights")
    for key in list(f):
      if key != "model_weights":
        f.move(key, f"model_weights/{key}")
    for k, v in f.attrs.items():
      g.attrs[k] = v
    del f.attrs["layer_names"]
  assert list(W.read_keras_weights(path)) == vgg16_layer_names(False)


def test_legacy_nested_model_split_into_inner_layers(tmp_path, notop):
  """Keras 2 saved a nested base model as ONE layer whose weight names carry the inner names."""
  path = tmp_path / "nested.h5"
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"vgg16", b"global_max_pooling2d", b"dense"]
    g = f.create_group("vgg16")
    names = [f"{n}/{v}:0" for n in vgg16_layer_names(False) for v in ("kernel", "bias")]
    g.attrs["weight_names"] = [n.encode() for n in names]
    for n in names:
      layer, var = n.split("/")
      g.create_dataset(n, data=notop[layer][0 if var.startswith("kernel") else 1])
    f.create_group("global_max_pooling2d").attrs["weight_names"] = []
    d = f.create_group("dense")
    d.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    d.create_dataset("dense/kernel:0", data=np.zeros((512, 3), np.float32))
    d.create_dataset("dense/bias:0", data=np.zeros(3, np.float32))
  weights = W.read_keras_weights(path)
  assert list(weights) == vgg16_layer_names(False) + ["dense"]
  np.testing.assert_array_equal(weights["block4_conv2"][0], notop["block4_conv2"][0])


@pytest.mark.parametrize("fmt", ["weights.h5", "keras", "h5"])
def test_keras_transfer_model_with_nested_base(tmp_path, fmt):
  """The tutorial's Keras model (VGG16 base inside a Sequential), saved by Keras 3 in each
  format, gives the base's layers by name."""
  k = kr.keras()
  base = k.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
  kr.reseed_weights(base, seed=5)
  model = k.Sequential([k.Input((32, 32, 3)), base, k.layers.GlobalMaxPooling2D(),
                        k.layers.Dropout(0.5), k.layers.Dense(3, name="dense")])
  path = tmp_path / f"rps.{fmt}"
  model.save_weights(path) if fmt == "weights.h5" else model.save(path)
  weights = W.read_keras_weights(path)
  assert set(weights) == set(vgg16_layer_names(False)) | {"dense"}
  for name in vgg16_layer_names(False):
    for a, b in zip(weights[name], base.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)


def test_with_top_file_gives_a_notop_backbone(tmp_path, notop):
  """Without the top, a file's fc1/fc2/predictions are ignored (small stand-ins here; the
  with-top parity tests load the real shapes)."""
  top = {n: [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)]
         for n in ("fc1", "fc2", "predictions")}
  path = kr.write_legacy_arrays(tmp_path / "top.h5", release_layers({**notop, **top}))
  assert set(W.load_keras_h5(path, include_top=False)["params"]) == set(vgg16_layer_names(False))
  msg = error_of(W.load_keras_h5, path, include_top=True)
  assert "'fc1' (Flax 'fc1'): expected kernel (25088, 4096)" in msg


# ---------------------------------------------------------------------------------------------
# Errors: one message naming file, layer and shapes.

def damaged(tmp_path, notop, *, drop=(), extra=(), reshape=None, name="bad.h5"):
  arrays = {k: v for k, v in notop.items() if k not in drop}
  if reshape:
    layer, kernel_shape = reshape
    arrays[layer] = [np.zeros(kernel_shape, np.float32), np.zeros(kernel_shape[-1], np.float32)]
  layers = [(n, [] if "pool" in n else arrays[n]) for n, _ in release_layers(notop)
            if n in arrays or "pool" in n]
  layers += [(n, [np.zeros((3, 3, 512, 8), np.float32), np.zeros(8, np.float32)]) for n in extra]
  return kr.write_legacy_arrays(tmp_path / name, layers)


def error_of(fn, *args, **kwargs) -> str:
  with pytest.raises(errors.WeightsError) as e:
    fn(*args, **kwargs)
  print(e.value)
  return str(e.value)


def test_wrong_shape_names_file_layer_and_shapes(tmp_path, notop):
  path = damaged(tmp_path, notop, reshape=("block3_conv2", (3, 3, 256, 128)))
  msg = error_of(W.load_keras_h5, path)
  assert path in msg and "'block3_conv2'" in msg
  assert "kernel (3, 3, 256, 256), bias (256,)" in msg  # expected
  assert "(3, 3, 256, 128), (128,)" in msg              # found


def test_missing_layer(tmp_path, notop):
  path = damaged(tmp_path, notop, drop=("block5_conv3",))
  msg = error_of(W.load_keras_h5, path)
  assert path in msg and "missing layer 'block5_conv3'" in msg and "(3, 3, 512, 512)" in msg


def test_unexpected_layer(tmp_path, notop):
  path = damaged(tmp_path, notop, extra=("block6_conv1",))
  msg = error_of(W.load_keras_h5, path)
  assert path in msg and "unexpected layer 'block6_conv1'" in msg and "(3, 3, 512, 8)" in msg


def test_every_problem_in_one_message(tmp_path, notop):
  path = damaged(tmp_path, notop, drop=("block1_conv1",), extra=("extra_dense",),
                 reshape=("block4_conv1", (3, 3, 256, 64)))
  msg = error_of(W.load_keras_h5, path)
  assert msg.count("\n  - ") == 3
  for part in ("'block1_conv1'", "'extra_dense'", "'block4_conv1'"):
    assert part in msg


def test_other_models_file_says_so(tmp_path):
  layers = [("conv2d", [np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32)])]
  path = kr.write_legacy_arrays(tmp_path / "cnn.h5", layers)
  assert "another model" in error_of(W.load_keras_h5, path)


@pytest.mark.parametrize("content", [b"<html><body>404 Not Found</body></html>", b"",
                                     b"\x89PNG\r\n\x1a\n0000"])
def test_not_hdf5(tmp_path, content):
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  path.write_bytes(content)
  msg = error_of(W.read_keras_weights, path)
  assert str(path) in msg and "HDF5" in msg and ".keras" in msg


def test_truncated_hdf5(tmp_path, notop_file):
  data = open(notop_file, "rb").read()
  path = tmp_path / "truncated.h5"
  path.write_bytes(data[:len(data) // 2])
  msg = error_of(W.load_keras_h5, path)
  assert str(path) in msg


def test_hdf5_without_keras_layout(tmp_path):
  path = tmp_path / "other.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("x", data=np.zeros(3))
  assert "layer_names" in error_of(W.read_keras_weights, path)


def test_missing_file_and_folder(tmp_path):
  assert "no such file" in error_of(W.read_keras_weights, tmp_path / "nope.h5")
  assert "is a folder" in error_of(W.read_keras_weights, tmp_path)


def test_zip_that_is_not_a_keras_model(tmp_path):
  path = tmp_path / "weights.keras"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("readme.txt", "hello")
  assert "not a .keras model" in error_of(W.read_keras_weights, path)


def test_keras_file_opened_with_safe_mode(tmp_path):
  """A .keras file with a Lambda layer (arbitrary code) is refused, not deserialised."""
  k = kr.keras()
  model = k.Sequential([k.Input((4,)), k.layers.Dense(2, name="dense"),
                        k.layers.Lambda(lambda x: x * 2, name="lam")])
  path = tmp_path / "lambda.keras"
  model.save(path)
  msg = error_of(W.read_keras_weights, path)
  assert str(path) in msg and "safe_mode" in msg and ".weights.h5" in msg


# ---------------------------------------------------------------------------------------------
# Converted folders.

@pytest.fixture()
def converted(tmp_path, notop_file):
  shapes, layer_map, ignore = W.vgg16_target(False)
  variables, manifest = W.convert_keras_file(notop_file, shapes, layer_map, ignore=ignore)
  return W.save_converted(tmp_path / "vgg16_notop", variables, manifest)


def test_converted_round_trip_and_manifest(converted, notop_file, notop):
  variables = W.load_converted(converted)
  for name, (kernel, bias) in notop.items():
    np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
    np.testing.assert_array_equal(variables["params"][name]["bias"], bias)
  manifest = json.loads((converted / "manifest.json").read_text())
  assert manifest["source_md5"] == W.file_md5(notop_file)
  assert manifest["layers"]["block2_conv1"] == {
      "flax_path": "block2_conv1", "weights": {"kernel": [3, 3, 64, 128], "bias": [128]}}
  assert manifest["arrays"]["params/block2_conv1/kernel"]["shape"] == [3, 3, 64, 128]
  assert manifest["num_params"] == 14_714_688  # Keras' VGG16(include_top=False).count_params()


def test_no_manifest_means_unfinished(converted):
  (converted / "manifest.json").unlink()  # as if killed before the last step
  msg = error_of(W.load_converted, converted)
  assert str(converted) in msg and "manifest" in msg and "convert again" in msg


def test_manifest_shape_disagreement(converted):
  path = converted / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest["arrays"]["params/block1_conv1/bias"]["shape"] = [32]
  path.write_text(json.dumps(manifest))
  msg = error_of(W.load_converted, converted)
  assert "params/block1_conv1/bias" in msg and "(32,)" in msg and "(64,)" in msg


def test_manifest_lists_array_checkpoint_lacks(converted):
  path = converted / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest["arrays"]["params/block6_conv1/kernel"] = {"shape": [3], "dtype": "float32"}
  path.write_text(json.dumps(manifest))
  assert "params/block6_conv1/kernel" in error_of(W.load_converted, converted)


# Orbax's event loop reports an ignored exception when _METADATA is gone; our error is the point.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["array_data", "checkpoint_metadata", "checkpoint_folder",
                                    "corrupt_manifest"])
def test_damaged_checkpoint_is_refused(converted, damage):
  ckpt = converted / "params"
  if damage == "array_data":
    for f in (ckpt / "d").iterdir():
      f.unlink()
  elif damage == "checkpoint_metadata":
    (ckpt / "_METADATA").unlink()
  elif damage == "checkpoint_folder":
    shutil.rmtree(ckpt)
  else:
    (converted / "manifest.json").write_text('{"format": "rpsflax-conv')
  msg = error_of(W.load_converted, converted)
  assert str(converted) in msg
  # The fix, in full: convert again, writing over this folder.
  assert "convert again: python scripts/convert_keras_weights.py --input " in msg, msg
  assert msg.endswith(f"--output {converted}"), msg
  if damage != "corrupt_manifest":  # the manifest still names the source file
    assert f"--input {json.loads((converted / 'manifest.json').read_text())['source']} " in msg


def test_overwrite_replaces_previous_conversion(converted, tmp_path):
  arrays = vgg_arrays(False, seed=1)
  path = kr.write_legacy_arrays(tmp_path / "other.h5", release_layers(arrays))
  shapes, layer_map, ignore = W.vgg16_target(False)
  W.save_converted(converted, *W.convert_keras_file(path, shapes, layer_map, ignore=ignore))
  got = W.load_converted(converted)["params"]["block1_conv1"]["kernel"]
  np.testing.assert_array_equal(got, arrays["block1_conv1"][0])


def test_save_refuses_a_folder_with_other_files(tmp_path, notop_file):
  (tmp_path / "notes.txt").write_text("mine")
  shapes, layer_map, ignore = W.vgg16_target(False)
  variables, manifest = W.convert_keras_file(notop_file, shapes, layer_map, ignore=ignore)
  msg = error_of(W.save_converted, tmp_path, variables, manifest)
  assert "notes.txt" in msg and (tmp_path / "notes.txt").read_text() == "mine"
  assert not (tmp_path / "params").exists()


# ---------------------------------------------------------------------------------------------
# load_for_model: config.weights.

@pytest.fixture(scope="module")
def vgg_classifier():
  """The rps recipe's Classifier and stand-in params of its shapes (a real init of 15M
  parameters costs seconds on CPU and adds nothing here)."""
  config = vgg_config()
  model = build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32),
                        shapes["params"])
  return config, model, params


@pytest.mark.parametrize("source", ["file", "folder"])
def test_load_for_model_fills_backbone_keeps_head(vgg_classifier, notop_file, converted, notop,
                                                  source):
  config, _, params = vgg_classifier
  spec = notop_file if source == "file" else str(converted)
  loaded = W.load_for_model(spec, params, keras_layer_map(config))
  for name, (kernel, bias) in notop.items():
    np.testing.assert_array_equal(loaded["backbone"][name]["kernel"], kernel)
    np.testing.assert_array_equal(loaded["backbone"][name]["bias"], bias)
  np.testing.assert_array_equal(loaded["head"]["predictions"]["kernel"],
                                params["head"]["predictions"]["kernel"])


def test_load_for_model_empty_spec_is_identity(vgg_classifier):
  config, _, params = vgg_classifier
  assert W.load_for_model("", params, keras_layer_map(config)) is params


def test_load_for_model_unknown_spec(vgg_classifier):
  config, _, params = vgg_classifier
  msg = error_of(W.load_for_model, "weights/nothing_here", params, keras_layer_map(config))
  assert "config.weights='weights/nothing_here'" in msg and "imagenet" in msg


def test_load_for_model_wrong_model_file(vgg_classifier, tmp_path):
  """A cats-vs-dogs file given to the VGG recipe: every backbone layer reported missing."""
  config, _, params = vgg_classifier
  layers = [("conv2d", [np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32)])]
  path = kr.write_legacy_arrays(tmp_path / "cnn.h5", layers)
  msg = error_of(W.load_for_model, path, params, keras_layer_map(config))
  assert "missing layer 'block1_conv1'" in msg and "unexpected layer 'conv2d'" in msg


def test_imagenet_uses_cached_release_without_keras(vgg_classifier, notop_file, tmp_path,
                                                    monkeypatch, notop):
  """'imagenet' finds the release in Keras' cache (md5-checked) with no Keras import."""
  config, _, params = vgg_classifier
  fname = vgg.VGG16_RELEASES[False][0]
  (tmp_path / "models").mkdir()
  shutil.copy(notop_file, tmp_path / "models" / fname)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setitem(vgg.VGG16_RELEASES, False, (fname, "http://unused", W.file_md5(notop_file)))
  monkeypatch.setattr(W.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
  monkeypatch.setattr(W.keras_files, "import_keras", lambda why: pytest.fail("Keras imported: " + why))
  loaded = W.load_for_model("imagenet", params, keras_layer_map(config))
  np.testing.assert_array_equal(loaded["backbone"]["block5_conv3"]["kernel"],
                                notop["block5_conv3"][0])


# ---------------------------------------------------------------------------------------------
# Download (offline) and the official release constants.

def test_release_constants_are_keras_own():
  import inspect
  from keras.src.applications import vgg16 as keras_vgg16
  src = inspect.getsource(keras_vgg16)
  for include_top, url in ((False, keras_vgg16.WEIGHTS_PATH_NO_TOP),
                           (True, keras_vgg16.WEIGHTS_PATH)):
    fname, our_url, md5 = vgg.VGG16_RELEASES[include_top]
    assert our_url == url and url.endswith(fname) and f'"{md5}"' in src


@pytest.mark.parametrize("include_top", [False, True])
def test_offline_download_says_how_to_pass_a_local_file(tmp_path, monkeypatch, include_top,
                                                        vgg_classifier):
  import keras

  def offline(*args, **kwargs):  # what get_file raises without a network
    raise Exception(f"URL fetch failure on {args[1]}: None -- [Errno -3] Temporary failure in "
                    "name resolution")

  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setattr(keras.utils, "get_file", offline)
  msg = error_of(W.download_vgg16, include_top)
  fname = vgg.VGG16_RELEASES[include_top][0]
  _, url, md5 = vgg.VGG16_RELEASES[include_top]
  # The project's own words (not the fake's): what failed, where to fetch it, both ways to use it.
  assert msg.startswith(f"could not download the Keras VGG16 ImageNet weights {fname} from {url} ")
  assert f"Offline? Fetch {fname} (md5 {md5}) from {url}" in msg
  assert f"python scripts/convert_keras_weights.py --input /path/to/{fname}" in msg
  assert f"--config.weights=/path/to/{fname}" in msg and ("--include-top" in msg) == include_top
  if not include_top:  # the training path says the same
    config, _, params = vgg_classifier
    monkeypatch.setattr(W.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
    assert "--config.weights=" in error_of(W.load_for_model, "imagenet", params,
                                           keras_layer_map(config))


# ---------------------------------------------------------------------------------------------
# The CLI.

def run_cli(*args):
  return subprocess.run([sys.executable, str(kr.REPO / "scripts" / "convert_keras_weights.py"),
                         *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_help():
  r = run_cli("--help")
  assert r.returncode == 0
  for flag in ("--input", "--output", "--include-top", "--model", "load_converted"):
    assert flag in r.stdout


def test_cli_converts_a_release_layout_file(tmp_path, notop_file, notop):
  out = tmp_path / "vgg16_notop"
  r = run_cli("--input", notop_file, "--output", out)
  assert r.returncode == 0, r.stderr
  assert "13 layers" in r.stdout and "14,714,688" in r.stdout and W.file_md5(notop_file) in r.stdout
  variables = W.load_converted(out)
  for name, (kernel, bias) in notop.items():
    np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
    np.testing.assert_array_equal(variables["params"][name]["bias"], bias)


def test_cli_bad_file_fails_with_message(tmp_path):
  bad = tmp_path / "bad.h5"
  bad.write_text("not weights")
  r = run_cli("--input", bad, "--output", tmp_path / "out")
  assert r.returncode == 2 and str(bad) in r.stderr and "HDF5" in r.stderr  # a user's mistake
  assert "Traceback" not in r.stderr and r.stderr.count("error: ") == 1, r.stderr
  assert not (tmp_path / "out" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# check_spec: the seconds-long preflight of config.weights.

def test_check_spec_resolves_good_specs(notop_file, converted):
  assert W.check_spec("") == ""
  assert W.check_spec(notop_file) == notop_file
  assert W.check_spec(str(converted)) == str(converted)


def test_check_spec_rejects_bad_specs(tmp_path, converted, notop_file):
  bad = tmp_path / "bad.h5"
  bad.write_text("<html>")
  assert "HDF5" in error_of(W.check_spec, str(bad))
  truncated = tmp_path / "truncated.h5"
  truncated.write_bytes(open(notop_file, "rb").read()[:4096])
  assert "truncated" in error_of(W.check_spec, str(truncated))
  (converted / "manifest.json").unlink()
  assert "manifest" in error_of(W.check_spec, str(converted))
  assert "config.weights='nope/'" in error_of(W.check_spec, "nope/")


def test_check_spec_imagenet_offline(tmp_path, monkeypatch):
  import keras

  def offline(*args, **kwargs):
    raise Exception("URL fetch failure on x: None -- [Errno -3] Temporary failure")

  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setattr(W.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
  monkeypatch.setattr(keras.utils, "get_file", offline)
  msg = error_of(W.check_spec, "imagenet")
  assert "--input" in msg and "--config.weights=" in msg
