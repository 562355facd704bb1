"""Reliability, round two (issue 13): one run per workdir, damaged checkpoints, hostile images,
a full disk, atomic reports. Every case runs the real command, `python -m rpsflax.main` (or
`rpsflax.predict`), on tests/reliability_recipe.py (48x48 convnet, 5 steps per epoch, 2 epochs),
through tests/reliability_hooks.py where a fault must land at an exact moment.

The command sequences are independent (own workdirs) and start together on three threads when
the first test asks (`runs`), as in tests/test_reliability.py. The soak (SIGKILL at five seeded
moments, then bit-identical to an unbroken run) is marked slow.
"""

import errno
import gc
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures

import numpy as np
import pytest
from PIL import Image

import data_factory
import test_reliability as rel

REPO = rel.REPO
STEPS = rel.STEPS_PER_EPOCH
TIMEOUT = rel.TIMEOUT
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Helpers

def run_hooked(hook: str, args) -> subprocess.CompletedProcess:
  """The command under tests/reliability_hooks.py with RPSFLAX_HOOK=hook."""
  return subprocess.run([sys.executable, str(rel.HOOKS), *map(str, args)], cwd=REPO,
                        env=rel._env(RPSFLAX_HOOK=hook), capture_output=True, text=True,
                        timeout=TIMEOUT)


def run_measured(hook: str, args, folder: pathlib.Path) -> tuple[int, str, int]:
  """(exit status, stderr, peak resident memory in bytes) of the hooked command; the peak is
  that program's own (VmHWM at exit, see reliability_hooks.report_peak_memory)."""
  err_path, peak_path = folder / "stderr.txt", folder / "peak_bytes.txt"
  with open(os.devnull, "w") as devnull, open(err_path, "w") as err:
    proc = subprocess.Popen([sys.executable, str(rel.HOOKS), *map(str, args)], cwd=REPO,
                            env=rel._env(RPSFLAX_HOOK=hook, RPSFLAX_PEAK_FILE=str(peak_path)),
                            stdout=devnull, stderr=err)
    deadline = time.time() + TIMEOUT
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if time.time() > deadline:
        proc.kill()
        pytest.fail("the command did not end")
      time.sleep(0.1)
  proc.returncode = os.waitstatus_to_exitcode(status)
  return proc.returncode, err_path.read_text(), int(peak_path.read_text())


def hashes(workdir, skip=()) -> dict:
  return {k: v for k, v in rel.file_hashes(workdir).items()
          if not any(k == s or k.startswith(s + "/") for s in skip)}


def biggest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def damage(step_dir: pathlib.Path, how: str) -> None:
  if how == "truncate":  # a copy that stopped half way
    f = biggest_array_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  elif how == "flip":  # bit rot: same size, a few bytes changed
    f = biggest_array_file(step_dir)
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
      data[i] ^= 0x5A
    f.write_bytes(bytes(data))
  elif how == "metadata":  # the checkpoint's metadata (epoch, step, history) lost
    (step_dir / "meta" / "metadata").unlink()
  else:
    raise ValueError(how)


def copy_of(runs, name: str) -> pathlib.Path:
  workdir = runs.tmp(name) / "run"
  shutil.copytree(runs.result("straight")[0], workdir)
  return workdir


# ---------------------------------------------------------------------------------------------
# 1. One run per workdir

def second_run_on_a_live_workdir(runs) -> dict:
  tmp = runs.tmp("lock")
  workdir = tmp / "run"
  args = rel.main_args(workdir, runs.data_dir)
  live = rel.Parked(tmp, f"step:{STEPS + 2}", args)  # inside epoch 2, epoch 1 committed
  out = {"pid": live.proc.pid}

  def epoch1_committed():  # both of epoch 1's checkpoints (saved asynchronously) and its report
    return (all(STEPS in rel.steps_on_disk(workdir, which) for which in ("latest", "best"))
            and (workdir / "history.json").exists())
  try:
    live.wait_parked(until=epoch1_committed)
    # The live run's own TensorBoard writer flushes on a timer: its events file may grow.
    before = hashes(workdir, skip=("tensorboard",))
    t0 = time.time()
    out["second"] = rel.run_main(workdir, runs.data_dir)  # the same command, started again
    out["second_seconds"] = time.time() - t0
    out["untouched"] = hashes(workdir, skip=("tensorboard",)) == before
    # Reading while it trains: --mode=evaluate takes no lock and writes under eval/ only.
    out["evaluate"] = rel.command(runs, ["--mode=evaluate", f"--workdir={workdir}"])
    after = hashes(workdir, skip=("eval", "tensorboard"))
    out["changed_by_evaluate"] = sorted(k for k in set(before) | set(after)
                                        if before.get(k) != after.get(k))
  finally:
    out["killed"] = live.kill()  # SIGKILL: the kernel drops the lock with the process
  out["after_kill"] = rel.run_main(workdir, runs.data_dir)
  out["workdir"] = workdir
  return out


