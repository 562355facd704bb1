"""End to end, through the real commands: train, resume, not retrain, evaluate, predict.

configs/rps_tiny.py (VGG16 at 32x32, batch 8) on 8 images per class, with random VGG16 weights the
test writes as a legacy Keras HDF5 file (the layout of the ImageNet release), so the weights path
runs too. Images come from ../shared/data/rps when present, else they are drawn here, so the
test never skips. The offline tests check that missing data or weights stop a run before any
work, with one message naming the flag that fixes it.
"""

import json
import os
import pathlib
import subprocess

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw

from rpsflax import errors

import commands  # tests/commands.py: the real CLI in a subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "rps_tiny.py"
SHARED_RPS = pathlib.Path(os.environ.get("RPSFLAX_SHARED_DATA", REPO.parent / "shared" / "data")) / "rps"
CLASSES = ("paper", "rock", "scissors")
PER_CLASS = 8
TIMEOUT = 240


# ---------------------------------------------------------------------------------------------
# Fixtures: data and weights

def _draw(cls: str, i: int) -> Image.Image:
  """A synthetic stand-in for a hand photo: a shape per class on a plain background."""
  img = Image.new("RGB", (64, 64), (240, 240, 235))
  d = ImageDraw.Draw(img)
  o = 4 + i % 5
  if cls == "paper":
    d.rectangle([o, o, 60 - o, 60 - o], fill=(200, 150, 120))
  elif cls == "rock":
    d.ellipse([o, o, 60 - o, 60 - o], fill=(120, 80, 60))
  else:
    d.polygon([(o, 60), (32, o), (60 - o, 60)], fill=(160, 110, 90))
  return img


@pytest.fixture(scope="module")
def rps_dir(tmp_path_factory) -> pathlib.Path:
  """DIR/train/<class>/ with PER_CLASS images each: real RPS samples when available."""
  root = tmp_path_factory.mktemp("rps")
  for cls in CLASSES:
    dest = root / "train" / cls
    dest.mkdir(parents=True)
    real = sorted((SHARED_RPS / "train" / cls).glob("*.png"))[:PER_CLASS]
    if len(real) == PER_CLASS:
      for f in real:
        (dest / f.name).write_bytes(f.read_bytes())
    else:
      for i in range(PER_CLASS):
        _draw(cls, i).save(dest / f"{cls}{i:02d}.png")
  return root


def vgg16_legacy_h5(path: pathlib.Path, seed: int = 0) -> dict:
  """Random VGG16 (notop) weights in the legacy Keras HDF5 layout of the ImageNet release file.

  Root attribute layer_names (convs and pools, no input layer); per layer weight_names
  '<layer>_W_1:0', '<layer>_b_1:0'. He-scaled kernels keep activations in range. Returns
  {layer: (kernel, bias)}.
  """
  from rpsflax.models.vgg import VGG16_BLOCKS

  rng = np.random.default_rng(seed)
  layers, arrays, cin = [], {}, 3
  for block, convs, filters in VGG16_BLOCKS:
    for i in range(1, convs + 1):
      name = f"block{block}_conv{i}"
      kernel = (rng.standard_normal((3, 3, cin, filters)) * np.sqrt(2.0 / (9 * cin)))
      if cin == 3:
        kernel /= 100.0  # inputs are caffe-preprocessed pixels (about +-128): keep features O(1)
      arrays[name] = (kernel.astype(np.float32),
                      (0.01 * rng.standard_normal(filters)).astype(np.float32))
      layers.append(name)
      cin = filters
    layers.append(f"block{block}_pool")
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for name in layers:
      g = f.create_group(name)
      if name in arrays:
        wnames = [f"{name}_W_1:0", f"{name}_b_1:0"]
        g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
        for w, a in zip(wnames, arrays[name]):
          g.create_dataset(w, data=a)
      else:
        g.attrs["weight_names"] = np.array([], dtype="S1")
  return arrays


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("weights") / "vgg16_random_notop.h5"
  return path, vgg16_legacy_h5(path)


def run_cmd(module: str, *args, expect_rc: int = 0) -> subprocess.CompletedProcess:
  return commands.run_cmd(module, *args, expect_rc=expect_rc, timeout=TIMEOUT)


def run_main(workdir, *args, expect_rc: int = 0) -> subprocess.CompletedProcess:
  return run_cmd("rpsflax.main", f"--config={TINY}", f"--workdir={workdir}", *args,
                 expect_rc=expect_rc)


