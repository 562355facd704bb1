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
  RPSFLAX_HOOK_MARKER=FILE       written when the process parks (the test waits for it)
  RPSFLAX_HOOK_GO=FILE           go on once this file exists

Everything else (flags, errors, exit codes) is rpsflax.main's own.
"""

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


def before_step(n: int, action) -> None:
  """Run `action()` in the main thread just before the optimizer step that follows step n."""
  import dataclasses

  from rpsflax import steps

  real = steps.compile_steps

  def compile_steps(*args, **kwargs):
    compiled = real(*args, **kwargs)

    def step(state, batch, rng):
      if int(state.step) == n:
        action()
      return compiled.train(state, batch, rng)
    return dataclasses.replace(compiled, train=step)

  steps.compile_steps = compile_steps


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


def main() -> None:
  kind, _, arg = HOOK.partition(":")
  if kind == "step":
    hook_step(int(arg))
  elif kind == "twice":
    hook_twice(int(arg))
  elif kind == "bug":
    hook_bug(int(arg))
  elif kind == "commit":
    hook_commit(arg)
  elif kind:
    raise SystemExit(f"reliability_hooks: unknown RPSFLAX_HOOK={HOOK!r}")
  from absl import app

  from rpsflax import main as rps_main

  rps_main.define_flags()
  app.run(rps_main.main, flags_parser=rps_main.parse_flags)


if __name__ == "__main__":
  main()
