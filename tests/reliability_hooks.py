"""`python -m rpsflax.main`, with one test hook that parks the process at a chosen moment.

tests/test_reliability.py runs the real command through this script when it has to kill or
signal a run at an exact point (no sleeps, no races):

  RPSFLAX_HOOK=step:7            park before the 8th optimizer step (7 done: inside epoch 2);
                                 go on once the training loop has seen SIGINT/SIGTERM
  RPSFLAX_HOOK=twice:7           park before the 8th step until SIGINT/SIGTERM, then stay parked
                                 (marker reads "step 7 signalled"): a second signal must stop it
  RPSFLAX_HOOK=bug:7             raise a plain ValueError (a bug, not a user's mistake) before
                                 the 8th step
  RPSFLAX_HOOK=commit:latest/10  park inside Orbax's commit of checkpoints/latest/10: its files
                                 are written in the temporary folder, which is not yet renamed
  RPSFLAX_HOOK=enospc:latest/10  the save of checkpoints/latest/10 fails with OSError ENOSPC as
                                 Orbax commits it (its files written, the folder not renamed)
  RPSFLAX_HOOK=fill:7:PATH:KIB  before the 8th step, once no checkpoint is being written, fill
                                 the filesystem of PATH with the file PATH until KIB KiB are
                                 left: a real full disk (the kernel's ENOSPC) from then on
  RPSFLAX_HOOK=after_scan:vanish:PATH  delete PATH once the readability scan is done (before decoding)
  RPSFLAX_HOOK=after_scan:bomb:PATH    replace PATH by a 13000x13000 PNG bomb at that moment
  RPSFLAX_HOOK=kill:EVENT:N      SIGKILL the process at the Nth EVENT (counted from 1):
                                 step   right after dispatching a train step (it is computing)
                                 eval   right after dispatching an eval step
                                 ckpt   inside Orbax's commit of a checkpoint (files written,
                                        folder not yet renamed)
                                 write:NAME  half way through writing a file called NAME (or its
                                        temporary file), e.g. write:history.json
  (several hooks: separate them with ',')
  RPSFLAX_HOOK_MARKER=FILE       written when the process parks (the test waits for it)
  RPSFLAX_HOOK_GO=FILE           go on once this file exists

Everything else (flags, errors, exit codes) is rpsflax.main's own.
"""

import builtins
import errno
import io
import os
import pathlib
import signal
import sys
import time

HOOK = os.environ.get("RPSFLAX_HOOK", "")
MARKER = os.environ.get("RPSFLAX_HOOK_MARKER", "")
GO = os.environ.get("RPSFLAX_HOOK_GO", "")
PARK_SECONDS = 300  # a test that never comes back must not leave the process behind forever


def park(what: str, until=lambda: False) -> None:
  pathlib.Path(MARKER).write_text(what)
  deadline = time.time() + PARK_SECONDS
  while time.time() < deadline:
    if until() or (GO and os.path.exists(GO)):
      return
    time.sleep(0.02)  # Python runs signal handlers between sleeps
  print(f"reliability_hooks: parked at {what} for {PARK_SECONDS}s; giving up", file=sys.stderr)
  os._exit(99)


def stop_requested() -> bool:
  """Whether the training loop's SIGINT/SIGTERM handler (a bound method of interrupts.StopRequest)
  has recorded a signal: the test signals, and the loop goes on to see it, without races."""
  for sig in (signal.SIGINT, signal.SIGTERM):
    request = getattr(signal.getsignal(sig), "__self__", None)
    if getattr(request, "signum", None) is not None:
      return True
  return False


