"""rpsflax: Keras-exact transfer learning in JAX/Flax."""

__version__ = "0.1.0"
