"""Where a run's wall time went: named phases that add up to it, compilation counted apart.

`RunTimer` splits the time from the start of the process (or of `train_and_evaluate`, when it is
called as a library) to the end of the run into phases: each moment belongs to the innermost
phase open at that moment, and the rest is 'other', so the parts add up to the wall time.
Compilation is not a phase one opens: JAX reports every trace, lowering and XLA compile (or
persistent-cache read) through `jax.monitoring`, and those intervals are taken out of whatever
phase was open and counted under 'compilation' (nested ones once).

Code deep in a run marks its phase with `timing.phase(name)` (a no-op when no run is timed), so
nothing has to pass a timer around. Only the main thread's time is attributed: background
threads (prefetching, Orbax's writes) show up only where the main thread waits for them.
"""

import contextlib
import os
import threading
import time
from typing import Iterator, Optional

from jax import monitoring

# The phases of a run, in the order of the log line (see docs/performance_gpu.md).
PHASES = ("startup", "checks", "data", "decoding", "to_device", "weights", "feature_cache",
          "compilation", "steps", "evaluation", "checkpoints", "reports", "other")
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")

_active: list["RunTimer"] = []
_listening = False


def process_start_time() -> Optional[float]:
  """When this process started (time.time() scale), from /proc; None where that is unknown."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _on_span(event: str, start: float, end: float, **_) -> None:
  if event in _COMPILE_EVENTS and threading.current_thread() is threading.main_thread():
    for timer in _active:
      timer.compile_spans.append((start, end))


def _on_duration(event: str, duration: float, **_) -> None:
  end = time.time()
  _on_span(event, end - duration, end)


def _listen() -> None:
  """Hear JAX's compile events (spans where this JAX reports them, else durations ending now)."""
  global _listening
  if not _listening:
    span = getattr(monitoring, "register_event_time_span_listener", None)
    if span is not None:
      span(_on_span)
    else:
      monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True


class RunTimer:
  """Seconds per phase of one run; `phase` opens one, `summary` closes the books."""

  def __init__(self, started: Optional[float] = None, clock=time.time):
    self._clock = clock  # time.time: the scale of JAX's compile events and of process_start_time
    now = clock()
    self.started = now if started is None else min(float(started), now)
    self.seconds = dict.fromkeys(PHASES, 0.0)
    self.seconds["startup"] = now - self.started
    self.compile_spans: list[tuple[float, float]] = []
    self._stack = ["other"]
    self._since = now

  def _switch(self, now: float) -> None:
    """Book [self._since, now] to the open phase, minus the compilation inside it."""
    compiled = _covered(self.compile_spans, self._since, now)
    self.seconds[self._stack[-1]] += (now - self._since) - compiled
    self.seconds["compilation"] += compiled
    self.compile_spans = [s for s in self.compile_spans if s[1] > now]
    self._since = now

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    if name not in self.seconds:
      raise ValueError(f"unknown phase {name!r}: use one of {PHASES}")
    self._switch(self._clock())
    self._stack.append(name)
    try:
      yield
    finally:
      self._switch(self._clock())
      self._stack.pop()

  @contextlib.contextmanager
  def active(self) -> Iterator["RunTimer"]:
    """Make this the timer that `timing.phase` and JAX's compile events report to."""
    _listen()
    _active.append(self)
    try:
      yield self
    finally:
      _active.remove(self)

  def summary(self) -> dict:
    """{'wall': seconds since the start, phase: seconds, ...}: the phases sum to 'wall'."""
    now = self._clock()
    self._switch(now)
    out = {"wall": round(now - self.started, 3)}
    out.update({k: round(v, 3) for k, v in self.seconds.items()})
    return out


def _covered(spans, lo: float, hi: float) -> float:
  """Length of the union of `spans` inside [lo, hi] (nested compile events count once)."""
  total, reach = 0.0, lo
  for s, e in sorted(spans):
    s, e = max(s, reach), min(e, hi)
    if e > s:
      total += e - s
      reach = e
  return total


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
  """Book the time inside to phase `name` of the run being timed (none: nothing happens)."""
  if not _active:
    yield
    return
  with _active[-1].phase(name):
    yield


def format_line(summary: dict) -> str:
  """'23.5 s: startup 2.1, steps 5.4, ...' (phases under 5 ms left out)."""
  parts = [f"{k} {v:.2f}" for k, v in summary.items() if k != "wall" and v >= 0.005]
  return f"{summary['wall']:.2f} s: " + ", ".join(parts)
