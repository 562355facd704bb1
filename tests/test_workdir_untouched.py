""""A failure never overwrites anything a run already saved" (README, Failure behaviour), on
workdirs that hold a run (issue 16, item 2).

Two workdirs of configs/catsdogs_tiny.py on tiny synthetic data (data_factory): one finished
(2 epochs), one stopped half way (SIGINT inside epoch 1, through tests/reliability_hooks.py). On a
copy of each, the real command runs again with one mistake: a weights file that is not HDF5, a
class whose images are all unreadable, a wrong config value, a missing data folder, a damaged
converted-weights folder. Each must exit 2 with one `error:` line, and afterwards every file in
the workdir is byte for byte what it was (sha256 of the whole tree, names included).
"""

import shutil
import signal
from concurrent import futures

import numpy as np
import pytest

import data_factory
import keras_reference as kr
import test_reliability as rel

REPO = rel.REPO
TINY = REPO / "configs" / "catsdogs_tiny.py"
COMMON = ("--config.data.holdout=4",)  # 32 images: 4 holdout, 21 train (3 steps), 7 validation


def args(workdir, data_dir, *extra):
  return [f"--config={TINY}", f"--workdir={workdir}", f"--config.data.dir={data_dir}", *COMMON,
          *map(str, extra)]


def run(workdir, data_dir, *extra):
  import subprocess
  import sys

  return subprocess.run([sys.executable, "-m", "rpsflax.main", *args(workdir, data_dir, *extra)],
                        cwd=REPO, env=rel._env(), capture_output=True, text=True,
                        timeout=rel.TIMEOUT)


def tiny_config():
  from rpsflax import config_base

  c = config_base.load_sibling(str(TINY), TINY.stem).get_config()
  c.data.holdout = 4
  return c


def damaged_converted_folder(root):
  """A converted folder of the tiny convnet (random arrays) whose array data is then lost."""
  from rpsflax import weights as W

  shapes, layer_map, optional = W.model_target(tiny_config())
  rng = np.random.default_rng(0)
  layers = []
  for name, path in layer_map.items():
    if name in optional:
      continue
    module = shapes
    for p in path:
      module = module[p]
    layers.append((name, [0.05 * rng.standard_normal(module["kernel"].shape).astype(np.float32),
                          np.zeros(module["bias"].shape, np.float32)]))
  h5 = kr.write_legacy_arrays(root / "tiny_cnn.h5", layers)
  variables, manifest = W.convert_keras_file(h5, shapes, layer_map, optional=optional)
  folder = W.save_converted(root / "converted", variables, manifest)
  for f in (folder / "params" / "d").iterdir():
    f.unlink()
  return folder


def finished(root, data_dir):
  workdir = root / "finished"
  rel.expect_ok(run(workdir, data_dir))
  assert (workdir / "eval.json").is_file() and rel.steps_on_disk(workdir)
  return workdir


def half_way(root, data_dir):
  folder = root / "half"
  folder.mkdir()
  workdir = folder / "run"
  parked = rel.Parked(folder, "step:1", args(workdir, data_dir))  # 1 step done of 3 in epoch 1
  parked.wait_parked()
  rc, stderr = rel._signal(parked, signal.SIGINT)
  assert rc == 128 + signal.SIGINT, rel.describe(rc, stderr)
  assert rel.steps_on_disk(workdir) == [2] and not (workdir / "eval.json").exists()
  return workdir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The data, the bad inputs, and the two workdirs (trained once, concurrently)."""
  root = tmp_path_factory.mktemp("untouched")
  data = root / "data"
  data_factory.class_folders(data / "train", {"cat": 16, "dog": 16}, size=(40, 40))
  unreadable = root / "unreadable"
  data_factory.class_folders(unreadable / "train", {"cat": 16}, size=(40, 40))
  for kind in data_factory.BROKEN_KINDS:
    data_factory.write_broken(unreadable / "train" / "dog" / f"dog_{kind}.jpg", kind)
  not_hdf5 = root / "not_hdf5.h5"
  not_hdf5.write_bytes(b"<html><body>404 Not Found</body></html>")
  cases = {
      "weights_not_hdf5": (data, [f"--config.weights={not_hdf5}"], [str(not_hdf5), "HDF5"]),
      "class_all_unreadable": (unreadable, [], [str(unreadable / "train" / "dog"), "unreadable"]),
      "wrong_config_value": (data, ["--config.batch_size=0"], ["config.batch_size=0"]),
      "missing_data_folder": (root / "no-such-folder", [],
                              [f"data folder {root / 'no-such-folder'} does not exist",
                               "--config.data.dir"]),
      # A resumed run never reads config.weights: new weights on a trained workdir are refused
      # (before, the run resumed and config.json recorded weights it never used).
      "other_weights_on_resume": (data, [f"--config.weights={damaged_converted_folder(root)}"],
                                  ["config.weights=", "it was started with", "fresh --workdir"]),
  }
  with futures.ThreadPoolExecutor(2) as pool:
    jobs = [pool.submit(finished, root, data), pool.submit(half_way, root, data)]
    workdirs = dict(zip(("finished", "half_way"), (j.result() for j in jobs), strict=True))
  return root, workdirs, cases


def saved_files(workdir) -> dict:
  """sha256 of every file but WORKDIR/.lock, which records the last run that held the workdir
  (rpsflax/workdir_lock.py): a run that fails after taking it rewrites it, and saved nothing."""
  return {k: v for k, v in rel.file_hashes(workdir).items() if k != ".lock"}


@pytest.fixture(scope="module")
def outcomes(setup):
  """(workdir kind, case) -> (hashes before, hashes after, process); all commands concurrently."""
  root, workdirs, cases = setup

  def one(kind, name):
    data_dir, extra, _ = cases[name]
    workdir = root / "copies" / kind / name / "run"
    shutil.copytree(workdirs[kind], workdir)
    before = saved_files(workdir)
    proc = run(workdir, data_dir, *extra)
    return before, saved_files(workdir), proc

  with futures.ThreadPoolExecutor(3) as pool:
    jobs = {(k, n): pool.submit(one, k, n) for k, n in PAIRS}
    return {key: job.result() for key, job in jobs.items()}


# The preflight cases (not HDF5, wrong value, missing folder) stop before the workdir is read,
# whatever it holds: the finished workdir is enough. An unreadable class is found after the
# workdir is opened: both. (Time: each command is ~10 s of imports on a loaded CPU.)
PAIRS = [("finished", n) for n in ("weights_not_hdf5", "class_all_unreadable",
                                   "wrong_config_value", "missing_data_folder",
                                   "other_weights_on_resume")] + [
    ("half_way", "class_all_unreadable")]


@pytest.mark.parametrize("kind, name", PAIRS)
def test_a_failure_leaves_every_saved_file_byte_for_byte(setup, outcomes, kind, name):
  before, after, proc = outcomes[kind, name]
  assert proc.returncode == 2, rel.describe(proc.returncode, proc.stderr)
  message = rel.assert_one_message(proc.stderr)
  for part in setup[2][name][2]:
    assert part in message, f"{part!r} not in:\n{message}"
  assert len(before) > 5 and "config.json" in before
  changed = sorted(f for f in set(before) | set(after) if before.get(f) != after.get(f))
  assert not changed, f"{kind} workdir changed by a failed run ({name}): {changed}"