# ---------------------------------------------------------------------------------------------
# 2. Damaged checkpoints

def resume_past_damage(runs, how: str) -> dict:
  workdir = copy_of(runs, f"damaged_{how}")
  damage(workdir / "checkpoints" / "latest" / str(2 * STEPS), how)
  proc = rel.run_main(workdir, runs.data_dir)
  return {"workdir": workdir, "proc": proc}


def nothing_restorable(runs) -> dict:
  workdir = copy_of(runs, "damaged_all")
  for step in (STEPS, 2 * STEPS):
    damage(workdir / "checkpoints" / "latest" / str(step), "truncate")
  before = rel.file_hashes(workdir / "checkpoints")
  proc = rel.run_main(workdir, runs.data_dir)
  return {"workdir": workdir, "proc": proc,
          "untouched": rel.file_hashes(workdir / "checkpoints") == before}


def damaged_best(runs) -> dict:
  workdir = copy_of(runs, "damaged_best")
  (step,) = rel.steps_on_disk(workdir, "best")
  best = workdir / "checkpoints" / "best" / str(step)
  damage(best, "truncate")
  before = rel.file_hashes(workdir)
  image = runs.data_dir / "train" / "rock" / "rock_0.png"
  evaluate = rel.command(runs, ["--mode=evaluate", f"--workdir={workdir}"])
  predict = subprocess.run([sys.executable, "-m", "rpsflax.predict", f"--workdir={workdir}",
                            str(image)], cwd=REPO, env=rel._env(), capture_output=True,
                           text=True, timeout=TIMEOUT)
  return {"path": best, "evaluate": evaluate, "predict": predict,
          "untouched": hashes(workdir, skip=("eval",)) == before}


# ---------------------------------------------------------------------------------------------
# 4. A full disk

def full_disk(runs) -> dict:
  workdir = runs.tmp("enospc") / "run"
  args = rel.main_args(workdir, runs.data_dir)
  proc = run_hooked(f"enospc:latest/{2 * STEPS}", args)
  out = {"workdir": workdir, "proc": proc, "steps": rel.steps_on_disk(workdir),
         "history": (workdir / "history.json").read_text(),
         "eval_written": (workdir / "eval.json").exists()}
  out["again"] = rel.run_main(workdir, runs.data_dir)  # space freed: the same command
  return out


# The same on a real full disk: an 8 MB tmpfs, mounted in a user namespace (no root needed), is
# filled inside epoch 2 (once epoch 1's checkpoints are on disk) until 32 KiB are left, half of
# one checkpoint of the head: neither checkpoint of epoch 2 (best/10, latest/10) can be written.
# The filler is deleted, and the command run again. (A fixed tmpfs size instead held on one
# machine and not on CI, where orbax wrote a few 4 KiB chunks fewer.)
TMPFS_SCRIPT = """
set -u
MNT=$1; OUT=$2; HOOKS=$3; PY=$4; shift 4
mount -t tmpfs -o size=8m tmpfs "$MNT" || exit 90
RPSFLAX_HOOK="fill:$((STEPS + 1)):$MNT/filler:32" "$PY" "$HOOKS" "$@" --workdir="$MNT/run" \\
  > /dev/null 2> "$OUT/first.err"
echo $? > "$OUT/first.rc"
cp -a "$MNT/run" "$OUT/after_first"
rm "$MNT/filler" || exit 91
"$PY" -m rpsflax.main "$@" --workdir="$MNT/run" > /dev/null 2> "$OUT/second.err"
echo $? > "$OUT/second.rc"
cp -a "$MNT/run" "$OUT/final"
"""


