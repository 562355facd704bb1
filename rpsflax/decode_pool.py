"""Decoding in worker processes: PIL on every core, the same bits as in threads.

PIL releases the GIL while it decodes, converts and resizes, but opening a file, parsing its
header in Python and making the array hold it, so decoding threads stop scaling after a few
cores (docs/decoding.md has the figures). Here each worker is its own `python` process
running `pil_image.load_image`, the very function the threads run, so the pixels are the same
bits; it sends each image back through its pipe straight into the caller's array.

Pipes, not shared memory: a default Docker container has 64 MB of /dev/shm, and a process that
writes past a full tmpfs dies of SIGBUS; a pipe needs no such space and costs one copy per
image. Not `multiprocessing` either: its workers import the main module again (`python -m
rpsflax.main` imports JAX, Flax and Orbax: seconds per start); these import PIL only.

`decode_files` is what input_pipeline calls for config.data.decoder='pil': processes where
there are enough images and workers for them to pay (`PROCESS_MIN_IMAGES`), else PIL threads
(`pil_decode.decode_files`); where a worker cannot start, or dies, it logs why and decodes
what is left in threads.

The worker and its protocol: rpsflax/decode_worker.py.
"""

import json
import os
import selectors
import signal
import subprocess
import sys
from typing import Callable, Optional, Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from rpsflax import data_files, decode_worker, pil_decode

PROCESS_MIN_IMAGES = 256  # fewer: threads (a worker takes ~0.1 s to start)
_DEPTH = 4  # images queued per worker: it never waits for the next path
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from rpsflax import decode_worker; decode_worker.main(sys.argv[2])")


class PoolFailed(RuntimeError):
  """The worker processes could not start, or one stopped: decode the rest another way."""


def worker_command(spec: dict) -> list[str]:
  """The argv of one worker: this interpreter, this copy of rpsflax, the spec."""
  return [sys.executable, "-c", BOOT, PACKAGE_ROOT, json.dumps(spec)]


class ProcessPool:
  """`workers` decoding processes for images of (h, w) = `size`; a context manager."""

  def __init__(self, workers: int, size, method: str, max_pixels: int,
               command: Optional[Callable[[dict], list]] = None):
    self.size = (int(size[0]), int(size[1]))
    spec = {"size": self.size, "method": method, "max_pixels": int(max_pixels)}
    self._procs: list[subprocess.Popen] = []
    try:
      for _ in range(max(1, int(workers))):
        self._procs.append(subprocess.Popen(
            (command or worker_command)(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            start_new_session=True))  # Ctrl-C reaches the parent, which stops them
    except OSError as e:
      self.close()
      raise PoolFailed(f"cannot start a decoding process ({e})") from e

  def decode(self, paths: Sequence[str], out: np.ndarray, done: np.ndarray, failed: list,
             progress: Optional[Callable[[int], None]] = None) -> None:
    """paths[i] -> out[i] (uint8 [n, h, w, 3]), done[i] set for each file answered, (i, reason)
    appended to `failed` for each file that cannot be decoded. PoolFailed when a worker stops
    (`done` and `failed` then say what was answered)."""
    n = len(paths)
    row_bytes = self.size[0] * self.size[1] * 3
    if out.shape[1:] != (*self.size, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
      raise ValueError(f"out must be C-contiguous uint8 [n, {self.size[0]}, {self.size[1]}, 3]")
    todo = iter(range(n))
    with selectors.DefaultSelector() as sel:
      for proc in self._procs:
        sel.register(proc.stdout, selectors.EVENT_READ, proc)
        for _ in range(_DEPTH):
          self._send(proc, todo, paths)
      answered = 0
      while answered < n:
        for key, _ in sel.select():
          proc = key.data
          header = bytearray(decode_worker.HEADER.size)
          self._read_into(proc, memoryview(header))
          i, size = decode_worker.HEADER.unpack(header)
          if not (0 <= i < n and not done[i] and (size == row_bytes or size < 0)):
            raise PoolFailed(f"a decoding process answered image {i} with {size} bytes")
          if size >= 0:
            self._read_into(proc, memoryview(out[i]).cast("B"))
          else:
            reason = bytearray(-size)
            self._read_into(proc, memoryview(reason))
            failed.append((i, reason.decode("utf-8", "replace")))
          done[i] = True
          answered += 1
          if progress is not None:
            progress(1)
          self._send(proc, todo, paths)

  @staticmethod
  def _send(proc, todo, paths) -> None:
    i = next(todo, None)
    if i is None:
      return
    try:
      proc.stdin.write(json.dumps([i, os.fspath(paths[i])]).encode() + b"\n")
    except OSError as e:  # BrokenPipeError: it died
      raise PoolFailed(f"a decoding process stopped ({_status(proc)})") from e

  @staticmethod
  def _read_into(proc, view: memoryview) -> None:
    while len(view):
      k = proc.stdout.readinto(view)
      if not k:
        raise PoolFailed(f"a decoding process stopped ({_status(proc)})")
      view = view[k:]

  def close(self) -> None:
    """Stop the workers: with their stdin closed they exit after the image in hand, and with
    their pipe closed that image's answer cannot block them (killed after 5 s)."""
    for proc in self._procs:
      for pipe in (proc.stdin, proc.stdout):
        try:
          pipe.close()
        except OSError:
          pass
    for proc in self._procs:
      try:
        proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    self._procs = []

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _status(proc: subprocess.Popen) -> str:
  try:
    code = proc.wait(timeout=1)
  except subprocess.TimeoutExpired:
    return "still running, but its pipe closed"
  return f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"


def decode_files(paths: np.ndarray, size, method: str, num_parallel_calls: int, out: np.ndarray,
                 desc: str = "decoding", progress_min: int = 2000,
                 max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS,
                 processes: Optional[bool] = None, fallback: bool = True,
                 ) -> list[tuple[int, str]]:
  """Decode paths[i] into out[i]; returns [(i, reason)] of unreadable files. Same arguments and
  pixels as `pil_decode.decode_files`; `num_parallel_calls` (-1: one per core) workers.

  processes: True decodes in worker processes, False in threads, None (default) in processes
  when there are 2+ workers and `PROCESS_MIN_IMAGES`+ images. Processes that cannot start or
  stop leave the rest to threads (logged); with `fallback` False, PoolFailed is raised instead.
  """
  n, workers = len(paths), pil_decode.num_threads(num_parallel_calls)
  if processes is None:
    processes = workers > 1 and n >= PROCESS_MIN_IMAGES
  if not processes or n == 0:
    return pil_decode.decode_files(paths, size, method, num_parallel_calls, out, desc,
                                   progress_min, max_pixels)
  done, failed = np.zeros(n, bool), []
  with tqdm(total=n, desc=desc, unit="img", disable=n < progress_min) as bar:
    try:
      with ProcessPool(min(workers, n), size, method, max_pixels) as pool:
        pool.decode(paths, out, done, failed, progress=bar.update)
      return sorted(failed)
    except PoolFailed as e:
      if not fallback:
        raise
      logging.warning("decoding in processes failed (%s): decoding the %d images left in "
                      "threads", e, int((~done).sum()))
  rest = np.flatnonzero(~done)
  part = np.zeros((len(rest), *out.shape[1:]), np.uint8)
  more = pil_decode.decode_files(np.asarray(paths, dtype=object)[rest], size, method,
                                 num_parallel_calls, part, desc, progress_min, max_pixels)
  out[rest] = part
  return sorted(failed + [(int(rest[i]), why) for i, why in more])
