"""Training without TensorFlow (issue 14): the PIL decoder gives the tf.data path's bits.

In-process: rpsflax/pil_decode.py decodes every mode the data factory writes (RGBA, LA, P, I;16,
CMYK, GIF, BMP, ...) exactly as input_pipeline's tf.data decoder, at several sizes. End to end:
the tiny recipes run through `python -m rpsflax.main` twice, once as usual (tf.data) and once
in a subprocess where importing TensorFlow, TFDS, Keras and tensorboardX fails
(tests/no_tensorflow/sitecustomize.py), and the final parameters, history and eval.json must be
equal bit for bit. rps_tiny runs from the decoded cache, catsdogs_tiny uncached (decoded batch by
batch). Every module imports, and the TFDS / Keras-download errors run
blocked too. The TF-free run reuses the tf.data run's compiled programs (a persistent
compilation cache), so the pair costs about one compilation.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import data_factory
from rpsflax import errors, input_pipeline, pil_decode, tf_decode

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKER = REPO / "tests" / "no_tensorflow"
TIMEOUT = 300


def _start(workdir, config, args=(), *, blocked: bool, module="rpsflax.main", jax_cache=None):
  path = [str(BLOCKER)] if blocked else []
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([*path, str(REPO)]), KERAS_HOME=str(workdir) + "_keras")
  if jax_cache:  # the second run reuses the first one's executables (the same programs)
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", module, *([f"--config={config}"] if config else []),
         f"--workdir={workdir}", *map(str, args)]
  return cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)


def run_together(*runs: dict) -> list[str]:
  """Start every run (kwargs of _start, plus expect_rc) at once; their stderr, in order."""
  started = [(r.pop("expect_rc", 0), *_start(**r)) for r in runs]
  out = []
  for rc, cmd, proc in started:
    _, err = proc.communicate(timeout=TIMEOUT)
    if proc.returncode != rc:
      pytest.fail(f"{' '.join(cmd)} exited {proc.returncode} (expected {rc})\n"
                  f"--- stderr\n{err[-6000:]}")
    out.append(err)
  return out


def final_params(workdir) -> dict:
  import orbax.checkpoint as ocp

  latest = pathlib.Path(workdir) / "checkpoints" / "latest"
  step = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(latest / str(step) / "state")
  from flax import traverse_util

  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in traverse_util.flatten_dict(tree["params"]).items()}


def run_facts(workdir) -> dict:
  history = json.loads((pathlib.Path(workdir) / "history.json").read_text())
  rows = history if isinstance(history, list) else history.get("history", history)
  strip = lambda row: {k: v for k, v in row.items() if "second" not in k and "time" not in k}
  ev = json.loads((pathlib.Path(workdir) / "eval.json").read_text())
  ev.pop("timing", None)  # where the run's time went: seconds, not results
  return {"eval": ev,
          "history": [strip(r) for r in rows], "params": final_params(workdir)}


def assert_same_run(a, b):
  assert a["eval"] == b["eval"]
  assert a["history"] == b["history"]
  assert a["params"].keys() == b["params"].keys()
  for k in a["params"]:
    np.testing.assert_array_equal(a["params"][k], b["params"][k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# The decoder itself, in process

@pytest.fixture(scope="module")
def untidy(tmp_path_factory):
  root = tmp_path_factory.mktemp("untidy")
  return data_factory.class_folders(root, {"a": 14, "b": 14}, untidy=True)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (64, 50)], ids=str)
def test_pil_decoder_gives_the_tf_decoders_bits(untidy, size):
  if tf_decode.import_tensorflow() is None:
    pytest.skip("TensorFlow is not installed here: nothing to compare with")
  want, ok, skipped = input_pipeline.load_images(untidy, size, "nearest", decoder="tf")
  assert not skipped and len(ok) == len(untidy)
  got = np.full_like(want, 7)
  assert not pil_decode.decode_files(np.asarray(ok, dtype=object), size, "nearest", -1, got)
  for name, g, w in zip(ok, got, want):
    np.testing.assert_array_equal(g, w, err_msg=name)


def test_nearest_index_is_pils():
  from PIL import Image

  for n_in in [1, 3, 7, 20, 150, 224, 300, 375, 640, 900]:
    src = np.broadcast_to((np.arange(n_in) % 251).astype(np.uint8)[:, None, None], (n_in, 1, 3))
    for n_out in [1, 2, 7, 32, 150, 224, 299]:
      want = np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((1, n_out),
                                                                          Image.NEAREST))
      np.testing.assert_array_equal(data_factory.nearest_gather(src, (n_out, 1)), want,
                                    err_msg=f"{n_in}->{n_out}")


def test_stream_pads_masks_and_names_a_broken_file(tmp_path):
  paths = np.asarray(data_factory.class_folders(tmp_path, {"a": 3, "b": 2}), dtype=object)
  labels = np.asarray([0, 0, 0, 1, 1], np.int32)
  idx = np.asarray([[4, 0, 2], [1, 3, -1]])
  batches = list(pil_decode.stream(paths, labels, idx, (8, 8), "nearest", 2))
  assert [b["label"].tolist() for b in batches] == [[1, 0, 0], [0, 1, 0]]
  assert batches[1]["mask"].tolist() == [True, True, False]
  assert not batches[1]["image"][2].any()
  one = np.zeros((1, 8, 8, 3), np.uint8)
  pil_decode.decode_files(paths[[4]], (8, 8), "nearest", 1, one)
  np.testing.assert_array_equal(batches[0]["image"][0], one[0])
  data_factory.write_broken(paths[3], "zero")
  with pytest.raises(errors.DataError, match=str(paths[3])):
    list(pil_decode.stream(paths, labels, idx, (8, 8), "nearest", 2))


# ---------------------------------------------------------------------------------------------
# End to end: the real command with TensorFlow blocked

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("no_tf_data")
  rps = root / "rps"
  data_factory.class_folders(rps / "train", {"paper": 6, "rock": 6, "scissors": 6}, untidy=True,
                             size=(40, 40))
  cd = root / "catsdogs"
  data_factory.flat_folder(cd / "train", {"cat": 20, "dog": 20}, untidy=True, size=(72, 80))
  return rps, cd


@pytest.mark.parametrize("recipe,extra", [("rps_tiny", ()),
                                          ("catsdogs_tiny", ("--config.data.cache=False",))],
                         ids=["rps_cached_images", "catsdogs_uncached"])
def test_tiny_recipe_without_tensorflow_is_bit_identical(folders, tmp_path, recipe, extra):
  data = folders[0] if recipe.startswith("rps") else folders[1]
  config = REPO / "configs" / f"{recipe}.py"
  args = (f"--config.data.dir={data}", *extra)
  cache = tmp_path / "jax_cache"
  err_tf, = run_together(dict(workdir=tmp_path / "tf", config=config, blocked=False,
                             args=(*args, "--config.data.decoder=tf"), jax_cache=cache))
  assert "decoding images with tf.data" in err_tf
  err, = run_together(dict(workdir=tmp_path / "pil", config=config, blocked=True, args=args,
                           jax_cache=cache))
  assert "decoding images with PIL" in err
  assert "tensorboardX is not installed" in err
  assert_same_run(run_facts(tmp_path / "tf"), run_facts(tmp_path / "pil"))


def test_no_module_imports_tensorflow_at_import_time(tmp_path):
  """Every rpsflax module imports with TensorFlow blocked, and prediction's decoder works."""
  img = data_factory.write_image(tmp_path / "x.png", (20, 30), "RGBA")
  code = ("import pkgutil, importlib, sys, rpsflax\n"
          "for m in pkgutil.walk_packages(rpsflax.__path__, 'rpsflax.'):\n"
          "  importlib.import_module(m.name)\n"
          "from rpsflax import input_pipeline as ip\n"
          f"images, ok, skipped = ip.load_images([{str(img)!r}], (8, 8))\n"
          "assert images.shape == (1, 8, 8, 3) and not skipped\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'keras', 'tensorflow_datasets')))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(BLOCKER), str(REPO)]))
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.strip() == "[]"


def test_tfds_and_keras_download_fail_with_one_clear_message(tmp_path):
  """Without TensorFlow: TFDS data and the Keras ImageNet download are one DataError /
  WeightsError line each (exit 2), naming the way out (a folder; a converted weights folder)."""
  tiny = REPO / "configs" / "rps_tiny.py"
  data = tmp_path / "d"
  data_factory.class_folders(data / "train", {"a": 4, "b": 4})
  tfds, keras = run_together(
      dict(workdir=tmp_path / "tfds", config=tiny, blocked=True, expect_rc=2,
           args=("--config.data.dir=",)),
      dict(workdir=tmp_path / "keras", config=tiny, blocked=True, expect_rc=2,
           args=(f"--config.data.dir={data}", "--config.head.num_classes=2",
                 "--config.weights=imagenet")))
  for err in (tfds, keras):
    assert err.count("error: ") == 1 and "Traceback" not in err, err
  assert "TensorFlow" in tfds and "--config.data.dir=/path/to/folder" in tfds
  assert "Keras (TensorFlow) is needed" in keras
