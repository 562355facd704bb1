"""What this machine has installed: library versions, and why TensorFlow is missing if it is."""

import importlib.util
import platform
import sys
from importlib import metadata
from typing import Optional


def tensorflow_missing() -> Optional[str]:
  """Why TensorFlow figures cannot run here, or None."""
  try:
    if importlib.util.find_spec("tensorflow") is None:
      return "tensorflow is not installed"
    import tensorflow  # noqa: F401,PLC0415  (only to see that it imports: seconds, on demand)
  except Exception as e:  # pylint: disable=broad-except
    return f"tensorflow does not import ({type(e).__name__}: {e})"
  return None


def versions() -> dict:
  """{library: version or None}; TensorFlow and Keras are looked up, not imported."""
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow", "keras"):
    try:
      if name in ("tensorflow", "keras") and name not in sys.modules:
        if importlib.util.find_spec(name) is None:  # also None where an import hook blocks it
          out[name] = None
          continue
        out[name] = metadata.version(name)
      else:
        out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  return out
