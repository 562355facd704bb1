"""Reliability (issue 6): what a user sees when data, weights, config, the process or the numbers
go wrong, and that nothing a run already saved is lost.

Everything runs the real command, `python -m rpsflax.main`, with tests/reliability_recipe.py (the
cats-vs-dogs convnet at 48x48, frozen backbone, 3 classes, 5 steps per epoch, 2 epochs): exit
codes, messages and surviving a kill are properties of the process. A run that must be stopped at
an exact moment goes through tests/reliability_hooks.py, which parks the very same command there
(no sleeps, no timing races). Final parameters are compared bit for bit (CPU) with an
uninterrupted run of the same command. The independent command sequences run concurrently (see
`Runs`): about 160 s of CPU in all, so about 90 s on two idle cores.

Covered at unit level elsewhere, and not repeated here:
  tests/test_data_files.py      every DataError message, the reason of each unreadable file
  tests/test_weights.py         not HDF5, truncated, missing/unexpected layers, wrong shapes,
                                unfinished or damaged converted folders; .keras files are opened
                                with safe_mode (test_keras_file_opened_with_safe_mode)
  tests/test_config_check.py    every impossible value
  tests/test_checkpoint.py      an Orbax temporary folder is ignored and cleaned up
  tests/test_train.py           in-process SIGTERM, resume, NaN flag of the step
  tests/test_e2e_rps.py         missing data folder / weights file through the command
"""

import hashlib
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent import futures

import numpy as np
import pytest
from PIL import Image

import commands
import data_factory
import keras_reference as kr

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests" / "reliability_recipe.py"
HOOKS = REPO / "tests" / "reliability_hooks.py"
CLASSES = ("paper", "rock", "scissors")
STEPS_PER_EPOCH = 5  # 18 training images, batch 4
TIMEOUT = 300
BROKEN = {"paper_truncated.jpg": "truncated", "paper_zero.jpg": "zero", "paper_text.jpg": "text"}


# ---------------------------------------------------------------------------------------------
# Helpers: data, commands, checkpoints

