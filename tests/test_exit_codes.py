"""Exit statuses the README promises, through the real commands (issue 16, item 3):

  - a bug keeps its traceback and exits 1 (a plain ValueError inside training, injected by
    tests/reliability_hooks.py: close kin of the user errors, which are ValueError subclasses);
  - a second SIGINT stops at once: no step, no checkpoint after the first signal's;
  - a file that is not HDF5 is a user's mistake for the converter as for `rpsflax.main`: exit 2
    and one `error:` line naming the file, no traceback.

The runs use tests/reliability_recipe.py (the 48x48 convnet, 5 steps per epoch) and start at once
on three threads: about 40 s on two loaded cores.
"""

import json
import signal
import subprocess
import sys
from concurrent import futures

import pytest

import test_reliability as rel

REPO = rel.REPO
CONVERTER = REPO / "scripts" / "convert_keras_weights.py"
AT_ONCE = 60  # seconds: exiting takes a few; without the stop, the hook holds the step for 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("exit_data")
  for i, cls in enumerate(rel.CLASSES):
    rel.write_class(root / "train" / cls, i, 8)
  return root


def _bug(tmp, data_dir):
  workdir = tmp / "bug" / "run"
  proc = subprocess.run([sys.executable, str(rel.HOOKS), *rel.main_args(workdir, data_dir)],
                        cwd=REPO, env=rel._env(RPSFLAX_HOOK="bug:2"), capture_output=True,
                        text=True, timeout=rel.TIMEOUT)
  return workdir, proc


def _second_signal(tmp, data_dir):
  folder = tmp / "twice"
  folder.mkdir(parents=True)
  workdir = folder / "run"
  epoch1 = workdir / "checkpoints" / "latest" / str(rel.STEPS_PER_EPOCH)
  step = rel.STEPS_PER_EPOCH + 2  # inside epoch 2, epoch 1's checkpoint on disk
  run = rel.Parked(folder, f"twice:{step}", rel.main_args(workdir, data_dir))
  try:
    run.wait_parked(until=epoch1.is_dir)
    run.proc.send_signal(signal.SIGINT)  # first: "finish the step, save, exit 130"
    run.wait_parked(until=lambda: run.marker.read_text() == f"step {step} signalled")
    run.proc.send_signal(signal.SIGINT)  # second, while the step is held: stop now
    try:
      run.proc.wait(timeout=AT_ONCE)
    except subprocess.TimeoutExpired:
      pytest.fail(f"still running {AT_ONCE}s after a second SIGINT: " + run.stderr()[-3000:])
    rc, stderr = run.finish()
  finally:
    if run.proc.poll() is None:
      run.kill()
  return workdir, rc, stderr


def _not_hdf5(tmp, data_dir):
  bad = tmp / "not_hdf5.h5"
  bad.write_bytes(b"<html><body>404 Not Found</body></html>")
  converter = subprocess.run([sys.executable, str(CONVERTER), "--input", str(bad), "--output",
                              str(tmp / "converted")], cwd=REPO, env=rel._env(),
                             capture_output=True, text=True, timeout=rel.TIMEOUT)
  return bad, converter


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
  tmp = tmp_path_factory.mktemp("exit_codes")
  with futures.ThreadPoolExecutor(3) as pool:
    jobs = {name: pool.submit(fn, tmp, data_dir)
            for name, fn in (("twice", _second_signal), ("bug", _bug), ("not_hdf5", _not_hdf5))}
    # Results (and exceptions) are raised in the test that asks for them.
    yield {name: job for name, job in jobs.items()}


def test_a_bug_keeps_its_traceback_and_exits_1(results):
  workdir, proc = results["bug"].result()
  assert proc.returncode == 1, rel.describe(proc.returncode, proc.stderr)
  assert "Traceback (most recent call last)" in proc.stderr, proc.stderr[-3000:]
  assert "ValueError: reliability_hooks: injected bug at step 2" in proc.stderr
  assert not [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_a_second_signal_stops_at_once(results):
  workdir, rc, stderr = results["twice"].result()
  assert rc == 128 + signal.SIGINT, rel.describe(rc, stderr)
  message = rel.assert_one_message(stderr, "interrupted: ")
  assert "checkpoints already in" in message and "are kept" in message, message
  assert "saved a checkpoint" not in stderr  # the first signal's save never happened
  # Nothing after epoch 1: no step-8 checkpoint, no epoch 2 in the history.
  assert rel.steps_on_disk(workdir) == [rel.STEPS_PER_EPOCH], rel.steps_on_disk(workdir)
  history = json.loads((workdir / "history.json").read_text())
  assert [row["epoch"] for row in history] == [1], history


def test_not_hdf5_is_a_user_mistake_for_the_converter_too(results):
  """As for `rpsflax.main` on the same file (tests/test_reliability.py `weights_not_hdf5` and
  tests/test_workdir_untouched.py: exit 2, one message naming the file and HDF5)."""
  bad, converter = results["not_hdf5"].result()
  assert converter.returncode == 2, rel.describe(converter.returncode, converter.stderr)
  message = rel.assert_one_message(converter.stderr)
  assert str(bad) in message and "HDF5" in message, message
