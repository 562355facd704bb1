"""Device-resident data: a run's splits live on the devices, and an epoch is a few jitted calls.

With config.data.cache every image is decoded once anyway; when the decoded uint8 images (or, with
config.cached_features, the features of every view) fit the budget of config.data.device_cache,
they are copied to the devices once (`load`), and then:
- The host still decides everything random, exactly as the host-fed path does: the epoch's
  order and batches (`Datasets.train_rows`: data_files.epoch_order, batch_index_matrix) and,
  for cached features, each example's view (features.view_choice). It sends these small int32
  matrices once per epoch; the gather (padding rows: zero image, label 0, mask False, as
  `Datasets` builds them), augmentation and the steps run in jitted code.
- An epoch runs as one jitted call per chunk of steps: a `lax.fori_loop` over the epoch's index
  rows with a dynamic trip count [start, stop), carrying the state and the metric sums. A
  dynamic trip count compiles once for every chunk length (a `lax.scan` would compile again for
  the shorter last chunk and for a resume inside an epoch). Chunks end at multiples of
  config.log_every_steps and at the epoch's end, where the training loop (rpsflax.train) draws
  the progress bar, checks for NaN and SIGINT/SIGTERM and writes TensorBoard, as it does after
  single steps on the host-fed path: the same steps and keys, so the same bits.
- Several devices: the stored rows are sharded over the 'data' mesh axis (each device holds
  1/N of them, so N devices hold N times the data) and jit partitions the gather (each device
  picks the rows it holds, an all-reduce of the batch assembles it). The rows are stored as
  unsigned integers (features as the uint32 bits of their float32 values), so that all-reduce
  adds exact zeros to integers and the batch is bit for bit the one the host would build.
- Single process only: a multi-process run keeps the host-fed path (each process feeds its slice
  of every batch), as does config.data.cache=False (nothing decoded up front).

TF-free: the splits come from any object with the `Datasets` interface (input_pipeline) or
`features.FeatureDatasets`: split_array_spec, split_array, split_labels, train_rows, eval_rows.
"""

import dataclasses
import math
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.sharding import Mesh

from rpsflax import errors, sharding, steps, timing

# 'auto' on an accelerator: at most this fraction of the memory free on a device when the run
# decides (its state is there already); the rest stays for the steps' activations and XLA.
DEVICE_FRACTION = 0.5
# 'auto' where the device reports no memory (CPU): the "device" is host memory, where the
# decoded images already are once (input_pipeline's cache), so the copy must fit a quarter of
# the memory the host has available, beside that cache and other processes.
HOST_FRACTION = 0.25
SPLITS = ("train", "validation", "holdout")  # the splits a training run reads
_GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chunks:
  """The jitted chunk functions of one run (built once, `compile_chunks`)."""
  train: Callable  # (state, sums, data, labels, rows, views, start, stop, rng) -> (state, sums)
  eval: Callable   # (state, sums, data, labels, rows, views, start, stop) -> sums