def can_mount_tmpfs() -> bool:
  try:
    return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def real_full_disk(runs) -> dict:
  if not can_mount_tmpfs():
    return {}
  tmp = runs.tmp("tmpfs")
  (tmp / "mnt").mkdir()
  (tmp / "out").mkdir()
  script = tmp / "inner.sh"
  script.write_text(TMPFS_SCRIPT)
  proc = subprocess.run(["unshare", "-Urm", "sh", str(script), str(tmp / "mnt"), str(tmp / "out"),
                         str(rel.HOOKS), sys.executable, f"--config={rel.RECIPE}",
                         f"--config.data.dir={runs.data_dir}"],
                        cwd=REPO, env=rel._env(STEPS=str(STEPS)), capture_output=True,
                        text=True, timeout=2 * TIMEOUT)
  out = tmp / "out"
  read = lambda name: (out / name).read_text() if (out / name).exists() else ""
  return {"proc": proc, "first_rc": read("first.rc").strip(), "first": read("first.err"),
          "second_rc": read("second.rc").strip(), "second": read("second.err"),
          "after_first": out / "after_first", "final": out / "final"}


# ---------------------------------------------------------------------------------------------
# 3. Hostile images

HOSTILE = {  # file under train/paper -> what its reason must say
    "bomb.png": "max_image_pixels",
    "big.png": "declares 1100x1000 pixels, over config.data.max_image_pixels=1000000",
    "lying.png": "cannot decode",
    "loop_a.png": "Too many levels of symbolic links",
    "loop_b.png": "Too many levels of symbolic links",
    "notes.png": "not an image",
}
MAX_PIXELS = 1_000_000
ODD_NAMES = ("rock with spaces.png", "rock_été_石.png")