def wrap_calls(train=None, evaluate=None) -> None:
  """Wrap every call that runs training steps (`train(call)`) or evaluation steps
  (`evaluate(call)`), on both paths: host-fed batches (one jitted step per call,
  steps.compile_steps) and device-resident data (rpsflax.resident: one jitted call per chunk of
  steps). The resident path's chunks become single steps here, so that a hook acts at the very
  step it names on either path (the steps and their bits are the same)."""
  import dataclasses

  from rpsflax import resident, steps

  def wrap(compile_fn):
    def compiled(*args, **kwargs):
      c = compile_fn(*args, **kwargs)
      return dataclasses.replace(c, train=train(c.train) if train else c.train,
                                 eval=evaluate(c.eval) if evaluate else c.eval)
    return compiled

  steps.compile_steps = wrap(steps.compile_steps)
  resident.compile_chunks = wrap(resident.compile_chunks)
  resident.chunk_ends = lambda start, total, every: list(range(start + 1, total + 1))


def before_step(n: int, action) -> None:
  """Run `action()` in the main thread just before the optimizer step that follows step n."""
  def train(call):
    def step(state, *args):
      if int(state.step) == n:
        action()
      return call(state, *args)
    return step
  wrap_calls(train=train)


def hook_step(n: int) -> None:
  """Park the main thread before the optimizer step that follows step n, until signalled."""
  before_step(n, lambda: park(f"step {n}", until=stop_requested))


def hook_twice(n: int) -> None:
  """Park before the step after step n until signalled; then park again, without end: only a
  second signal (the handler raises KeyboardInterrupt) gets the process out."""
  def park_twice():
    park(f"step {n}", until=stop_requested)
    park(f"step {n} signalled")
  before_step(n, park_twice)


def hook_bug(n: int) -> None:
  """A bug inside training: a plain ValueError (the base class of some user errors) at step n."""
  def bug():
    raise ValueError(f"reliability_hooks: injected bug at step {n}")
  before_step(n, bug)


def hook_commit(which_step: str) -> None:
  """Park Orbax's save thread just before it renames the finished temporary folder."""
  from orbax.checkpoint._src.path import atomicity

  cls = atomicity.AtomicRenameTemporaryPath
  real = cls.finalize
  which, step = which_step.split("/")

  async def finalize(self, *args, **kwargs):
    final = pathlib.Path(str(self.get_final()))
    if final.name == step and final.parent.name == which:
      park(f"commit of {final} (temporary folder {self.get()})")
    return await real(self, *args, **kwargs)

  cls.finalize = finalize


def _patch_finalize(which_step: str, action) -> None:
  """Run `action(final_path)` inside Orbax's commit (rename) of checkpoints/<which>/<step>;
  which_step '*' means every checkpoint."""
  from orbax.checkpoint._src.path import atomicity

  cls = atomicity.AtomicRenameTemporaryPath
  real = cls.finalize

  async def finalize(self, *args, **kwargs):
    final = pathlib.Path(str(self.get_final()))
    if which_step == "*" or f"{final.parent.name}/{final.name}" == which_step:
      action(final)
    return await real(self, *args, **kwargs)

  cls.finalize = finalize


def hook_enospc(which_step: str) -> None:
  """The disk fills up while checkpoints/<which>/<step> is saved."""
  def full(final):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
  _patch_finalize(which_step, full)


def _saving(checkpoints: pathlib.Path) -> bool:
  return any(p.name.endswith("-tmp") for p in checkpoints.glob("*/*"))


def hook_fill(arg: str) -> None:
  """Leave `kib` KiB free on the filesystem of `path` before the step after step n, once the
  checkpoints already started are on disk (they are saved in the background)."""
  n, path, kib = arg.split(":")
  workdir = pathlib.Path(next(a for a in sys.argv if a.startswith("--workdir=")).split("=", 1)[1])

  def fill():
    deadline = time.time() + PARK_SECONDS
    while _saving(workdir / "checkpoints") and time.time() < deadline:
      time.sleep(0.02)
    st = os.statvfs(path if os.path.isdir(path) else os.path.dirname(path))
    with open(path, "wb") as f:
      f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - int(kib) * 1024))
  before_step(int(n), fill)


