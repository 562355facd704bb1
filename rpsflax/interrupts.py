"""SIGINT/SIGTERM during training: a flag checked between steps, and the exception that follows.

The training loop saves a checkpoint of the step it reached, then raises `TrainingInterrupted`;
the CLI exits with 128 + signal (130, 143), as a shell reports a signal.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT/SIGTERM during training: a checkpoint of the current step was saved first."""

  def __init__(self, message: str, signum: int = signal.SIGINT):
    super().__init__(message)
    self.signum = int(signum)  # main exits with 128 + signum, as a shell reports a signal


class StopRequest:
  """SIGINT/SIGTERM -> a flag the loop checks between steps (main thread only)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:  # a second signal: stop at once
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)

  def requested(self, sync: bool = True) -> bool:
    """Whether to stop now. Several processes must stop at the same step, or one would wait in a
    collective of the next step while another saves: they agree (any signal stops all), and only at
    points every process reaches together (`sync`), so the per-step check costs nothing there."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not sync:
      return False
    signum = int(np.max(multihost_utils.process_allgather(np.int32(self.signum or 0))))
    if signum and self.signum is None:
      self.signum = signum
    return signum != 0