def hostile_folder(root: pathlib.Path) -> pathlib.Path:
  for i, cls in enumerate(rel.CLASSES):
    rel.write_class(root / "train" / cls, i, 8)
  paper = root / "train" / "paper"
  data_factory.png_bomb(paper / "bomb.png", 40000, 40000)   # 1.5 MB, 1.6 G pixels
  data_factory.write_image(paper / "big.png", (1000, 1100))  # real, over the configured limit
  data_factory.lying_png(paper / "lying.png", declared=(64, 64), actual=(32, 32))
  os.symlink("loop_b.png", paper / "loop_a.png")
  os.symlink("loop_a.png", paper / "loop_b.png")
  (paper / "notes.png").write_text("a text file named like an image\n")
  (paper / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
  (paper / "._paper_0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble
  rock = root / "train" / "rock"
  for name in ODD_NAMES:
    shutil.copy(rock / "rock_0.png", rock / name)
  os.symlink(".", rock / "again")  # a folder loop: rock/again/again/... is rock
  Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "train" / "scissors" / "dot.png")
  return root


def hostile_run(runs) -> dict:
  tmp = runs.tmp("hostile")
  data = hostile_folder(tmp / "data")
  workdir = tmp / "run"
  rc, stderr, peak = run_measured("", rel.main_args(
      workdir, data, f"--config.data.max_image_pixels={MAX_PIXELS}"), tmp)
  return {"workdir": workdir, "data": data, "rc": rc, "stderr": stderr, "peak": peak}


def changed_after_scan(runs, what: str) -> dict:
  tmp = runs.tmp(f"after_scan_{what}")
  data = tmp / "data"
  for i, cls in enumerate(rel.CLASSES):
    rel.write_class(data / "train" / cls, i, 8)
  victim = data / "train" / "rock" / "rock_3.png"
  workdir = tmp / "run"
  rc, stderr, peak = run_measured(f"after_scan:{what}:{victim}", rel.main_args(
      workdir, data, f"--config.data.max_image_pixels={MAX_PIXELS}"), tmp)
  return {"victim": victim, "rc": rc, "stderr": stderr, "peak": peak, "workdir": workdir}


def empty_class_folder(runs) -> dict:
  tmp = runs.tmp("empty_class")
  data = tmp / "data"
  for i, cls in enumerate(rel.CLASSES):
    rel.write_class(data / "train" / cls, i, 8)
  (data / "train" / "lizard").mkdir()
  workdir = tmp / "run"
  return {"folder": data / "train" / "lizard", "workdir": workdir,
          "proc": rel.run_main(workdir, data)}


# ---------------------------------------------------------------------------------------------
# 5. Atomic reports: a third epoch on a copy of the finished run, killed half way through
# writing one report file.

# One file per writer: report.write_json (also config.json, eval.json), data_files' split and
# report writer, report._save (every PNG). Each case is a process: ~12 s of CPU.
REPORTS = ("history.json", "data_report.json", "curves.png")


def killed_while_writing(runs, name: str) -> dict:
  workdir = copy_of(runs, f"write_{name}")
  old = (workdir / name).read_bytes()
  proc = run_hooked(f"kill:write:{name}:1",
                       rel.main_args(workdir, runs.data_dir, "--config.num_epochs=3"))
  return {"workdir": workdir, "old": old, "proc": proc,
          "left": sorted(p.name for p in workdir.iterdir())}


# ---------------------------------------------------------------------------------------------
# Runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("data2")
  for i, cls in enumerate(rel.CLASSES):
    rel.write_class(root / "train" / cls, i, 8)
  return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  runs = rel.Runs(tmp_path_factory.mktemp("runs2"), data_dir)
  runs.start("straight", rel.straight_run)  # first: the copies wait for it
  runs.start("lock", second_run_on_a_live_workdir)
  runs.start("hostile", hostile_run)
  runs.start("empty_class", empty_class_folder)
  runs.start("vanish", changed_after_scan, "vanish")
  runs.start("bomb", changed_after_scan, "bomb")
  runs.start("enospc", full_disk)
  runs.start("tmpfs", real_full_disk)
  for how in ("truncate", "flip"):
    runs.start(f"damaged_{how}", resume_past_damage, how)
  runs.start("damaged_all", nothing_restorable)
  runs.start("damaged_best", damaged_best)
  for name in REPORTS:
    runs.start(f"write_{name}", killed_while_writing, name)
  yield runs
  runs.close()


# ---------------------------------------------------------------------------------------------
# 1. One run per workdir

def test_a_second_run_on_a_live_workdir_stops_naming_it_and_its_holder(runs):
  out = runs.result("lock")
  second = out["second"]
  assert second.returncode == 2, rel.describe(second.returncode, second.stderr)
  message = rel.assert_one_message(second.stderr)
  assert f"{out['workdir']} is in use by another training run" in message, message
  assert f"pid {out['pid']} on host {socket.gethostname()}" in message, message
  assert out["untouched"], "the refused run changed the workdir"
  assert out["second_seconds"] < 120  # stops at start (imports and preflight only)


def test_evaluate_reads_a_live_workdir_without_disturbing_it(runs):
  out = runs.result("lock")
  rel.expect_ok(out["evaluate"])
  assert not out["changed_by_evaluate"], out["changed_by_evaluate"]


def test_the_lock_dies_with_a_killed_run(runs):
  out = runs.result("lock")
  assert out["killed"] == -signal.SIGKILL
  proc = rel.expect_ok(out["after_kill"])  # no stale lock to delete by hand
  assert rel.resumed_from(proc.stderr) == STEPS
  rel.assert_same_run(out["workdir"], runs.result("straight")[0])


def test_the_lock_file_names_its_holder(tmp_path):
  from rpsflax import errors, workdir_lock

  with workdir_lock.hold(tmp_path):
    info = json.loads((tmp_path / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(errors.RunError, match=f"pid {os.getpid()} on host"):
      with workdir_lock.hold(tmp_path):  # another open file description: refused as well
        pass
  with workdir_lock.hold(tmp_path):  # released on exit
    pass


# ---------------------------------------------------------------------------------------------
# 2. Damaged checkpoints

# A flip is caught by OCDBT's checksum or, where the bytes land in a compressed chunk (which file
# is biggest varies with how orbax split the arrays), by zstd: either way the read names it.
@pytest.mark.parametrize("how, why", [("truncate", "OUT_OF_RANGE"),
                                      ("flip", "checksum|Data corruption detected")])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(runs, how, why):
  out = runs.result(f"damaged_{how}")
  proc, workdir = out["proc"], out["workdir"]
  rel.expect_ok(proc)
  damaged = workdir / "checkpoints" / "latest" / str(2 * STEPS)
  assert f"checkpoint {damaged} is damaged" in proc.stderr and re.search(why, proc.stderr), \
      proc.stderr[-3000:]
  assert rel.resumed_from(proc.stderr) == STEPS
  aside = [p.name for p in damaged.parent.iterdir() if p.name.startswith(f"{2 * STEPS}.damaged-")]
  assert len(aside) == 1 and f"to {aside[0]}" in proc.stderr, sorted(damaged.parent.iterdir())
  assert any(f.is_file() for f in (damaged.parent / aside[0]).rglob("*"))  # kept, not deleted
  rel.assert_same_run(workdir, runs.result("straight")[0])  # epoch 2 replayed: bit-identical


def test_no_restorable_checkpoint_says_so_and_how_to_start_fresh(runs):
  out = runs.result("damaged_all")
  proc = out["proc"]
  assert proc.returncode == 2, rel.describe(proc.returncode, proc.stderr)
  message = rel.assert_one_message(proc.stderr)
  latest = out["workdir"] / "checkpoints" / "latest"
  assert f"none of the checkpoints in {latest} can be restored" in message, message
  for step in (STEPS, 2 * STEPS):
    assert str(latest / str(step)) in message
  assert "start fresh" in message and "--workdir" in message
  assert out["untouched"]  # no checkpoint renamed or written


def test_evaluate_and_predict_name_a_damaged_best_checkpoint(runs):
  out = runs.result("damaged_best")
  for proc in (out["evaluate"], out["predict"]):
    assert proc.returncode == 2, rel.describe(proc.returncode, proc.stderr)
    message = rel.assert_one_message(proc.stderr)
    assert f"checkpoint {out['path']} is damaged" in message, message
  assert out["untouched"]


# A failed restore leaves its sibling reads unawaited; they report at garbage collection (the
# commands drop these, see cli.setup_logging).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_each_kind_of_damage_is_found_on_restore(tmp_path):
  """Unit level, the three kinds: a truncated array file, flipped bytes, lost metadata."""
  import jax.numpy as jnp

  from rpsflax import checkpoint

  state = {"w": jnp.asarray(np.random.RandomState(0).randn(64, 256).astype(np.float32)),
           "b": jnp.arange(3.0)}
  for how in ("truncate", "flip", "metadata"):
    with checkpoint.Checkpoints(tmp_path / how) as ckpts:
      for step in (1, 2):
        ckpts.save(state, {"step": step})
      ckpts.wait()
    damage(tmp_path / how / "checkpoints" / "latest" / "2", how)
    with checkpoint.Checkpoints(tmp_path / how) as ckpts:
      with pytest.raises(rel_errors().CheckpointError, match="latest/2 is damaged"):
        ckpts.restore(state, step=2)
      restored, meta = ckpts.restore_for_resume(state)
      assert meta == {"step": 1}, how
      np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]))
    assert checkpoint.steps_on_disk(tmp_path / how / "checkpoints" / "latest") == [1], how
  gc.collect()  # the unawaited reads report now, inside this test's warning filter