def chunk_ends(start: int, total: int, every: int) -> list[int]:
  """Where the calls that run steps [start, total) end: each multiple of `every`, and `total`."""
  if start >= total:
    return []
  return list(range((start // every + 1) * every, total, every)) + [total]


def _batch(data, labels, row, view, mesh: Mesh, float_bits: bool) -> dict:
  """The batch of index row `row` (-1 = padding), as `Datasets` builds it on the host."""
  valid = row >= 0
  take = jnp.where(valid, row, 0)
  x = data[view * labels.shape[0] + take]
  x = jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))
  if float_bits:
    x = lax.bitcast_convert_type(x, jnp.float32)
  batch = {"image": x, "label": jnp.where(valid, labels[take], 0).astype(jnp.int32),
           "mask": valid}
  return lax.with_sharding_constraint(batch, sharding.data_sharding(mesh))


def compile_chunks(run_steps: steps.Steps, mesh: Mesh) -> Chunks:
  """The train and eval chunks for `mesh`, around the very step functions the run compiled
  (`steps.compile_steps`)."""
  train_step, eval_step = run_steps.pure_train, run_steps.pure_eval
  on_features = run_steps.on_features

  def train(state, sums, data, labels, rows, views, start, stop, rng):
    def body(i, carry):
      state, sums = carry
      state, metrics = train_step(state, _batch(data, labels, rows[i], views[i], mesh,
                                                on_features), rng)
      return state, steps.combine_metrics(sums, metrics)
    return lax.fori_loop(start, stop, body, (state, sums))

  def evaluate(state, sums, data, labels, rows, views, start, stop):
    def body(i, sums):
      return steps.combine_metrics(sums, eval_step(state, _batch(data, labels, rows[i], views[i],
                                                                  mesh, on_features)))
    return lax.fori_loop(start, stop, body, sums)

  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  common = (data, repl, repl, repl, repl, repl)  # data, labels, rows, views, start, stop
  return Chunks(
      train=jax.jit(train, in_shardings=(repl, repl) + common + (repl,),
                    out_shardings=(repl, repl), donate_argnums=(0,)),
      eval=jax.jit(evaluate, in_shardings=(repl, repl) + common, out_shardings=repl))


# ---------------------------------------------------------------------------------------------
# Whether the data goes to the devices

def _host_available_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget(mesh: Mesh) -> tuple[int, bool, str]:
  """(bytes, per_device, what it is) that 'auto' may fill: per device where devices report
  their memory, else (CPU) for all of them together, in host memory."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  free = []
  for d in local:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except  (a backend without the query)
      stats = None
    if not stats or not stats.get("bytes_limit"):
      break
    free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  else:
    least = min(free)
    return (int(DEVICE_FRACTION * least), True,
            f"{DEVICE_FRACTION:.0%} of the {least / _GB:.1f} GB free on each {local[0].device_kind}")
  avail = _host_available_bytes()
  return (int(HOST_FRACTION * avail), False,
          f"{HOST_FRACTION:.0%} of the {avail / _GB:.1f} GB of host memory available")


def _padded_rows(n: int, devices: int) -> int:
  return -(-n // devices) * devices


def bytes_needed(datasets, splits, devices: int) -> tuple[int, int]:
  """(bytes per device, bytes in all) of `splits` stored sharded over `devices`."""
  total = 0
  for split in splits:
    shape, dtype = datasets.split_array_spec(split)
    rows = _padded_rows(shape[0] * shape[1], devices)
    total += rows * math.prod(shape[2:]) * np.dtype(dtype).itemsize
  return total // devices, total


def decide(mode: str, datasets, mesh: Mesh, *, on_features: bool = False) -> tuple[bool, str]:
  """(use it, why): `mode` (config.data.device_cache) against what the run and its devices
  allow."""
  if mode == "off":
    return False, "config.data.device_cache='off'"
  # 'auto' on a CPU keeps images on the host: they are in its memory already, and XLA:CPU ran
  # the cats-vs-dogs CNN's step inside a loop body far slower than jitted alone (measured in
  # docs/performance_gpu.md). Cached features (head steps only) gain there: no host work a step.
  cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
  if mode == "auto" and cpu and not on_features:
    return False, ("config.data.device_cache='auto' feeds images from the host on a CPU "
                   "(they are in its memory already); 'on' forces device-resident epochs")
  why_not = None
  if not datasets.cache:
    why_not = "config.data.cache=False (nothing is decoded up front)"
  elif jax.process_count() > 1:
    why_not = f"a multi-process run ({jax.process_count()} processes feed their own slices)"
  if why_not:
    if mode == "on":
      raise errors.ConfigError(
          f"config.data.device_cache='on' is impossible here: {why_not}. Use 'auto' (device-"
          "resident where it can be) or 'off'.")
    return False, why_not
  splits = used_splits(datasets)
  per_device, total = bytes_needed(datasets, splits, mesh.devices.size)
  limit, per_dev, what = budget(mesh)
  need = per_device if per_dev else total
  size = f"{need / _GB:.2f} GB{' per device' if per_dev else ''}"
  if need > limit:
    if mode == "on":
      logging.warning("config.data.device_cache='on': %s of data, over the 'auto' budget (%s)",
                      size, what)
      return True, f"config.data.device_cache='on' ({size})"
    return False, (f"{size} of data, over the budget ({what}); config.data.device_cache='on' "
                   "forces it")
  return True, f"{size}, within the budget ({what})"


def used_splits(datasets) -> list[str]:
  return [s for s in SPLITS if datasets.num_examples.get(s, 0)]


# ---------------------------------------------------------------------------------------------
# The data on the devices, and its epochs

@dataclasses.dataclass(frozen=True)
class _Stored:
  data: jax.Array     # unsigned [views * n (padded), ...], sharded on 'data'
  labels: jax.Array   # int32 [n], replicated


def _store(array: np.ndarray, labels: np.ndarray, mesh: Mesh) -> _Stored:
  """[views, n, ...] (uint8 images or float32 features) -> its unsigned bits on the mesh."""
  a = np.ascontiguousarray(array)
  if a.dtype == np.float32:
    a = a.view(np.uint32)
  elif a.dtype != np.uint8:
    raise TypeError(f"cannot keep {a.dtype} data on the devices exactly (uint8, float32)")
  a = a.reshape((-1,) + a.shape[2:])
  extra = _padded_rows(len(a), mesh.devices.size) - len(a)
  if extra:
    a = np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])
  return _Stored(jax.device_put(a, sharding.data_sharding(mesh)),
                 jax.device_put(np.asarray(labels, np.int32), sharding.replicated(mesh)))


class Resident:
  """A run's splits on the devices, and the feeds and evaluations that read them."""

  def __init__(self, mesh: Mesh, chunks: Chunks, datasets, stored: dict, train_sums, eval_sums):
    self._mesh, self._chunks = mesh, chunks
    self._datasets, self._stored = datasets, stored
    self._train_sums, self._eval_sums = train_sums, eval_sums
    self._eval_rows = {}

  @property
  def splits(self) -> list[str]:
    return list(self._stored)

  def _rows(self, rows: np.ndarray, views: np.ndarray, pad: bool) -> tuple:
    if pad:  # as shard_batch(pad=True): masked rows up to a multiple of the local devices
      extra = -rows.shape[1] % sharding.local_device_count(self._mesh)
      rows = np.pad(rows, ((0, 0), (0, extra)), constant_values=-1)
      views = np.pad(views, ((0, 0), (0, extra)))
    repl = sharding.replicated(self._mesh)
    return (jax.device_put(rows.astype(np.int32), repl),
            jax.device_put(views.astype(np.int32), repl), len(rows))

  def train_feed(self, epoch: int, rng, every: int) -> "Feed":
    """The steps of epoch `epoch` (0-based, as `Datasets.train_rows`), in chunks of `every`."""
    rows, views, n = self._rows(*self._datasets.train_rows(epoch), pad=False)
    return Feed(self._chunks.train, self._stored["train"], rows, views, n, rng, every,
                self._train_sums)

  def evaluate_split(self, state, split: str) -> dict:
    """What evaluation.evaluate_batches returns for the host batches of `split`."""
    if split not in self._eval_rows:
      self._eval_rows[split] = self._rows(*self._datasets.eval_rows(split), pad=True)
    rows, views, n = self._eval_rows[split]
    s = self._stored[split]
    sums, start = self._eval_sums, 0
    for stop in chunk_ends(0, n, max(n, 1)):
      sums = self._chunks.eval(state, sums, s.data, s.labels, rows, views, np.int32(start),
                               np.int32(stop))
      start = stop
    host = jax.device_get(sums)
    out = steps.summarize(host)
    out["confusion"] = np.asarray(host["confusion"], np.int64)
    return out


class Feed:
  """One epoch's steps on resident data: `run(state, sums, start, stop)` is one jitted call."""

  def __init__(self, train_chunk, stored: _Stored, rows, views, steps_: int, rng, every: int,
               zero_sums):
    self._train, self._stored = train_chunk, stored
    self._rows, self._views, self._rng = rows, views, rng
    self._every, self._zero = every, zero_sums
    self.steps = steps_

  def chunk_ends(self, start: int) -> list[int]:
    return chunk_ends(start, self.steps, self._every)

  def run(self, state, sums, start: int, stop: int):
    sums = self._zero if sums is None else sums
    return self._train(state, sums, self._stored.data, self._stored.labels, self._rows,
                       self._views, np.int32(start), np.int32(stop), self._rng)


def load(run_steps: steps.Steps, datasets, mesh: Mesh, mode: str) -> Optional[Resident]:
  """The run's splits on the devices when `mode` (config.data.device_cache) allows it, else
  None (the host feeds the batches; the log says why). Its epochs run `run_steps`' functions."""
  use, why = decide(mode, datasets, mesh, on_features=run_steps.on_features)
  if not use:
    logging.info("host-fed batches: %s", why)
    return None
  stored = {}
  for split in used_splits(datasets):
    with timing.phase("decoding"):
      array = datasets.split_array(split)
    with timing.phase("to_device"):
      stored[split] = _store(array, datasets.split_labels(split), mesh)
  with timing.phase("to_device"):
    jax.block_until_ready([(s.data, s.labels) for s in stored.values()])
  logging.info("device-resident data: %s (%s)", ", ".join(
      f"{s} {datasets.num_examples[s]}" for s in stored), why)
  chunks = compile_chunks(run_steps, mesh)
  repl = sharding.replicated(mesh)
  return Resident(mesh, chunks, datasets, stored,
                  jax.device_put(steps.zero_metrics(train=True), repl),
                  jax.device_put(steps.zero_metrics(run_steps.classes, train=False), repl))
