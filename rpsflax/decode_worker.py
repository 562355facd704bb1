"""One decoding worker process of rpsflax/decode_pool.py: PIL and the standard library only, so
that it starts in a fraction of a second (no NumPy, no JAX, no TensorFlow).

Protocol: argv[1] is the spec (JSON: size, method, max_pixels); stdin holds one JSON line
`[i, path]` per image; on its private copy of stdout it answers each, in order, with `HEADER`
(int64 i, int64 n, little-endian) and n bytes of RGB pixels (rpsflax/pil_image.py's
`load_image`, row-major), or -n bytes of UTF-8 reason when the file cannot be decoded. Its fd 1
goes to stderr, so a stray print cannot corrupt the pixels. It exits when stdin closes.

Run as `python -c BOOT PACKAGE_ROOT SPEC` (decode_pool.worker_command).
"""

import json
import os
import signal
import struct
import sys

from rpsflax import pil_image

HEADER = struct.Struct("<qq")


def main(spec_json: str) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us by closing stdin
  spec = json.loads(spec_json)
  out = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  size, method, max_pixels = tuple(spec["size"]), spec["method"], int(spec["max_pixels"])
  for line in sys.stdin.buffer:
    i, path = json.loads(line)
    try:
      payload = pil_image.load_image(path, size, method, max_pixels).tobytes()
      n = len(payload)
    except Exception as e:  # pylint: disable=broad-except  (the parent reports it per file)
      payload = f"cannot decode: {e}".encode("utf-8", "replace")
      n = -len(payload)
    try:
      out.write(HEADER.pack(i, n) + payload)
      out.flush()
    except BrokenPipeError:  # the parent stopped reading (it is closing the pool): leave
      os._exit(0)            # without flushing the rest into the closed pipe again
