"""Data parallelism with JAX's own machinery: one 1-D mesh, sharded batches, replicated state.

- `make_mesh()`: a `Mesh` with axis 'data' over every device of every process. Batches are
  `NamedSharding(mesh, P('data'))` (split on the batch axis), parameters and optimizer state
  `NamedSharding(mesh, P())` (replicated); `jit` inserts the cross-device reductions, so the step
  functions are the same code on 1 device, 8 devices or 8 hosts.
- The config's `batch_size` is the global batch: each process loads `batch_size / process_count`
  examples (its slice of every global batch, see input_pipeline) and `shard_batch` turns those
  slices into one global array. A training batch that does not split across the devices is an
  error naming config.batch_size; evaluation pads with masked rows instead.
- `initialize_distributed(config)` starts `jax.distributed` (multi-host) before any device is used.
"""

import collections
import os
from typing import Iterable, Iterator, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rpsflax import errors

DATA_AXIS = "data"
BATCH_KEYS = ("image", "label", "mask")
ENV_FLAG = "RPSFLAX_DISTRIBUTED"


# ---------------------------------------------------------------------------------------------
# Multi-host start-up

def distributed_requested(config=None) -> bool:
  """True when config.distributed.initialize is set or the environment has RPSFLAX_DISTRIBUTED=1."""
  env = os.environ.get(ENV_FLAG, "").strip().lower() in ("1", "true", "yes", "on")
  return env or bool(config is not None and config.distributed.initialize)


def initialize_distributed(config=None) -> bool:
  """`jax.distributed.initialize()` when the config or the environment asks for it.

  Explicit `config.distributed.{coordinator_address, num_processes, process_id}` are passed on;
  fields left at their defaults ('' / 0 / -1) are found by JAX itself from the environment
  (SLURM, Open MPI, Cloud TPU, Kubernetes, JAX_COORDINATOR_ADDRESS). Must run before anything
  touches a device. Returns True when this process is part of a multi-process run; calling it
  again is a no-op.
  """
  if not distributed_requested(config):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if config is not None:
    d = config.distributed
    if d.coordinator_address:
      kwargs["coordinator_address"] = str(d.coordinator_address)
    if int(d.num_processes) > 0:
      kwargs["num_processes"] = int(d.num_processes)
    if int(d.process_id) >= 0:
      kwargs["process_id"] = int(d.process_id)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError, RuntimeError) as e:
    if "before any JAX" in str(e):  # a bug, not a setting: something used a device first
      raise RuntimeError(
          f"initialize_distributed must run before anything touches a device: {e}") from e
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "nothing"
    raise errors.ConfigError(
        f"jax.distributed.initialize failed ({e}) with config.distributed {given}. Either launch "
        "under a cluster JAX detects (SLURM srun, Open MPI mpirun, Cloud TPU), or give all three: "
        "--config.distributed.coordinator_address=HOST:PORT --config.distributed.num_processes=N "
        "--config.distributed.process_id=I (0 on the host at HOST)") from e
  logging.info("jax.distributed: process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if not is_chief():
    logging.set_verbosity(logging.WARNING)  # progress and INFO lines from process 0 only
  return True


def is_chief() -> bool:
  """Process 0: the one that writes logs, TensorBoard events, history and reports."""
  return jax.process_index() == 0


# ---------------------------------------------------------------------------------------------
# Mesh and shardings

def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over every device of every process (or `devices`).

  Devices are grouped by process so that process p's rows of a global batch are the contiguous
  slice [p*B, (p+1)*B) the input pipeline gives it: N processes then compute what one does.
  """
  devices = jax.devices() if devices is None else list(devices)
  devices = sorted(devices, key=lambda d: d.process_index)  # stable: keeps JAX's order within
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Split the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer state, metrics)."""
  return NamedSharding(mesh, P())


def abstract_like(tree, sharding=None):
  """ShapeDtypeStructs (with `sharding`, or each leaf's own) to restore into."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, tree)


def local_device_count(mesh: Mesh) -> int:
  """Devices of `mesh` that belong to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


_local_devices = local_device_count  # the name train.py used


def check_batch_sizes(config, mesh: Mesh) -> None:
  """The global training batch must split evenly across the mesh's devices.

  The evaluation batch need not: its rows are padded (masked) up to a multiple of the devices.
  That both split across processes is the input pipeline's check (each process reads its slice).
  """
  n = mesh.devices.size
  if config.batch_size % n:
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} does not divide across {n} devices; "
        f"use a multiple of {n}")


def device_counts_to_try(max_devices: Optional[int] = None) -> list[int]:
  """Device counts for a scaling benchmark: 1, 2, 4, ... up to all local devices (always included).

  Build the mesh for n with `make_mesh(jax.local_devices()[:n])` and use a global batch of
  n * per-device batch (weak scaling), so every count runs the same per-device work.
  """
  top = jax.local_device_count() if max_devices is None else min(max_devices,
                                                                 jax.local_device_count())
  counts, n = [], 1
  while n < top:
    counts.append(n)
    n *= 2
  return counts + [top]


# ---------------------------------------------------------------------------------------------
# Host batches -> global device arrays

def pad_batch(batch: dict, multiple: int) -> dict:
  """Pad a host batch with masked zero rows up to a multiple of `multiple`."""
  b = len(batch["mask"])
  extra = -b % multiple
  if not extra:
    return batch
  return {k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def shard_batch(batch: dict, mesh: Mesh, *, pad: bool = False) -> dict:
  """This process' slice of a global batch -> global jax.Arrays sharded on the batch axis.

  pad=True (evaluation, prediction) pads with masked rows to a multiple of the local devices;
  otherwise a batch that does not divide is an error naming config.batch_size.
  """
  batch = {k: np.asarray(batch[k]) for k in BATCH_KEYS if k in batch}
  n = local_device_count(mesh)
  if pad:
    batch = pad_batch(batch, n)
  elif len(batch["mask"]) % n:
    raise errors.ConfigError(
        f"a training batch of {len(batch['mask'])} examples per process does not split across "
        f"{n} local devices: make config.batch_size a multiple of {n * jax.process_count()}")
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_mesh(batches: Iterable[dict], mesh: Mesh, size: int = 2, *,
                     pad: bool = False) -> Iterator[dict]:
  """Start host->device copies `size` batches ahead, so transfers overlap the running step."""
  queue = collections.deque()
  for batch in batches:
    queue.append(shard_batch(batch, mesh, pad=pad))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
