"""Keep the native libraries' start-up chatter off a user's terminal (issue 24).

Importing TensorFlow prints, from C++ and before any Python logging exists, lines such as
`cudart_stub.cc: Could not find cuda drivers` and `cuda_platform.cc: failed call to cuInit:
... UNKNOWN ERROR (303)` (twice: two of its shared libraries log alike). TF_CPP_MIN_LOG_LEVEL
does not reach them in TensorFlow 2.21. `native_stderr` captures file descriptor 2 around such a
block and, afterwards, writes back every line that is not known start-up noise: a real error,
a Python warning or a traceback still reaches the user. With RPSFLAX_VERBOSE=1 (what the
commands' --verbosity=1 sets) nothing is captured.

No TensorFlow or JAX here: this module runs before either is imported.
"""

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_ENV = "RPSFLAX_VERBOSE"

# C++ log lines (glog/absl format: 'I0000 00:00:1796456052.386814    8049 cudart_stub.cc:31] ...').
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+\.(?:cc|h|cpp):\d+\] ")
# Error-level lines that are no error for a run: no CUDA driver on a CPU machine, and TensorFlow
# and JAX both registering their CUDA plugins on a GPU machine.
_HARMLESS_ERRORS = re.compile(r"failed call to cuInit|Unable to register cu\w+ factory|"
                              r"computation placer already registered|"
                              r"Attempting to register factory for plugin")
_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),  # cpu_feature_guard
    re.compile(r"^TF-TRT Warning: Could not find TensorRT"),
)


def verbose() -> bool:
  return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_noise(line: str) -> bool:
  """True for a start-up line a user need not see (info, warnings and the harmless errors above)."""
  m = _NATIVE_LINE.match(line)
  if m:
    return m.group(1) in "IW" or bool(_HARMLESS_ERRORS.search(line))
  return any(p.match(line) for p in _NOISE)


def drop_noise(text: str) -> str:
  return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


@contextlib.contextmanager
def native_stderr():
  """Capture fd 2 during the block; write back what is not noise (everything when verbose)."""
  if verbose():
    yield
    return
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no usable fd 2 (a closed or replaced stderr): leave it alone
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      finally:
        os.dup2(saved, 2)
        os.close(saved)
      captured.seek(0)
      kept = drop_noise(captured.read().decode("utf-8", errors="replace"))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()