def write_class(folder: pathlib.Path, index: int, n: int, seed: int = 0) -> None:
  """n noisy images of one colour per class (learnable), 40x40 (resized to 48)."""
  rng = np.random.RandomState(seed + 10 * index)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    img = np.full((40, 40, 3), 40, np.int32)
    img[..., index % 3] = 200
    img = np.clip(img + rng.randint(-30, 30, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(folder / f"{folder.name}_{i}.png")


_env = commands.cli_env


def main_args(workdir, data_dir, *extra) -> list[str]:
  return [f"--config={RECIPE}", f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          *map(str, extra)]


def run_main(workdir, data_dir, *extra) -> subprocess.CompletedProcess:
  args = main_args(workdir, data_dir, *extra)
  return subprocess.run([sys.executable, "-m", "rpsflax.main", *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT)


def describe(rc, stderr: str) -> str:
  return f"exit status {rc}\n--- stderr (tail)\n{stderr[-5000:]}"


def expect_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert proc.returncode == 0, describe(proc.returncode, proc.stderr)
  return proc


class Parked:
  """The command under tests/reliability_hooks.py, parked at RPSFLAX_HOOK (see there)."""

  def __init__(self, tmp: pathlib.Path, hook: str, args: list[str]):
    tag = re.sub(r"\W", "_", hook)
    self.marker = tmp / f"parked_{tag}"
    self.stderr_path = tmp / f"stderr_{tag}.txt"
    self._stderr = open(self.stderr_path, "w")
    self.proc = subprocess.Popen(
        [sys.executable, str(HOOKS), *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=self._stderr, env=_env(RPSFLAX_HOOK=hook, RPSFLAX_HOOK_MARKER=str(self.marker)))

  def stderr(self) -> str:
    self._stderr.flush()
    return self.stderr_path.read_text()

  def wait_parked(self, until=lambda: True) -> None:
    """Until the process is parked and `until()` holds (e.g. a checkpoint is on disk)."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
      if self.marker.exists() and until():
        return
      if self.proc.poll() is not None:
        pytest.fail("the run ended before reaching the hook: " + describe(self.proc.returncode,
                                                                          self.stderr()))
      time.sleep(0.05)
    self.kill()
    pytest.fail("the run never reached the hook: " + self.stderr()[-5000:])

  def finish(self) -> tuple[int, str]:
    rc = self.proc.wait(timeout=TIMEOUT)
    self._stderr.close()
    return rc, self.stderr_path.read_text()

  def kill(self) -> int:
    self.proc.kill()  # SIGKILL: no handler, no cleanup, no flush
    rc, _ = self.finish()
    return rc


def recipe():
  from rpsflax import config_base

  return config_base.load_sibling(str(RECIPE), RECIPE.stem).get_config()


def steps_on_disk(workdir, which="latest") -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints" / which
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def restore(workdir, which="latest", step=None):
  """(params as NumPy, meta) of a checkpoint, restored in this process."""
  import jax

  from rpsflax import checkpoint, models, steps

  config = recipe()
  target = steps.abstract_train_state(config, models.build_model(config))
  with checkpoint.Checkpoints(workdir) as ckpts:
    state, meta = ckpts.restore(target, which=which, step=step)
  return jax.device_get(state), meta


def assert_same_run(workdir, straight_workdir, epochs: int = 2) -> None:
  """Final TrainState (params, optimizer state, step) bit-identical; same history and eval."""
  import jax

  mine, meta = restore(workdir)
  ref, ref_meta = restore(straight_workdir)
  assert meta["step"] == ref_meta["step"] == epochs * STEPS_PER_EPOCH
  leaves, ref_leaves = jax.tree.leaves(mine), jax.tree.leaves(ref)
  assert len(leaves) == len(ref_leaves) > 0
  for a, b in zip(leaves, ref_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  no_seconds = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
  history = json.loads((workdir / "history.json").read_text())
  ref_history = json.loads((straight_workdir / "history.json").read_text())
  assert len(history) == epochs
  assert no_seconds(history) == no_seconds(ref_history) == no_seconds(meta["history"])
  ev, ref_ev = (json.loads((w / "eval.json").read_text()) for w in (workdir, straight_workdir))
  assert (ev["accuracy"], ev["loss"]) == (ref_ev["accuracy"], ref_ev["loss"])


def resumed_from(stderr: str) -> int:
  m = re.search(r"Resuming .* from step (\d+)", stderr)
  assert m, "the run did not resume:\n" + stderr[-3000:]
  return int(m.group(1))


def file_hashes(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_message(stderr: str, prefix: str = "error: ") -> str:
  """No traceback, exactly one message line of ours; returns the message (to the end)."""
  assert "Traceback" not in stderr, stderr[-5000:]
  lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
  assert len(lines) == 1, stderr[-5000:]
  return stderr[stderr.index(lines[0]):]



# ---------------------------------------------------------------------------------------------
# The commands. Each sequence below is independent of the others (its own workdir), so they all
# start at once on a few threads when the first test asks (`runs`): on two cores that halves the
# file's wall time. Process-level checks (exit status, messages, files left) happen inside a
# sequence, in order; `runs.result(name)` re-raises whatever failed there in the test that asks.

class Runs:
  def __init__(self, root: pathlib.Path, data_dir: pathlib.Path, workers: int = 3):
    self.root, self.data_dir = root, data_dir
    self._pool = futures.ThreadPoolExecutor(workers)
    self._futures = {}

  def start(self, name: str, fn, *args) -> None:
    self._futures[name] = self._pool.submit(fn, self, *args)

  def result(self, name: str):
    return self._futures[name].result(timeout=15 * 60)

  def tmp(self, name: str) -> pathlib.Path:
    folder = self.root / re.sub(r"\W", "_", name)
    folder.mkdir()
    return folder

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)


def straight_run(runs) -> tuple[pathlib.Path, str]:
  """The uninterrupted run every interrupted one must equal."""
  workdir = runs.tmp("straight") / "run"
  proc = expect_ok(run_main(workdir, runs.data_dir))
  assert steps_on_disk(workdir) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
  return workdir, proc.stderr


def sigkill_mid_epoch(runs) -> pathlib.Path:
  tmp = runs.tmp("sigkill")
  workdir = tmp / "run"
  args = main_args(workdir, runs.data_dir)
  epoch1 = workdir / "checkpoints" / "latest" / str(STEPS_PER_EPOCH)
  run = Parked(tmp, f"step:{STEPS_PER_EPOCH + 2}", args)  # 7 steps done: inside epoch 2
  try:
    run.wait_parked(until=epoch1.is_dir)                   # and epoch 1's checkpoint committed
  finally:
    assert run.kill() == -signal.SIGKILL
  assert steps_on_disk(workdir) == [STEPS_PER_EPOCH]  # nothing of epoch 2 was saved
  proc = expect_ok(run_main(workdir, runs.data_dir))  # the same command again
  assert resumed_from(proc.stderr) == STEPS_PER_EPOCH
  return workdir


def _signal(run: Parked, sig) -> tuple[int, str]:
  try:
    run.proc.send_signal(sig)
    return run.finish()
  finally:
    if run.proc.poll() is None:
      run.kill()


def sigint_then_sigterm(runs) -> pathlib.Path:
  tmp = runs.tmp("signals")
  workdir = tmp / "run"
  args = main_args(workdir, runs.data_dir)
  # SIGINT in epoch 1: the step under way finishes, a checkpoint of step 3 is saved, exit 130.
  run = Parked(tmp, "step:2", args)
  run.wait_parked()
  rc, stderr = _signal(run, signal.SIGINT)
  assert rc == 128 + signal.SIGINT, describe(rc, stderr)
  message = assert_one_message(stderr, "interrupted: ")
  assert "SIGINT at step 3" in message and "same command" in message, message
  assert steps_on_disk(workdir) == [3]
  # The same command resumes at step 3; SIGTERM in epoch 2 saves step 8, exit 143.
  epoch1 = workdir / "checkpoints" / "latest" / str(STEPS_PER_EPOCH)
  run = Parked(tmp, f"step:{STEPS_PER_EPOCH + 2}", args)
  run.wait_parked(until=epoch1.is_dir)
  rc, stderr = _signal(run, signal.SIGTERM)
  assert rc == 128 + signal.SIGTERM, describe(rc, stderr)
  assert resumed_from(stderr) == 3
  message = assert_one_message(stderr, "interrupted: ")
  assert "SIGTERM at step 8" in message, message
  assert steps_on_disk(workdir) == [STEPS_PER_EPOCH, 8]
  # And once more: it finishes (compared with the straight run by the test).
  proc = expect_ok(run_main(workdir, runs.data_dir))
  assert resumed_from(proc.stderr) == 8
  return workdir


def sigkill_mid_commit(runs) -> pathlib.Path:
  tmp = runs.tmp("commit")
  workdir = tmp / "run"
  latest = workdir / "checkpoints" / "latest"
  last = 2 * STEPS_PER_EPOCH
  run = Parked(tmp, f"commit:latest/{last}", main_args(workdir, runs.data_dir))
  try:
    run.wait_parked()  # epoch 2's checkpoint is written into its temporary folder, not renamed
  finally:
    assert run.kill() == -signal.SIGKILL
  unfinished = [p for p in latest.iterdir() if p.name.startswith(f"{last}.")]
  assert len(unfinished) == 1 and "tmp" in unfinished[0].name, list(latest.iterdir())
  assert any(f.is_file() and f.stat().st_size for f in unfinished[0].rglob("*"))  # half there
  assert steps_on_disk(workdir) == [STEPS_PER_EPOCH]
  # The next start ignores the unfinished write, resumes from epoch 1's checkpoint, cleans up.
  proc = expect_ok(run_main(workdir, runs.data_dir))
  assert resumed_from(proc.stderr) == STEPS_PER_EPOCH
  assert not unfinished[0].exists()
  return workdir


def nonfinite(runs) -> tuple[pathlib.Path, dict, bytes, subprocess.CompletedProcess]:
  """A third epoch of the straight run with an absurd learning rate: the parameters overflow
  within a step or two of epoch 3."""
  workdir = runs.tmp("nonfinite") / "run"
  shutil.copytree(runs.result("straight")[0], workdir)  # latest (steps 5, 10) and best
  before = file_hashes(workdir / "checkpoints")
  history = (workdir / "history.json").read_bytes()
  proc = run_main(workdir, runs.data_dir, "--config.num_epochs=3",
                  "--config.optim.learning_rate=1e38")
  return workdir, before, history, proc


def command(runs, args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "rpsflax.main", *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT)


# Commands that must stop at start: bad data, weights, config (name -> expected message parts).

def _cnn_weight_layers(wrong: str = ""):
  """[(keras layer, [kernel, bias])] for the recipe's convnet; `wrong` gets half its filters."""
  from rpsflax import weights as W

  shapes, layer_map, optional = W.model_target(recipe())
  rng = np.random.default_rng(0)
  layers, expected = [], {}
  for name, path in layer_map.items():
    if name in optional:
      continue
    module = shapes
    for p in path:
      module = module[p]
    k, b = tuple(module["kernel"].shape), tuple(module["bias"].shape)
    expected[name] = (k, b)
    if name == wrong:
      k, b = k[:-1] + (k[-1] // 2,), (b[0] // 2,)
    layers.append((name, [0.1 * rng.standard_normal(k).astype(np.float32),
                          np.zeros(b, np.float32)]))
  return layers, expected, (shapes, layer_map, optional)


def _converted_folder(root: pathlib.Path, name: str) -> pathlib.Path:
  from rpsflax import weights as W

  layers, _, (shapes, layer_map, optional) = _cnn_weight_layers()
  h5 = kr.write_legacy_arrays(root / f"{name}.h5", layers)
  variables, manifest = W.convert_keras_file(h5, shapes, layer_map, optional=optional)
  return W.save_converted(root / name, variables, manifest)


def refused_cases(root: pathlib.Path, data_dir: pathlib.Path) -> dict:
  """name -> (workdir, expected message parts, command arguments); writes the bad inputs."""
  cases = {}

  def case(name, expected, *extra, data=data_dir):
    workdir = root / name / "run"
    cases[name] = (workdir, [str(e) for e in expected], main_args(workdir, data, *extra))

  # Data.
  d = root / "no_readable_image"
  for name, kind in BROKEN.items():
    data_factory.write_broken(d / "train" / "paper" / name, kind)
  write_class(d / "train" / "rock", 1, 4)
  write_class(d / "train" / "scissors", 2, 4)
  case("data_class_without_readable_image", [d / "train" / "paper", "unreadable"], data=d)
  d = root / "validation_differs"
  for i, cls in enumerate(CLASSES):
    write_class(d / "train" / cls, i, 4)
  for i, cls in enumerate(("paper", "rock", "lizard")):
    write_class(d / "validation" / cls, i, 2)
  case("data_validation_classes_differ", [d / "validation", "lizard"], data=d)
  d = root / "empty"
  d.mkdir()
  case("data_empty_folder", [d, "no image files"], data=d)

  # Weights.
  w = root / "not_hdf5.h5"
  w.write_bytes(b"<html><body>404 Not Found</body></html>")
  case("weights_not_hdf5", [w, "HDF5"], f"--config.weights={w}")
  layers, expected, _ = _cnn_weight_layers(wrong="conv2d_1")
  w = kr.write_legacy_arrays(root / "wrong_shapes.h5", layers)
  kernel, bias = expected["conv2d_1"]
  case("weights_wrong_shapes", [w, "'conv2d_1'", f"kernel {kernel}, bias {bias}",
                                f"found {kernel[:-1] + (kernel[-1] // 2,)}, {(bias[0] // 2,)}"],
       f"--config.weights={w}")
  w = _converted_folder(root, "unfinished")
  (w / "manifest.json").unlink()  # the manifest is written last: a conversion killed midway
  case("weights_unfinished_conversion", [w, "convert again"], f"--config.weights={w}")
  w = _converted_folder(root, "damaged")
  for f in (w / "params" / "d").iterdir():  # array data lost, manifest intact
    f.unlink()
  case("weights_damaged_conversion", [w, "incomplete or damaged"], f"--config.weights={w}")

  # Config.
  case("config_unknown_key", ["--config.optim.learning_rat: unknown key",
                              "did you mean config.optim.learning_rate?"],
       "--config.optim.learning_rat=0.1")
  case("config_unknown_group", ["config.optimm: unknown key", "did you mean config.optim?"],
       "--config.optimm.learning_rate=0.1")
  case("config_wrong_type", ["config.batch_size=abc"], "--config.batch_size=abc")
  case("config_wrong_element_type", ["config.head.hidden="], "--config.head.hidden=abc")
  case("config_batch_size_0", ["config.batch_size=0"], "--config.batch_size=0")
  case("config_negative_learning_rate", ["config.optim.learning_rate=-0.1"],
       "--config.optim.learning_rate=-0.1")
  case("config_infinite_learning_rate", ["config.optim.learning_rate=inf"],
       "--config.optim.learning_rate=inf")
  case("config_image_too_small", ["config.data.image_size=40", "46"],
       "--config.data.image_size=40")
  return cases


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  """DIR/train/<class>/ with 8 images each, and three unreadable files among the papers."""
  root = tmp_path_factory.mktemp("data")
  for i, cls in enumerate(CLASSES):
    write_class(root / "train" / cls, i, 8)
  for name, kind in BROKEN.items():
    data_factory.write_broken(root / "train" / "paper" / name, kind)
  return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  runs = Runs(tmp_path_factory.mktemp("runs"), data_dir)
  cases = refused_cases(runs.tmp("refused"), data_dir)
  runs.cases = cases
  runs.start("straight", straight_run)  # first: the nonfinite sequence waits for it
  runs.start("signals", sigint_then_sigterm)
  runs.start("sigkill", sigkill_mid_epoch)
  runs.start("commit", sigkill_mid_commit)
  for name, (_, _, args) in cases.items():
    runs.start(name, command, args)
  runs.start("nonfinite", nonfinite)
  yield runs
  runs.close()


# ---------------------------------------------------------------------------------------------
# 1. Bad data

def test_unreadable_files_are_skipped_listed_and_training_goes_on(runs, data_dir):
  workdir, stderr = runs.result("straight")
  report = json.loads((workdir / "data_report.json").read_text())
  reasons = {pathlib.Path(s["path"]).name: s["reason"] for s in report["skipped"]}
  assert set(reasons) == set(BROKEN) and report["num_skipped"] == 3
  assert "0 bytes" in reasons["paper_zero.jpg"]
  assert "not an image" in reasons["paper_text.jpg"]
  assert "decode" in reasons["paper_truncated.jpg"].lower()
  assert report["num_examples"] == {"train": 18, "validation": 6}  # all 24 readable images
  assert "skipped 3 unreadable files" in stderr  # counted in the log, each listed with its reason
  for name in BROKEN:
    assert f"{data_dir / 'train' / 'paper' / name}: {reasons[name]}" in stderr
  history = json.loads((workdir / "history.json").read_text())
  assert [row["epoch"] for row in history] == [1, 2]


def _check_refused(runs, name, *, workdir_created: bool) -> str:
  workdir, expected, _ = runs.cases[name]
  proc = runs.result(name)
  assert proc.returncode == 2, describe(proc.returncode, proc.stderr)
  message = assert_one_message(proc.stderr)
  for part in expected:
    assert part in message, f"{part!r} not in the message:\n{message}"
  # Stopped before training: no checkpoint, no history; preflight errors even before the workdir.
  assert not steps_on_disk(workdir) and not (workdir / "history.json").exists()
  if not workdir_created:
    assert not workdir.exists()
  return message


@pytest.mark.parametrize("name, workdir_created", [
    ("data_class_without_readable_image", True),  # found when the images are read: config.json only
    ("data_validation_classes_differ", False),    # the listing alone tells: before the workdir
    ("data_empty_folder", False),
])
def test_bad_data_stops_before_training_naming_the_path(runs, name, workdir_created):
  _check_refused(runs, name, workdir_created=workdir_created)


@pytest.mark.parametrize("name, workdir_created", [
    ("weights_not_hdf5", False),           # resolved before anything else
    ("weights_wrong_shapes", True),        # shapes are checked against the model, after the data
    ("weights_unfinished_conversion", False),
    ("weights_damaged_conversion", True),  # refused whole: never half-loaded
])
def test_bad_weights_stop_naming_file_layer_and_shapes(runs, name, workdir_created):
  _check_refused(runs, name, workdir_created=workdir_created)


@pytest.mark.parametrize("name", [
    "config_unknown_key", "config_unknown_group", "config_wrong_type",
    "config_wrong_element_type", "config_batch_size_0", "config_negative_learning_rate",
    "config_infinite_learning_rate", "config_image_too_small"])
def test_bad_config_fails_at_start_naming_the_key(runs, name):
  message = _check_refused(runs, name, workdir_created=False)  # checked before any work
  assert len(message.strip().splitlines()) <= 4, message  # one problem: one line (+ the hint)


def test_unknown_key_names_the_closest_one():
  from rpsflax import config_check

  assert config_check.unknown_key("optim.learning_rate") is None
  assert config_check.unknown_key("data.image_sise") == (
      "config.data.image_sise: unknown key (did you mean config.data.image_size?)")
  assert "not a group" in config_check.unknown_key("seed.x")


# ---------------------------------------------------------------------------------------------
# 4-5. Killed runs, signals, interrupted checkpoint writes: the same command resumes and ends
# bit-identical to the uninterrupted run.

def test_sigkill_mid_epoch_resumes_bit_identically(runs):
  assert_same_run(runs.result("sigkill"), runs.result("straight")[0])


def test_sigint_then_sigterm_save_a_checkpoint_and_the_rerun_finishes_identically(runs):
  assert_same_run(runs.result("signals"), runs.result("straight")[0])


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(runs):
  assert_same_run(runs.result("commit"), runs.result("straight")[0])


# ---------------------------------------------------------------------------------------------
# 6. NaN/inf

def test_nonfinite_loss_stops_with_the_step_and_keeps_the_checkpoints(runs):
  workdir, before, history, proc = runs.result("nonfinite")
  assert proc.returncode == 3, describe(proc.returncode, proc.stderr)
  message = assert_one_message(proc.stderr)
  m = re.search(r"NaN/inf at step (\d+)", message)
  assert m and 2 * STEPS_PER_EPOCH < int(m.group(1)) <= 3 * STEPS_PER_EPOCH, message  # epoch 3
  assert "kept" in message and "learning_rate" in message
  assert file_hashes(workdir / "checkpoints") == before  # latest and best: byte for byte
  assert steps_on_disk(workdir, "best")
  assert (workdir / "history.json").read_bytes() == history


# ---------------------------------------------------------------------------------------------
# 7. Safe loading: nothing is unpickled from a user's file

def test_no_pickle_anywhere_in_the_package():
  """.keras files go through safe_mode (tests/test_weights.py::
  test_keras_file_opened_with_safe_mode); no code path may unpickle: no pickle/dill/joblib/
  torch.load, no np.load(allow_pickle=True), no safe_mode=False."""
  pattern = re.compile(r"\bimport (c?pickle|dill|joblib|shelve)\b|\bfrom (c?pickle|dill|joblib)\b"
                       r"|allow_pickle\s*=\s*True|torch\.load|read_pickle|safe_mode\s*=\s*False")
  offenders = []
  for folder in ("rpsflax", "scripts"):
    for path in sorted((REPO / folder).rglob("*.py")):
      for i, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.search(line):
          offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
  assert not offenders, "\n".join(offenders)
  assert "safe_mode=True" in (REPO / "rpsflax" / "weights" / "keras_files.py").read_text()


def test_closed_event_loop_reports_are_dropped_and_other_ones_kept(monkeypatch):
  """A failed Orbax restore (damaged weights folder) leaves reads in flight that each report
  'Event loop is closed' as an unraisable exception: the commands drop exactly those."""
  import gc

  from rpsflax import cli

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  cli.setup_logging()
  cli.setup_logging()  # idempotent: one filter

  class Raises:
    def __init__(self, error):
      self.error = error

    def __del__(self):
      raise self.error

  Raises(RuntimeError("Event loop is closed"))
  Raises(RuntimeError("a real problem"))
  gc.collect()
  assert seen == ["a real problem"]