def hook_after_scan(arg: str) -> None:
  """Delete a file, or turn it into a decompression bomb, after the scan found it readable."""
  from rpsflax import data_files

  what, _, path = arg.partition(":")
  real = data_files.scan_images

  def scan_images(*args, **kwargs):
    out = real(*args, **kwargs)
    if what == "vanish":
      os.remove(path)
    elif what == "bomb":
      import data_factory  # tests/ is on sys.path: this script lives there

      # 13000x13000: 0.5 GB as RGB, just under the 2**29 bytes above which TensorFlow's decoders
      # refuse by themselves: so it is our header check (config.data.max_image_pixels) that
      # keeps it from being decoded.
      data_factory.png_bomb(path, 13000, 13000)
    else:
      raise SystemExit(f"reliability_hooks: after_scan:{what}? use vanish or bomb")
    return out

  data_files.scan_images = scan_images


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(60)  # SIGKILL is delivered at once; never go on


class _Counter:
  def __init__(self, n: int):
    self.n, self.seen = n, 0

  def tick(self) -> bool:
    self.seen += 1
    return self.seen == self.n


def hook_kill(arg: str) -> None:
  event, _, rest = arg.partition(":")
  if event == "write":
    name, _, n = rest.rpartition(":")
    return _kill_in_write(name, int(n))
  counter = _Counter(int(rest))
  if event == "ckpt":
    return _patch_finalize("*", lambda final: counter.tick() and _die())
  if event not in ("step", "eval"):
    raise SystemExit(f"reliability_hooks: kill:{event}? use step, eval, ckpt or write")

  def die_after(call):
    def dispatch(*args):
      out = call(*args)
      if counter.tick():
        _die()  # dispatched, not finished: the kill lands inside the step
      return out
    return dispatch
  wrap_calls(**{"train" if event == "step" else "evaluate": die_after})


def _kill_in_write(name: str, n: int) -> None:
  """The Nth time a file called `name` (or `.name.tmp...`, a temporary beside it) is opened for
  writing, write half of what the writer hands over, flush it to the file, and SIGKILL."""
  counter = _Counter(n)
  real_open = io.open

  class HalfWriter:
    def __init__(self, f):
      self._f = f

    def write(self, data):
      self._f.write(data[: max(1, len(data) // 2)])
      self._f.flush()
      os.fsync(self._f.fileno())
      _die()

    def __getattr__(self, attr):
      return getattr(self._f, attr)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return self._f.__exit__(*exc)

  def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    base = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
    writing = any(c in mode for c in "wax+")
    if writing and (base == name or base.startswith(f".{name}.tmp")) and counter.tick():
      return HalfWriter(f)
    return f

  builtins.open = io.open = open_


def report_peak_memory(path: str) -> None:
  """At exit, write this process' own peak resident memory (VmHWM, bytes) to `path`. Not
  ru_maxrss from wait4: Linux carries that over from the forking parent (a pytest worker that
  may hold gigabytes) across exec; VmHWM belongs to the new program's memory alone."""
  import atexit

  def write():
    for line in open("/proc/self/status"):
      if line.startswith("VmHWM:"):
        pathlib.Path(path).write_text(str(int(line.split()[1]) * 1024))
  atexit.register(write)


def main() -> None:
  if os.environ.get("RPSFLAX_PEAK_FILE"):
    report_peak_memory(os.environ["RPSFLAX_PEAK_FILE"])
  for hook in filter(None, HOOK.split(",")):
    kind, _, arg = hook.partition(":")
    if kind == "step":
      hook_step(int(arg))
    elif kind == "twice":
      hook_twice(int(arg))
    elif kind == "bug":
      hook_bug(int(arg))
    elif kind == "commit":
      hook_commit(arg)
    elif kind == "enospc":
      hook_enospc(arg)
    elif kind == "fill":
      hook_fill(arg)
    elif kind == "after_scan":
      hook_after_scan(arg)
    elif kind == "kill":
      hook_kill(arg)
    else:
      raise SystemExit(f"reliability_hooks: unknown RPSFLAX_HOOK={HOOK!r}")
  from absl import app

  from rpsflax import main as rps_main

  rps_main.define_flags()
  app.run(rps_main.main, flags_parser=rps_main.parse_flags)


if __name__ == "__main__":
  main()
