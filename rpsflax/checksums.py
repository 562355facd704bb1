"""Checksums of arrays, computed where they live: what a checkpoint (rpsflax/checkpoint.py) and
the frozen-parameter store (rpsflax/frozen_store.py) record beside what they write, and check
when they read it back."""

import jax
import jax.numpy as jnp
import numpy as np


def _leaf_digest(x):
  """A weighted sum of the leaf's bits as uint32 words, mod 2**32: any change to one word changes
  it (odd weights), swaps too; integer arithmetic, so the same on any device and sharding."""
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 8:
    words = jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  weights = jnp.arange(words.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


_digests = jax.jit(lambda leaves: [_leaf_digest(x) for x in leaves])


def state_digest(state) -> list[int]:
  """One checksum per leaf of `state` (arrays on any device or mesh), in jax.tree.leaves order."""
  out = _digests(jax.tree.leaves(state))
  return [int(np.asarray(d.addressable_data(0))) for d in out]