def rel_errors():
  from rpsflax import errors

  return errors


# ---------------------------------------------------------------------------------------------
# 3. Hostile images

def test_hostile_images_are_skipped_with_their_reason_and_the_run_goes_on(runs):
  out = runs.result("hostile")
  assert out["rc"] == 0, rel.describe(out["rc"], out["stderr"])
  report = json.loads((out["workdir"] / "data_report.json").read_text())
  reasons = {pathlib.Path(s["path"]).name: s["reason"] for s in report["skipped"]}
  assert set(reasons) == set(HOSTILE), reasons
  for name, part in HOSTILE.items():
    assert part in reasons[name], (name, reasons[name])
  assert "40000x40000" in reasons["bomb.png"] or "1600000000" in reasons["bomb.png"]
  listed = [pathlib.Path(p).name for split in ("train", "validation")
            for p, _ in (line.split("\t") for line in
                         (out["workdir"] / "splits" / f"{split}.txt").read_text().splitlines())]
  for name in (*ODD_NAMES, "dot.png"):  # odd names and a 1x1 image are ordinary images
    assert listed.count(name) == 1, name
  assert not any(n.startswith(".") for n in listed)  # .DS_Store, ._paper_0.png: hidden, never read
  assert len(listed) == len(set(listed)) == 27  # 24 + 2 odd names + 1x1; the loop listed once
  assert out["peak"] < 2 * GIB, f"peak memory {out['peak'] / GIB:.2f} GiB"


