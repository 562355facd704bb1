"""rpsflax: Keras-exact transfer learning in JAX/Flax."""

from rpsflax import xla_cpu as _xla_cpu

# Before any backend starts (XLA reads XLA_FLAGS once): CPU-only flags, merged with the user's.
_xla_cpu.apply()

__version__ = "0.1.0"
