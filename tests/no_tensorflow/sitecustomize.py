"""Put this folder first on PYTHONPATH to run Python as on a JAX-only machine: TensorFlow, TFDS,
Keras and tensorboardX look not installed (`import` fails, `importlib.util.find_spec` says None),
in this process and in every subprocess that inherits PYTHONPATH. Used by
tests/test_no_tensorflow.py and by the CPU proof of scripts/device_check.sh (BENCHMARKS.md)."""

import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboardX", "keras", "tf_keras")


class _Hiding:
  """A sys.meta_path finder that finds nothing of BLOCKED and defers the rest to `finder`."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in BLOCKED:
      return None
    find = getattr(self._finder, "find_spec", None)
    return find(name, path, target) if find else None

  def __getattr__(self, attr):
    return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