def test_a_file_that_vanishes_after_the_scan_stops_the_run_naming_it(runs):
  out = runs.result("vanish")
  assert out["rc"] == 2, rel.describe(out["rc"], out["stderr"])
  message = rel.assert_one_message(out["stderr"])
  assert str(out["victim"]) in message and "changed since" in message, message
  assert not rel.steps_on_disk(out["workdir"])


def test_a_file_that_becomes_a_bomb_after_the_scan_is_not_decoded(runs):
  """The decoder reads the header again: a 13000x13000 PNG (0.5 GB as RGB, which TensorFlow's
  decoder would take) is refused, with config.data.max_image_pixels=1000000, without decoding:
  the process stays at its usual ~1.1 GB (decoding it peaked at 1.6 GB)."""
  out = runs.result("bomb")
  assert out["rc"] == 2, rel.describe(out["rc"], out["stderr"])
  message = rel.assert_one_message(out["stderr"])
  assert str(out["victim"]) in message, message
  assert "declares 13000x13000 pixels, over config.data.max_image_pixels=1000000" in message
  assert out["peak"] < 1.3 * GIB, f"peak memory {out['peak'] / GIB:.2f} GiB"


def test_an_empty_class_folder_stops_before_the_workdir_is_made(runs):
  out = runs.result("empty_class")
  proc = out["proc"]
  assert proc.returncode == 2, rel.describe(proc.returncode, proc.stderr)
  message = rel.assert_one_message(proc.stderr)
  assert f"class folder {out['folder']}" in message and "no image files" in message, message
  assert not out["workdir"].exists()


def test_max_image_pixels_is_checked():
  from rpsflax import config_base, config_check, errors

  c = config_base.get_config()
  c.data.max_image_pixels = 0
  with pytest.raises(errors.ConfigError, match="config.data.max_image_pixels=0"):
    config_check.check_config(c)


# ---------------------------------------------------------------------------------------------
# 4. A full disk

def test_a_full_disk_stops_with_the_path_and_free_space_and_the_run_resumes(runs):
  out = runs.result("enospc")
  proc, workdir = out["proc"], out["workdir"]
  assert proc.returncode == 2, rel.describe(proc.returncode, proc.stderr)
  message = rel.assert_one_message(proc.stderr)
  path = workdir / "checkpoints" / "latest" / str(2 * STEPS)
  assert f"cannot write checkpoint {path}: {os.strerror(errno.ENOSPC)}" in message, message
  assert "MiB free on the filesystem of" in message and "same command" in message, message
  assert out["steps"] == [STEPS]  # the previous checkpoint is there, intact (it resumes below)
  assert [row["epoch"] for row in json.loads(out["history"])] == [1, 2]  # whole, not truncated
  assert not out["eval_written"]  # the run did not claim to have finished
  again = rel.expect_ok(out["again"])
  assert rel.resumed_from(again.stderr) == STEPS
  rel.assert_same_run(workdir, runs.result("straight")[0])


def test_a_real_full_disk_stops_with_one_message_and_the_run_resumes_once_space_is_freed(runs):
  out = runs.result("tmpfs")
  if not out:
    pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -Urm)")
  assert out["proc"].returncode == 0, out["proc"].stderr[-3000:]
  assert out["first_rc"] == "2", out["first"][-5000:]
  message = rel.assert_one_message(out["first"])
  assert os.strerror(errno.ENOSPC) in message and "MiB free on the filesystem of" in message, \
      message
  assert rel.steps_on_disk(out["after_first"]) == [STEPS]
  json.loads((out["after_first"] / "history.json").read_text())  # whole, whichever it holds
  assert out["second_rc"] == "0", out["second"][-5000:]
  assert rel.resumed_from(out["second"]) == STEPS
  rel.assert_same_run(out["final"], runs.result("straight")[0])