def _steps(folder: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _read(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


# ---------------------------------------------------------------------------------------------
# The run

def test_train_resume_evaluate_predict(tmp_path, rps_dir, weights_file):
  weights_path, weight_arrays = weights_file
  w = tmp_path / "run"
  common = [f"--config.data.dir={rps_dir}", f"--config.weights={weights_path}"]

  # 1. One epoch, then the same run asked for two: it resumes and trains only the second.
  run_main(w, *common, "--config.num_epochs=1")
  assert [h["epoch"] for h in _read(w / "history.json")] == [1]
  latest_after_1 = _steps(w / "checkpoints" / "latest")
  run_main(w, *common)  # rps_tiny: num_epochs=2
  history = _read(w / "history.json")
  assert [h["epoch"] for h in history] == [1, 2]
  steps_per_epoch = latest_after_1[-1]
  assert _steps(w / "checkpoints" / "latest")[-1] == 2 * steps_per_epoch

  # 2. A finished run is not retrained: nothing new is written.
  before = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file()}
  proc = run_main(w, *common)
  assert "not retraining" in proc.stderr
  after = {p: p.stat().st_mtime_ns for p in w.rglob("*") if p.is_file()}
  changed = sorted(str(p.relative_to(w)) for p in after if before.get(p) != after[p])
  # config.json and data_report.json describe the latest invocation, .lock names its process
  # (rpsflax.workdir_lock); nothing a run produced moves.
  assert set(changed) <= {"config.json", "data_report.json", ".lock"}, changed
  assert set(before) == set(after)

  # 3. Every output of a run.
  config = _read(w / "config.json")
  assert config["data"]["dir"] == str(rps_dir) and config["weights"] == str(weights_path)
  assert config["num_epochs"] == 2 and config["data"]["image_size"] == 32
  for h in history:
    assert set(h) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    assert 0.0 <= h["train_accuracy"] <= 1.0 and np.isfinite(h["train_loss"])
  assert list((w / "tensorboard").glob("**/events.out.tfevents.*"))
  for png in ("curves.png", "confusion_matrix.png"):
    assert (w / png).stat().st_size > 10_000, png
  ev = _read(w / "eval.json")
  assert set(ev) >= {"split", "accuracy", "loss", "num_examples", "per_class_accuracy"}
  assert set(ev["per_class_accuracy"]) == set(CLASSES)
  splits = {p.stem: p.read_text().splitlines() for p in (w / "splits").glob("*.txt")}
  assert {"train", "validation"} <= set(splits)
  n_val = len(splits["validation"])
  assert len(splits["train"]) + n_val == len(CLASSES) * PER_CLASS
  assert not set(splits["train"]) & set(splits["validation"])
  assert ev["split"] == "validation" and ev["num_examples"] == n_val
  assert _steps(w / "checkpoints" / "best")
  assert (w / "data_report.json").is_file()

  # 4. The converted weights were used: the frozen backbone equals the file's random kernels.
  from rpsflax import prediction

  predictor = prediction.Predictor(w)
  assert predictor.class_names == list(CLASSES)
  kernel = np.asarray(predictor.params["backbone"]["block3_conv2"]["kernel"])
  np.testing.assert_array_equal(kernel, weight_arrays["block3_conv2"][0])

  # 5. Evaluation only, on a split and on a folder: files of their own, eval.json kept.
  run_main(w, "--mode=evaluate", "--split=validation")
  ev_val = _read(w / "eval" / "validation" / "eval.json")
  assert ev_val["num_examples"] == n_val and 0.0 <= ev_val["accuracy"] <= 1.0
  assert (w / "eval" / "validation" / "confusion_matrix.png").stat().st_size > 10_000
  from rpsflax import evaluation, prediction

  evaluation.evaluate(None, w, "validation", str(rps_dir / "train"))  # the command's body, in process
  ev_dir = list(w.glob("eval/folder-*/eval.json"))
  assert len(ev_dir) == 1 and _read(ev_dir[0])["num_examples"] == len(CLASSES) * PER_CLASS
  assert _read(w / "eval.json") == ev

  # 6. Prediction on real files: a CSV and a grid from the command, JSON through the API.
  images = sorted((rps_dir / "train").glob("*/*.png"))
  csv_path, grid = tmp_path / "preds.csv", tmp_path / "grid.png"
  proc = run_cmd("rpsflax.predict", f"--workdir={w}", f"--output={csv_path}", f"--grid={grid}",
                 "--batch_size=5", images[0], rps_dir / "train" / "rock")
  printed = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
  assert len(printed) == 1 + PER_CLASS
  assert all(label in CLASSES and 0.0 <= float(p) <= 1.0 for _, label, p in printed)
  rows = csv_path.read_text().splitlines()
  assert rows[0] == "file,label,probability,p_paper,p_rock,p_scissors" and len(rows) == 2 + PER_CLASS
  assert grid.stat().st_size > 10_000
  json_path = tmp_path / "preds.json"
  api_rows = prediction.predict_files(predictor, [images[0]])[0]  # the model restored in step 4
  prediction.write_predictions(json_path, api_rows, predictor.class_names)
  data = _read(json_path)
  assert data["class_names"] == list(CLASSES) and data["predictions"] == api_rows
  assert sum(api_rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  assert float(printed[0][2]) == pytest.approx(api_rows[0]["probability"], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Offline honesty: missing data or weights stop the run before any work

def test_missing_weights_file_stops_with_the_flag(tmp_path, rps_dir):
  w = tmp_path / "run"
  proc = run_main(w, f"--config.data.dir={rps_dir}", f"--config.weights={tmp_path / 'nope.h5'}",
                  expect_rc=2)
  assert "Traceback" not in proc.stderr
  assert "nope.h5" in proc.stderr and "config.weights=" in proc.stderr
  assert "Also:" not in proc.stderr  # the data folder is fine
  assert not w.exists()  # stopped before even creating the workdir


def test_missing_weights_and_data_say_both_at_once(tmp_path):
  config = _tiny_config(**{"weights": str(tmp_path / "nope.h5"),
                           "data.dir": str(tmp_path / "no-data")})
  msg = _error_of(config, tmp_path / "run")
  assert "nope.h5" in msg and "no-data" in msg and "--config.data.dir" in msg
  assert not (tmp_path / "run").exists()


def test_missing_data_folder_stops_with_the_flag(tmp_path):
  w = tmp_path / "run"
  proc = run_main(w, f"--config.data.dir={tmp_path / 'no-such-folder'}", expect_rc=2)
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith(f"error: data folder {tmp_path / 'no-such-folder'} does not exist: "
                              "fix --config.data.dir"), errors[0]  # the flag that fixes it
  assert not w.exists()  # stopped before the workdir was even created


def _fail(what):
  def raise_offline(*args, **kwargs):
    raise OSError(f"offline: {what} needs the network")
  return raise_offline


def _forbid(what):
  def called(*args, **kwargs):
    pytest.fail(f"{what} ran although data or weights were missing")
  return called


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No network (name lookups fail, as on a machine without one; Keras' downloader fails too),
  an empty Keras cache and TFDS folder, and a tripwire on everything expensive."""
  import socket

  import keras
  import tensorflow_datasets as tfds

  from rpsflax import steps, weights

  def no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline test)")

  monkeypatch.setattr(socket, "getaddrinfo", no_dns)
  # TFDS may also reach GCS through TensorFlow's C++ file system, which ignores Python sockets.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      _fail("tfds download_and_prepare"))
  monkeypatch.setattr(keras.utils, "get_file", _fail("keras.utils.get_file"))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
  monkeypatch.setattr(weights.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
  for name in ("init_variables", "create_train_state", "compile_steps"):
    monkeypatch.setattr(steps, name, _forbid(f"steps.{name}"))
  return tmp_path


def _error_of(config, workdir):
  """The message main would print: the error must be a user error (one line, no traceback)."""
  from rpsflax import train

  with pytest.raises(errors.UserError) as info:
    train.train_and_evaluate(config, workdir)
  return str(info.value)


def _tiny_config(**overrides):
  from rpsflax import config_base

  config = config_base.load_sibling(str(TINY), "rps_tiny").get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_offline_without_imagenet_weights(offline, rps_dir):
  msg = _error_of(_tiny_config(**{"weights": "imagenet", "data.dir": str(rps_dir)}),
                  offline / "run")
  assert "--config.weights=" in msg
  assert not (offline / "run").exists()


def test_offline_without_data(offline):
  tfds_dir = offline / "tfds"
  tfds_dir.mkdir()
  msg = _error_of(_tiny_config(**{"data.dir": "", "data.tfds_data_dir": str(tfds_dir)}),
                  offline / "run")
  assert "--config.data.dir=" in msg
  assert not (offline / "run" / "checkpoints").exists()