# ---------------------------------------------------------------------------------------------
# 5. Atomic reports

@pytest.mark.parametrize("name", REPORTS)
def test_a_kill_while_writing_a_report_leaves_the_old_file_whole(runs, name):
  out = runs.result(f"write_{name}")
  assert out["proc"].returncode == -signal.SIGKILL, rel.describe(out["proc"].returncode,
                                                                 out["proc"].stderr)
  now = (out["workdir"] / name).read_bytes()
  assert now == out["old"], f"{name} changed: {len(out['old'])} -> {len(now)} bytes"
  if name.endswith(".json"):
    json.loads(now)
  else:
    with Image.open(out["workdir"] / name) as im:
      im.verify()


# ---------------------------------------------------------------------------------------------
# 6. Soak: SIGKILL at five seeded random moments, resume after each, end bit-identical.

SOAK_SEED = 13
SOAK_EPOCHS = 4  # room for five kills: none of them can make the run finish before the last


def soak_moments(seed: int = SOAK_SEED) -> list[tuple[str, float]]:
  """Five (kind, u) from a seeded RNG: every kind once (in a random order) and one more: inside
  a train step, an evaluation step, a checkpoint commit, a report write; u in [0, 1) picks
  which one among those still ahead of the resumed run."""
  rng = random.Random(seed)
  kinds = ["step", "eval", "ckpt", "write"]
  rng.shuffle(kinds)
  kinds.append(rng.choice(kinds))
  return [(kind, rng.random()) for kind in kinds]


def soak_hook(kind: str, u: float, steps_left: int) -> str:
  """The hook for one moment, counted from the start of the process (which resumes with
  `steps_left` optimizer steps to go)."""
  if kind == "step":
    return f"kill:step:{1 + int(u * steps_left)}"
  if kind == "eval":
    return f"kill:eval:{1 + int(u * 2)}"  # 2 validation batches per evaluation
  if kind == "ckpt":
    return f"kill:ckpt:{1 + int(u * 3)}"  # among the folders of the first save ahead
  name = ("history.json", "data_report.json", "config.json")[int(u * 3)]
  return f"kill:write:{name}:1"


@pytest.mark.slow
def test_soak_sigkill_at_five_random_moments_then_identical_to_an_unbroken_run(runs):
  """Five SIGKILLs at seeded moments, a resume after each: the final parameters (and optimizer
  state), history and evaluation equal an unbroken run's bit for bit. About 90 s on two loaded
  cores: six 4-epoch runs of the recipe, the unbroken one beside them."""
  tmp = runs.tmp("soak")
  extra = (f"--config.num_epochs={SOAK_EPOCHS}",)
  with futures.ThreadPoolExecutor(1) as pool:
    straight = pool.submit(rel.run_main, tmp / "straight", runs.data_dir, *extra)
    workdir = tmp / "run"
    args = rel.main_args(workdir, runs.data_dir, *extra)
    killed = []
    for kind, u in soak_moments():
      done = max(rel.steps_on_disk(workdir), default=0)
      hook = soak_hook(kind, u, SOAK_EPOCHS * STEPS - done)
      proc = run_hooked(hook, args)
      assert proc.returncode == -signal.SIGKILL, (hook, rel.describe(proc.returncode, proc.stderr))
      killed.append((hook, done))
    proc = rel.expect_ok(rel.run_main(workdir, runs.data_dir, *extra))
    rel.expect_ok(straight.result(timeout=15 * 60))
  assert rel.steps_on_disk(workdir)[-1] == SOAK_EPOCHS * STEPS, killed
  rel.assert_same_run(workdir, tmp / "straight", SOAK_EPOCHS)


def test_soak_moments_are_seeded_and_cover_every_kind():
  moments = soak_moments()
  assert moments == soak_moments() and len(moments) == 5
  assert {kind for kind, _ in moments} == {"step", "eval", "ckpt", "write"}
