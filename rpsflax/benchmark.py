r"""Throughput of a config on this machine: jit steps, backbone forward, input pipeline, and Keras.

  python -m rpsflax.benchmark --config=configs/rps.py                       # a table
  python -m rpsflax.benchmark --config=configs/rps.py --json                # one JSON object
  python -m rpsflax.benchmark --config=configs/rps.py --compare-keras \
      --data_dir=../shared/data/rps --batch_size=32 --steps=5 --repeats=5

Every figure is images/second, the median over round-robin timed runs, after compilation and
`--warmup` untimed calls. By default the rounds are set by a time budget (`--seconds`, 60: at
least 3 rounds, more while they fit), so a CPU run finishes in a few minutes and a GPU run takes
many short steps; `--repeats=N` fixes the count instead. Each round is logged as it ends. A
timed run repeats `--steps` calls (then block_until_ready) until it has lasted `--min_seconds`. The figures are timed round-robin (run r of every figure, then run
r+1), each run after one untimed call (unless a call takes over 5 s), so that load drifting on a
shared machine, or switching between programs, hits every figure alike; ratios between figures
are medians of per-round ratios. Inputs are device-resident synthetic uint8 batches (values do
not change the work), parameters are random (`--weights` loads real ones; speed does not depend
on them).

- train_images_per_sec: the full jit train step (on-device augmentation, preprocessing, forward,
  backward of the trainable part, optimizer update; frozen VGG16 + head for rps, the CNN for
  catsdogs), state donated.
- eval_images_per_sec: the eval step. forward_images_per_sec: preprocessing + backbone alone.
- finetune_images_per_sec: the train step with everything trainable; the ratios
  frozen_step_over_forward and finetune_step_over_forward (time per image relative to the
  forward pass) show what freezing saves; *_flops_over_forward are the same ratios from XLA's
  cost analysis (deterministic).
- augment_images_per_sec: the on-device augmentation alone. cached_head_images_per_sec: the head
  train step on cached features (rpsflax.features), and cached_features_speedup_estimate for the
  config's epochs and views.
- pipeline (needs TensorFlow and --data_dir): decode_images_per_sec (decode + resize once into
  the cache), cached_epoch_images_per_sec (an epoch of batches from the cache: what epochs 2..N
  cost), uncached_epoch_images_per_sec (decode every epoch); pipeline_images_per_sec is the one
  of the two that config.data.cache selects.
- --compare-keras (needs TensorFlow/Keras): the same model, batch, size and optimizer in Keras 3
  (frozen layers trainable=False, `train_on_batch` on the same arrays as tf tensors, after
  warm-up), run in a subprocess of this invocation (before JAX takes the accelerator) ->
  keras_train_images_per_sec, keras_forward_images_per_sec, train_speedup_vs_keras. Keras gets
  the already preprocessed batch and NO augmentation; our train step augments on device, so
  the speed-up is conservative.
- peak_gflops_per_sec: this machine's limit, a jitted 2048x2048 dot in the config's dtype;
  forward_gflops_per_sec (XLA's flop count of the forward x its rate), forward_fraction_of_peak,
  and keras_forward_gflops_per_sec (the same flops at Keras' forward rate).
- Keras on JAX (with --compare-keras): the same worker with KERAS_BACKEND=jax and XLA's default
  flags -> keras_jax_*_images_per_sec, train/eval_speedup_vs_keras_jax. eval_speedup_vs_keras*
  compare our eval step (backbone + head) with Keras' backbone predict_on_batch.
- --compare-flags: the JAX steps again in a subprocess with this project's XLA:CPU flags off
  (RPSFLAX_XLA_CPU_FLAGS=0) -> default_xla_flags, xla_flags_train_speedup.
- scaling (several devices): train images/s on 1, 2, 4, ..., N devices, `--batch_size` per device.

Figures that need TensorFlow are None when it is missing, with the reason under "skipped".
"""

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from rpsflax import xla_cpu  # noqa: E402
from rpsflax import errors

FIGURES = (
    "train_images_per_sec", "eval_images_per_sec", "forward_images_per_sec",
    "finetune_images_per_sec", "augment_images_per_sec", "cached_head_images_per_sec",
    "frozen_step_over_forward", "finetune_step_over_forward",
    "train_step_flops", "forward_flops", "finetune_step_flops",
    "frozen_flops_over_forward", "finetune_flops_over_forward",
    "train_step_donates_state", "train_step_host_transfers", "compile_seconds",
    "peak_memory_bytes", "cached_features_speedup_estimate",
    "pipeline_images_per_sec", "decode_images_per_sec", "cached_epoch_images_per_sec",
    "uncached_epoch_images_per_sec", "pipeline_num_images",
    "keras_train_images_per_sec", "keras_forward_images_per_sec", "keras_frozen_step_over_forward",
    "train_speedup_vs_keras", "eval_speedup_vs_keras", "keras_jit_compile",
    "keras_jax_train_images_per_sec", "keras_jax_forward_images_per_sec",
    "train_speedup_vs_keras_jax", "eval_speedup_vs_keras_jax",
    "peak_gflops_per_sec", "forward_gflops_per_sec", "keras_forward_gflops_per_sec",
    "forward_fraction_of_peak", "default_xla_flags", "xla_flags_train_speedup", "scaling",
)


# ---------------------------------------------------------------------------------------------
# Timing

MIN_SECONDS = 1.0  # a timed run repeats its `steps` calls until it lasted this long
SETTLE_MAX_SECONDS = 5.0  # calls faster than this get one untimed call before each timed run


def _time_once(call, steps: int, images: int, min_seconds: float = MIN_SECONDS,
               block: Optional[Callable] = None) -> float:
  """images/s of `steps` calls (blocking at the end), repeated until min_seconds have passed:
  a fast figure is then not one short, noisy sample. `block(result)` waits for the work
  (default jax.block_until_ready; the Keras worker passes its own, without importing JAX)."""
  if block is None:
    import jax  # noqa: PLC0415

    block = jax.block_until_ready
  t0 = time.perf_counter()
  calls = 0
  while True:
    out = None
    for _ in range(steps):
      out = call()
    block(out)
    calls += steps
    elapsed = time.perf_counter() - t0
    if elapsed >= min_seconds:
      return calls * images / elapsed


MIN_ROUNDS, MAX_ROUNDS = 3, 50  # with a time budget (--repeats=0): rounds of every figure
BUDGET_SECONDS = 60.0  # default budget of the timed rounds (the Keras peers run inside them)


def more_rounds(done: int, repeats: int, budget_seconds: float, elapsed: float) -> bool:
  """Fixed count (repeats > 0), or by time: at least MIN_ROUNDS rounds, then more while the
  next round (as long as the mean round so far) still ends within budget_seconds."""
  if repeats > 0:
    return done < repeats
  if done < MIN_ROUNDS:
    return True
  return done < MAX_ROUNDS and elapsed * (done + 1) / done <= budget_seconds


def median_rate(call: Callable[[], object], images_per_call: int, *, steps: int, repeats: int,
                warmup: int, min_seconds: float = MIN_SECONDS) -> tuple[float, list[float]]:
  """(median images/s, images/s of each repeat): `call()` returns something to block on."""
  rates = interleaved({"x": (call, images_per_call)}, steps=steps, repeats=repeats,
                      warmup=warmup, min_seconds=min_seconds)["x"]
  return statistics.median(rates), rates


def interleaved(runners: dict, *, steps: int, repeats: int, warmup: int,
                min_seconds: float = MIN_SECONDS, budget_seconds: float = BUDGET_SECONDS,
                peers: Optional[dict] = None, log: Callable[[str], None] = lambda s: None) -> dict:
  """{name: [images/s per repeat]}: every runner once per round, round-robin; `repeats` rounds,
  or (repeats=0) as many as fit in budget_seconds (see `more_rounds`), logging each round.
  peers: {name: KerasPeer}; each times one round of its figures after ours in every round
  (rates '<name>_train', '<name>_forward').

  On a shared machine the load drifts; interleaving exposes every figure to the same drift, so
  ratios between figures (taken per round, see `paired_ratio`) stay meaningful.
  runners: {name: (call, images per call)}; call() returns something to block on.
  """
  import jax  # noqa: PLC0415

  per_call = {}
  for name, (call, _) in runners.items():
    per_call[name] = float("inf")
    for _ in range(warmup):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      per_call[name] = time.perf_counter() - t0
  rates = {name: [] for name in runners}
  peers = peers or {}
  for name in peers:
    rates[f"{name}_train"], rates[f"{name}_forward"] = [], []
  t0, done = time.perf_counter(), 0
  while more_rounds(done, repeats, budget_seconds, time.perf_counter() - t0):
    for name, (call, images) in runners.items():
      if per_call[name] < SETTLE_MAX_SECONDS:  # switching figures costs (allocations, caches):
        jax.block_until_ready(call())        # one untimed call first, unless that is too dear
      rates[name].append(_time_once(call, steps, images, min_seconds))
    for name, peer in peers.items():
      for figure, rate in peer.round().items():
        rates[f"{name}_{figure}"].append(rate)
    done += 1
    log(f"  round {done} ({time.perf_counter() - t0:.0f}s): " +
        ", ".join(f"{k} {v[-1]:,.1f}" for k, v in rates.items()) + " img/s")
  return rates


def paired_ratio(fast: list, slow: list) -> Optional[float]:
  """Median over rounds of fast[r] / slow[r] (images/s): how many times slower `slow` is."""
  if not fast or not slow:
    return None
  return statistics.median(f / s for f, s in zip(fast, slow))


def _ratio(a, b):
  return None if a is None or b is None or not b else a / b


# ---------------------------------------------------------------------------------------------
# Configs and inputs

def bench_config(config, *, batch_size: int = 0, image_size: int = 0, dtype: str = "",
                 weights: str = ""):
  """The config to measure: overrides applied, weights '' (random) unless given."""
  c = config.copy_and_resolve_references()
  if batch_size:
    c.batch_size = c.eval_batch_size = int(batch_size)
  else:
    c.eval_batch_size = c.batch_size
  if image_size:
    c.data.image_size = int(image_size)
  if dtype:
    c.model.dtype = dtype
  c.weights = weights
  return c


def finetune_config(config):
  c = config.copy_and_resolve_references()
  c.trainable, c.lr_groups = (".*",), ()
  return c


def random_params(config, model, seed: int = 0) -> dict:
  """He-normal kernels, zero biases, from the model's shapes in NumPy (no init compile)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  size = config.data.image_size
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False)["params"],
                          jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.RandomState(seed)

  def init(path, s):
    if path[-1].key == "bias":
      return np.zeros(s.shape, np.float32)
    std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * std).astype(np.float32)
  return jax.tree_util.tree_map_with_path(init, shapes)


def model_params(config, model):
  if not config.weights:
    return random_params(config, model)
  from rpsflax import models, weights  # noqa: PLC0415

  return weights.load_for_model(config.weights, random_params(config, model),
                                models.keras_layer_map(config))


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """uint8 images and labels: the host arrays both JAX and Keras are fed."""
  rng = np.random.RandomState(seed)
  size = config.data.image_size
  classes = max(2, int(config.head.num_classes))
  return {"image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
          "label": rng.randint(0, classes, batch_size).astype(np.int32),
          "mask": np.ones(batch_size, bool)}


def _flops(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # pylint: disable=broad-except  (not every backend reports costs)
    return None


def _compile(jitted, *args):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


_HOST_OPS = ("callback", "outfeed", "infeed", "send-start", "recv-start", "host-compute")


def host_ops(compiled) -> list[str]:
  """Host round-trip ops in a compiled computation's HLO (python callbacks, in/outfeed)."""
  text = compiled.as_text() or ""
  return sorted({op for op in _HOST_OPS if op in text})


# ---------------------------------------------------------------------------------------------
# JAX figures

def bench_steps(config, mesh, *, steps: int, repeats: int, warmup: int, finetune: bool = True,
                cached: bool = True, min_seconds: float = MIN_SECONDS,
                budget_seconds: float = BUDGET_SECONDS, peers: Optional[dict] = None,
                log: Callable[[str], None] = lambda s: None) -> dict:
  """Train/eval/forward/finetune/augment/cached-head throughput of `config` on `mesh`, with the
  Keras peers' figures timed in the same rounds (see `interleaved`).

  Everything is compiled and warmed up first, then timed round-robin (see `interleaved`).
  """
  import jax  # noqa: PLC0415

  from rpsflax import augment, features, models, sharding, steps  # noqa: PLC0415

  model = models.build_model(config)
  b = int(config.batch_size)
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  host = synthetic_batch(config, b)
  batch = sharding.shard_batch(host, mesh)
  rng = jax.device_put(jax.random.PRNGKey(0), repl)
  host_params = model_params(config, model)  # each state gets its own device copy (donated)
  params = jax.device_put(host_params, repl)
  out, compile_s, runners = {}, {}, {}

  def step_runner(name, cfg, jitted, inputs):
    """A donating train step as a runner: its state is threaded through the calls."""
    state = jax.device_put(steps.create_train_state(cfg, model, params=host_params), repl)
    compiled, compile_s[name] = _compile(jitted, state, inputs, rng)
    holder = {"state": state}

    def call():
      holder["state"], metrics = compiled(holder["state"], inputs, rng)
      return metrics["loss_sum"]
    runners[name] = (call, b)
    return compiled, state

  c_train, state0 = step_runner("train", config, steps.jit_train_step(config, model, mesh), batch)
  first_leaf = jax.tree.leaves(state0.params)[0]
  runners["train"][0]()
  out["train_step_donates_state"] = bool(first_leaf.is_deleted())
  problems = host_ops(c_train)
  with jax.transfer_guard("disallow"):  # any implicit host<->device copy raises
    try:
      runners["train"][0]()
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"{type(e).__name__}: {str(e)[:200]}")
  out["train_step_host_transfers"] = problems
  out["train_step_flops"] = _flops(c_train)

  state = steps.TrainState(step=None, params=params, opt_state=None)
  ev, compile_s["eval"] = _compile(steps.jit_eval_step(config, model, mesh), state, batch)
  runners["eval"] = (lambda: ev(state, batch)["count"], b)

  fwd_fn = lambda p, x: model.apply({"params": p}, steps.prepare_images(config, x),
                                    method="features")
  fwd, compile_s["forward"] = _compile(jax.jit(fwd_fn, in_shardings=(repl, data),
                                               out_shardings=data), params, batch["image"])
  runners["forward"] = (lambda: fwd(params, batch["image"]), b)
  out["forward_flops"] = _flops(fwd)

  if config.augment.enabled:
    aug_fn = lambda r, x: augment.augment_batch(r, x, config.augment)
    aug, compile_s["augment"] = _compile(jax.jit(aug_fn, in_shardings=(repl, data),
                                                 out_shardings=data), rng, batch["image"])
    runners["augment"] = (lambda: aug(rng, batch["image"]), b)

  out["finetune_step_flops"] = None
  if finetune:
    ft = finetune_config(config)
    c_ft, _ = step_runner("finetune", ft, steps.jit_train_step(ft, model, mesh), batch)
    out["finetune_step_flops"] = _flops(c_ft)

  if cached and _cacheable(config):
    cfg = _cached(config)
    fb = {**host, "image": np.zeros((b,) + features.feature_shape(cfg, model), np.float32)}
    step_runner("cached_head", cfg, steps.compile_steps(cfg, model, mesh, on_features=True).train,
                sharding.shard_batch(fb, mesh))

  log(f"JAX: compiled {', '.join(compile_s)} in {sum(compile_s.values()):.0f}s; timing")
  rates = interleaved(runners, steps=steps, repeats=repeats, warmup=warmup,
                      min_seconds=min_seconds, budget_seconds=budget_seconds, peers=peers,
                      log=log)
  for name in ("train", "eval", "forward", "augment", "finetune", "cached_head"):
    out[f"{name}_images_per_sec"] = statistics.median(rates[name]) if name in rates else None
  for name in peers or {}:
    for figure in ("train", "forward"):
      out[f"{name}_{figure}_images_per_sec"] = statistics.median(rates[f"{name}_{figure}"])
    out[f"train_speedup_vs_{name}"] = paired_ratio(rates["train"], rates[f"{name}_train"])
    out[f"eval_speedup_vs_{name}"] = paired_ratio(rates["eval"], rates[f"{name}_forward"])
  out["frozen_step_over_forward"] = paired_ratio(rates["forward"], rates["train"])
  out["finetune_step_over_forward"] = paired_ratio(rates["forward"], rates.get("finetune"))
  out["frozen_flops_over_forward"] = _ratio(out["train_step_flops"], out["forward_flops"])
  out["finetune_flops_over_forward"] = _ratio(out["finetune_step_flops"], out["forward_flops"])
  out["compile_seconds"] = {k: round(v, 2) for k, v in compile_s.items()}
  out["samples"] = {k: [round(r, 3) for r in v] for k, v in rates.items()}
  out["peak_memory_bytes"] = _peak_memory(mesh)
  return out


def _cacheable(config) -> bool:
  """Whether cached features apply (the backbone is frozen)."""
  from rpsflax import features  # noqa: PLC0415

  try:
    features.check_config(_cached(config))
    return True
  except ValueError:
    return False


def _cached(config):
  c = config.copy_and_resolve_references()
  c.cached_features.enabled = True
  return c


def _peak_memory(mesh) -> Optional[int]:
  try:
    stats = [d.memory_stats() for d in mesh.devices.flat]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    return int(max(peaks)) if peaks and None not in peaks else None
  except Exception:  # pylint: disable=broad-except  (CPU backends have no stats)
    return None


def cached_speedup_estimate(config, forward_ips, train_ips, head_ips,
                            num_train: int = 2520) -> Optional[dict]:
  """Modelled wall time of the config's epochs, uncached vs cached (features once, then the head).

    uncached = E*N/train; cached = (1+K)*N/forward + E*N/head. N defaults to the full RPS
    training set (2520 images). A model from measured rates, not a measurement of a run.
    """
  if not (forward_ips and train_ips and head_ips):
    return None
  e = int(config.num_epochs)
  k = int(config.cached_features.get("augmented_views", 0)) if config.get("cached_features") else 0
  k = k or 4  # the rps_cached recipe's views when the config being measured has none
  uncached = e * num_train / train_ips
  cached = (1 + k) * num_train / forward_ips + e * num_train / head_ips
  return {"epochs": e, "augmented_views": k, "num_train": num_train,
          "uncached_seconds": round(uncached, 2), "cached_seconds": round(cached, 2),
          "speedup": round(uncached / cached, 2)}


def bench_scaling(config, *, steps: int, repeats: int, warmup: int,
                  min_seconds: float = MIN_SECONDS) -> list[dict]:
  """Train images/s over 1, 2, 4, ..., N local devices, config.batch_size per device."""
  import jax  # noqa: PLC0415

  from rpsflax import models, sharding, steps  # noqa: PLC0415

  counts = (sharding.device_counts_to_try() if hasattr(sharding, "device_counts_to_try")
            else [jax.local_device_count()])
  model = models.build_model(config)
  params = model_params(config, model)
  rows = []
  for n in counts:
    mesh = sharding.make_mesh(jax.local_devices()[:n])
    c = config.copy_and_resolve_references()
    c.batch_size = c.eval_batch_size = int(config.batch_size) * n
    repl = sharding.replicated(mesh)
    state = jax.device_put(steps.create_train_state(c, model, params=params), repl)
    batch = sharding.shard_batch(synthetic_batch(c, c.batch_size), mesh)
    rng = jax.device_put(jax.random.PRNGKey(0), repl)
    compiled, _ = _compile(steps.jit_train_step(c, model, mesh), state, batch, rng)
    holder = {"state": state}

    def call():
      holder["state"], metrics = compiled(holder["state"], batch, rng)
      return metrics["loss_sum"]
    rate, _ = median_rate(call, c.batch_size, steps=steps, repeats=repeats, warmup=warmup,
                          min_seconds=min_seconds)
    rows.append({"devices": n, "global_batch": c.batch_size,
                 "train_images_per_sec": rate, "per_device_images_per_sec": rate / n})
  for r in rows:
    r["efficiency"] = r["per_device_images_per_sec"] / rows[0]["per_device_images_per_sec"]
  return rows


# ---------------------------------------------------------------------------------------------
# Input pipeline (TensorFlow)

def tensorflow_missing() -> Optional[str]:
  """Why TensorFlow figures cannot run here, or None."""
  try:
    if importlib.util.find_spec("tensorflow") is None:
      return "tensorflow is not installed"
    import tensorflow  # noqa: F401,PLC0415
  except Exception as e:  # pylint: disable=broad-except
    return f"tensorflow does not import ({type(e).__name__}: {e})"
  return None


def bench_pipeline(config, data_dir: str, *, repeats: int, epochs: int = 2) -> dict:
  """Decode-once, cached-epoch and uncached-epoch images/s on a real folder (train split)."""
  from rpsflax import input_pipeline  # noqa: PLC0415

  kw = dict(image_size=config.data.image_size, batch_size=int(config.batch_size),
            resize_method=config.data.resize_method,
            num_parallel_calls=config.data.num_parallel_calls)

  def epoch_rate(ds, epoch):
    t0, n = time.perf_counter(), 0
    for batch in ds.train_batches(epoch):
      n += int(batch["mask"].sum())
    return n / (time.perf_counter() - t0)

  decode, cached, uncached, n = [], [], [], 0
  for r in range(repeats):
    ds = input_pipeline.folder_datasets(data_dir, cache=True, **kw)
    n = ds.num_examples["train"]
    t0 = time.perf_counter()
    ds.prepare(["train"])
    decode.append(n / (time.perf_counter() - t0))
    cached.append(statistics.median(epoch_rate(ds, e) for e in range(epochs)))
    del ds
  ds = input_pipeline.folder_datasets(data_dir, cache=False, **kw)
  for r in range(repeats):
    uncached.append(epoch_rate(ds, r))
  out = {"decode_images_per_sec": statistics.median(decode),
         "cached_epoch_images_per_sec": statistics.median(cached),
         "uncached_epoch_images_per_sec": statistics.median(uncached),
         "pipeline_num_images": n,
         "samples": {"decode": decode, "cached_epoch": cached, "uncached_epoch": uncached}}
  out["pipeline_images_per_sec"] = (out["cached_epoch_images_per_sec"] if config.data.cache
                                    else out["uncached_epoch_images_per_sec"])
  return out


# ---------------------------------------------------------------------------------------------
# Keras (in a subprocess: before JAX holds the accelerator, and TF's memory is freed after)

def keras_spec(config) -> dict:
  """What the Keras worker needs: the model, which layers train, the optimizer."""
  from rpsflax import models, optim  # noqa: PLC0415
  from flax import traverse_util  # noqa: PLC0415

  if config.model.name == "vgg16":
    backbone = models.vgg16_layer_names(include_top=False)
  else:
    backbone = models.cnn_conv_names()
  head = [f"hidden_{i}" for i in range(len(config.head.hidden))] + ["predictions"]
  tree = {"backbone": {n: {"kernel": 0, "bias": 0} for n in backbone},
          "head": {n: {"kernel": 0, "bias": 0} for n in head}}
  labels = traverse_util.flatten_dict(optim.param_labels(tree, config))
  trainable = {}
  for (part, layer, _), label in labels.items():
    trainable[layer] = trainable.get(layer, False) or label != optim.FROZEN
  return {"model": config.model.name, "dtype": config.model.dtype,
          "image_size": int(config.data.image_size), "preprocess": config.preprocess,
          "head": config.head.to_dict(), "optim": config.optim.to_dict(),
          "lr_groups": [list(g) for g in config.lr_groups], "backbone": backbone,
          "trainable": trainable}


KERAS_BACKENDS = ("tensorflow", "jax")  # the tutorials' Keras, and the peer a JAX user would pick


class KerasPeer:
  """Keras 3 timing the same model in a worker process, one timed round per `round()` call, so
  its rounds interleave with the JAX figures' (see `interleaved`): load on a shared machine then
  hits both alike, and speed-ups are medians of per-round ratios.

  backend='jax' runs Keras on JAX with XLA's default flags (what a user of Keras on JAX gets;
  this project's XLA:CPU flags are switched off in that worker). The worker is started before
  JAX takes the accelerator; `close()` returns its details (compile time, versions, devices).
  """

  def __init__(self, config, host_batch: dict, *, steps: int, warmup: int,
               min_seconds: float = MIN_SECONDS, backend: str = "tensorflow"):
    self.backend = backend
    self.tmp = tempfile.TemporaryDirectory(prefix="rpsflax_keras_")
    tmp = self.tmp.name
    np.savez(os.path.join(tmp, "batch.npz"), image=host_batch["image"],
             label=host_batch["label"])
    spec = {"config": keras_spec(config), "batch": os.path.join(tmp, "batch.npz"),
            "steps": steps, "warmup": warmup, "min_seconds": min_seconds}
    with open(os.path.join(tmp, "spec.json"), "w") as f:
      json.dump(spec, f)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # forced host devices are for JAX only
    env["KERAS_BACKEND"] = backend
    env[xla_cpu.OPT_OUT_ENV] = "0"  # Keras on JAX as its users run it: XLA's default flags
    self.stderr = open(os.path.join(tmp, "stderr.txt"), "w+")
    self.proc = subprocess.Popen([sys.executable, "-m", "rpsflax.benchmark", "--keras_worker",
                                  os.path.join(tmp, "spec.json")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
    self.ready = self._reply()  # built, compiled and warmed up

  def _reply(self) -> dict:
    for line in self.proc.stdout:  # protocol lines start with '@@'; anything else is noise
      if line.startswith("@@"):
        return json.loads(line[2:])
    self.stderr.seek(0)
    raise RuntimeError(f"Keras ({self.backend}) worker failed ({self.proc.wait()}): "
                       f"{self.stderr.read()[-2000:]}")

  def _send(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._reply()

  def round(self) -> dict:
    """One timed run of each Keras figure: {'train': img/s, 'forward': img/s}."""
    return self._send("round")

  def close(self) -> dict:
    try:
      return {**self.ready, **self._send("done")}
    finally:
      self.proc.wait(timeout=60)
      self.stderr.close()
      self.tmp.cleanup()


def keras_worker(spec_path: str) -> None:
  """Run in a fresh process: build, compile and warm up the Keras model of `spec`, then time one
  round per 'round' line on stdin (replies are '@@' + JSON lines on stdout) until 'done'."""
  with open(spec_path) as f:
    spec = json.load(f)
  import keras  # noqa: PLC0415 (KERAS_BACKEND is set by KerasPeer)

  on_tf = keras.backend.backend() == "tensorflow"
  if on_tf:
    import tensorflow as tf  # noqa: PLC0415

    for gpu in tf.config.list_physical_devices("GPU"):
      tf.config.experimental.set_memory_growth(gpu, True)
  cfg = spec["config"]
  if cfg["dtype"] == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  elif cfg["dtype"] == "float16":
    keras.mixed_precision.set_global_policy("mixed_float16")
  model, base = _keras_model(keras, cfg)
  data = np.load(spec["batch"])
  x = _keras_preprocess(keras, cfg, data["image"])
  y = data["label"].astype(np.float32 if cfg["head"]["num_classes"] == 1 else np.int32)
  if on_tf:  # held as tensors, as a tf.data pipeline would hand them over
    x, y = tf.constant(x), tf.constant(y)
  else:
    import jax  # noqa: PLC0415

    x, y = jax.device_put(x), jax.device_put(y)
  b = len(data["label"])

  def reply(obj):
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()

  t0 = time.perf_counter()
  model.train_on_batch(x, y)  # builds and compiles the train function
  base.predict_on_batch(x)
  compile_s = time.perf_counter() - t0
  calls = {"train": lambda: model.train_on_batch(x, y), "forward": lambda: base.predict_on_batch(x)}
  for call in calls.values():
    for _ in range(spec["warmup"]):
      call()
  reply({"keras_compile_seconds": compile_s})
  for line in sys.stdin:
    if line.strip() != "round":
      break
    rates = {}
    for name, call in calls.items():
      call()  # untimed: switching from the other process's work, as the JAX figures do
      # Keras returns host values: converting one means the step has finished.
      rates[name] = _time_once(call, spec["steps"], b, spec["min_seconds"], block=np.asarray)
    reply(rates)
  reply({"keras_jit_compile": bool(model.jit_compile),
         "keras_trainable_weights": len(model.trainable_weights),
         "keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
         "tensorflow_version": tf.__version__ if on_tf else None,
         "keras_devices": ([d.name for d in tf.config.list_logical_devices()] if on_tf
                           else [str(d) for d in jax.devices()])})


def _keras_preprocess(keras, cfg, images):
  x = images.astype(np.float32)
  if cfg["preprocess"] == "vgg16":
    return keras.applications.vgg16.preprocess_input(x)
  if cfg["preprocess"] == "rescale":
    return x * np.float32(1.0 / 255.0)
  return x


def _keras_model(keras, cfg):
  """(model, backbone) as the tutorials build them, trainable flags from the config's labels."""
  L = keras.layers
  size = cfg["image_size"]
  inputs = keras.Input((size, size, 3))
  if cfg["model"] == "vgg16":
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
  else:
    base = keras.Sequential([keras.Input((size, size, 3))], name="cnn")
    for filters, name in zip((32, 64, 128, 128), cfg["backbone"]):
      base.add(L.Conv2D(filters, (3, 3), activation="relu", name=name))
      base.add(L.MaxPooling2D((2, 2)))
  flags = [cfg["trainable"][n] for n in cfg["backbone"]]
  if not any(flags):
    base.trainable = False  # the tutorial's way
  else:
    for name, flag in zip(cfg["backbone"], flags):
      base.get_layer(name).trainable = flag
  h = cfg["head"]
  x = base(inputs, training=False) if not any(flags) else base(inputs)
  pool = {"max": L.GlobalMaxPooling2D, "avg": L.GlobalAveragePooling2D, "flatten": L.Flatten}
  x = pool[h["pooling"]]()(x)
  x = L.Dropout(h["dropout"])(x)
  for i, width in enumerate(h["hidden"]):
    x = L.Dense(width, activation=h["hidden_activation"], name=f"hidden_{i}")(x)
    if h["hidden_dropout"]:
      x = L.Dropout(h["hidden_dropout"])(x)
  sigmoid = h["num_classes"] == 1
  out = L.Dense(h["num_classes"], activation="sigmoid" if sigmoid else "softmax",
                dtype="float32", name="predictions")(x)
  model = keras.Model(inputs, out)
  for i in range(len(h["hidden"])):
    model.get_layer(f"hidden_{i}").trainable = cfg["trainable"][f"hidden_{i}"]
  model.get_layer("predictions").trainable = cfg["trainable"]["predictions"]
  o = cfg["optim"]
  if o["name"] == "rmsprop":
    opt = keras.optimizers.RMSprop(o["learning_rate"], rho=o["rho"], momentum=o["momentum"],
                                   epsilon=o["epsilon"])
  elif o["name"] == "adam":
    opt = keras.optimizers.Adam(o["learning_rate"], epsilon=o["epsilon"])
  else:
    opt = keras.optimizers.SGD(o["learning_rate"], momentum=o["momentum"])
  model.compile(optimizer=opt, metrics=["accuracy"],
                loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
  return model, base


# ---------------------------------------------------------------------------------------------
# The whole benchmark

def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow", "keras"):
    try:
      if name in ("tensorflow", "keras") and name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
          out[name] = None
          continue
        from importlib import metadata  # noqa: PLC0415
        out[name] = metadata.version(name)
      else:
        out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  return out


def peak_gflops(dtype: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
  """This machine's matmul rate: a jitted n x n @ n x n dot, GFLOP/s (the best of repeated runs:
  the attainable limit, not a typical figure)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  a = jnp.ones((n, n), dtype)
  dot = jax.jit(lambda a: a @ a)
  jax.block_until_ready(dot(a))
  best, t_end = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < t_end or best == float("inf"):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def bench_default_flags(argv: list[str], timeout: int = 3600) -> dict:
  """The JAX step figures again in a subprocess with XLA's default CPU flags (this project's
  switched off, RPSFLAX_XLA_CPU_FLAGS=0): what the flags of rpsflax/xla_cpu.py buy."""
  skip = ("--compare_keras", "--compare_flags", "--out", "--json", "--data_dir", "--finetune")
  args = [a for a in argv if not a.startswith(skip)]
  env = dict(os.environ)
  env[xla_cpu.OPT_OUT_ENV] = "0"
  env["XLA_FLAGS"] = xla_cpu.without_cpu_flags(env.get("XLA_FLAGS", ""))
  proc = subprocess.run([sys.executable, "-m", "rpsflax.benchmark", *args, "--json",
                         "--nofinetune", "--nocompare_keras", "--nocompare_flags"],
                        capture_output=True, text=True, timeout=timeout, env=env, check=False)
  if proc.returncode:
    raise RuntimeError(f"default-flags benchmark failed ({proc.returncode}): {proc.stderr[-2000:]}")
  r = json.loads(proc.stdout[proc.stdout.index("{"):])
  return {k: r[k] for k in ("train_images_per_sec", "eval_images_per_sec",
                            "forward_images_per_sec", "forward_gflops_per_sec")}


def run(config, *, batch_size: int = 0, image_size: int = 0, dtype: str = "", steps: int = 1,
        repeats: int = 0, warmup: int = 1, data_dir: str = "", compare_keras: bool = False,
        finetune: bool = True, scaling: bool = True, weights: str = "", config_name: str = "",
        min_seconds: float = MIN_SECONDS, budget_seconds: float = BUDGET_SECONDS,
        compare_flags_argv: Optional[list] = None,
        pipeline_repeats: int = 3, log: Callable[[str], None] = lambda s: None) -> dict:
  """Every figure as one dict (see the module docstring); None + a reason under 'skipped'."""
  cfg = bench_config(config, batch_size=batch_size, image_size=image_size, dtype=dtype,
                     weights=weights)
  from rpsflax import config_check  # noqa: PLC0415

  config_check.check_config(cfg)
  result = {k: None for k in FIGURES}
  skipped = {}
  timing = dict(steps=steps, repeats=repeats, warmup=warmup, min_seconds=min_seconds,
                budget_seconds=budget_seconds)
  host = synthetic_batch(cfg, int(cfg.batch_size))
  tf_missing = tensorflow_missing() if (compare_keras or data_dir) else None
  peers: dict = {}

  if compare_keras:  # first: the worker process may use the accelerator before JAX holds it
    if tf_missing:
      skipped["keras"] = f"--compare-keras needs TensorFlow and Keras: {tf_missing}"
    else:
      for backend in KERAS_BACKENDS:
        log(f"Keras ({backend} backend): building and compiling the same model in a worker")
        name = "keras" if backend == "tensorflow" else f"keras_{backend}"
        peers[name] = KerasPeer(cfg, host, steps=steps, warmup=warmup, min_seconds=min_seconds,
                                backend=backend)
  else:
    skipped["keras"] = "not asked for (--compare-keras)"

  import jax  # noqa: PLC0415

  from rpsflax import sharding  # noqa: PLC0415

  devices = jax.local_devices()
  log(f"JAX: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})")
  mesh = sharding.make_mesh(devices[:1])  # the headline figures: one device
  result["peak_gflops_per_sec"] = peak_gflops(str(cfg.model.dtype))
  log(f"JAX: peak {result['peak_gflops_per_sec']:,.0f} GFLOP/s (a 2048^2 {cfg.model.dtype} dot); "
      "compiling the steps")
  try:
    result.update(bench_steps(cfg, mesh, **timing, finetune=finetune, peers=peers, log=log))
  finally:
    details = {name: peer.close() for name, peer in peers.items()}
  for name, d in details.items():
    if name == "keras":
      result["keras_jit_compile"] = d.pop("keras_jit_compile")
    result[f"{name}_details"] = d
  if compare_flags_argv is not None:
    log("JAX with XLA's default CPU flags (RPSFLAX_XLA_CPU_FLAGS=0), in a subprocess")
    result["default_xla_flags"] = bench_default_flags(compare_flags_argv)
    result["xla_flags_train_speedup"] = _ratio(result["train_images_per_sec"],
                                               result["default_xla_flags"]["train_images_per_sec"])
  else:
    skipped["default_xla_flags"] = "not asked for (--compare-flags)"
  if len(devices) > 1 and scaling:
    log("scaling over devices")
    fixed = {k: v for k, v in timing.items() if k != "budget_seconds"}
    result["scaling"] = bench_scaling(cfg, **{**fixed, "repeats": repeats or MIN_ROUNDS})
  else:
    result["scaling"] = [{"devices": 1, "global_batch": int(cfg.batch_size),
                          "train_images_per_sec": result["train_images_per_sec"],
                          "per_device_images_per_sec": result["train_images_per_sec"],
                          "efficiency": 1.0}]
    if len(devices) == 1:
      skipped["scaling"] = "one device: scaling has only the 1-device row"

  if data_dir:
    if tf_missing:
      skipped["pipeline"] = f"the input pipeline needs TensorFlow: {tf_missing}"
    else:
      log(f"input pipeline on {data_dir}")
      p = bench_pipeline(cfg, data_dir, repeats=pipeline_repeats)
      result["samples"].update({f"pipeline_{k}": v for k, v in p.pop("samples").items()})
      result.update(p)
  else:
    skipped["pipeline"] = "no --data_dir (a folder of class subfolders) given"

  per_image = _ratio(result["forward_flops"], int(cfg.batch_size))
  gflops = lambda ips: None if ips is None or per_image is None else per_image * ips / 1e9
  result["forward_gflops_per_sec"] = gflops(result["forward_images_per_sec"])
  result["keras_forward_gflops_per_sec"] = gflops(result["keras_forward_images_per_sec"])
  result["forward_fraction_of_peak"] = _ratio(result["forward_gflops_per_sec"],
                                              result["peak_gflops_per_sec"])
  samples = result.get("samples") or {}
  result["keras_frozen_step_over_forward"] = paired_ratio(samples.get("keras_forward"),
                                                          samples.get("keras_train"))
  result["cached_features_speedup_estimate"] = cached_speedup_estimate(
      cfg, result["forward_images_per_sec"], result["train_images_per_sec"],
      result["cached_head_images_per_sec"])
  if result["cached_head_images_per_sec"] is None:
    skipped["cached_features"] = "the config trains the backbone: nothing to cache"
  if result["augment_images_per_sec"] is None:
    skipped["augment"] = "config.augment.enabled is False"
  if not finetune:
    skipped["finetune"] = "--nofinetune"

  result.update({
      "config": config_name, "model": cfg.model.name, "dtype": cfg.model.dtype,
      "batch_size": int(cfg.batch_size), "image_size": int(cfg.data.image_size),
      "steps": steps, "repeats": repeats, "warmup": warmup, "min_seconds": min_seconds,
      "budget_seconds": budget_seconds, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "weights": cfg.weights or "random (He-normal)",
      "device": str(devices[0]), "device_kind": devices[0].device_kind,
      "device_count": len(devices), "backend": jax.default_backend(),
      "host_cpus": os.cpu_count(), "versions": versions(), "skipped": skipped,
  })
  return result


# ---------------------------------------------------------------------------------------------
# Output

def _fmt(v, unit=""):
  if v is None:
    return "n/a"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:,.2f}{unit}" if abs(v) < 1e4 else f"{v:,.0f}{unit}"
  return f"{v}{unit}"


def format_table(r: dict) -> str:
  lines = [f"rpsflax benchmark: {r['config'] or r['model']} ({r['model']}, {r['dtype']}, "
           f"batch {r['batch_size']}, {r['image_size']}px) on {r['device_kind']} "
           f"[{r['backend']}, {r['device_count']} device(s), {r['host_cpus']} host CPUs]",
           f"median of {len((r.get('samples') or {}).get('train', []))} round-robin runs of >= "
           f"{r['steps']} steps and >= {r['min_seconds']}s each, after {r['warmup']} warm-up "
           f"steps; weights {r['weights']}",
           ""]
  rows = [
      ("train step (frozen as configured)", r["train_images_per_sec"], "img/s"),
      ("eval step", r["eval_images_per_sec"], "img/s"),
      ("backbone forward", r["forward_images_per_sec"], "img/s"),
      ("fine-tune step (all trainable)", r["finetune_images_per_sec"], "img/s"),
      ("augmentation alone (on device)", r["augment_images_per_sec"], "img/s"),
      ("head step on cached features", r["cached_head_images_per_sec"], "img/s"),
      ("train step / forward (time)", r["frozen_step_over_forward"], "x"),
      ("fine-tune step / forward (time)", r["finetune_step_over_forward"], "x"),
      ("train step / forward (XLA flops)", r["frozen_flops_over_forward"], "x"),
      ("fine-tune / forward (XLA flops)", r["finetune_flops_over_forward"], "x"),
      ("train step donates its state", r["train_step_donates_state"], ""),
      ("host round-trips in the train step", r["train_step_host_transfers"] or "none", ""),
      ("decode + resize once", r["decode_images_per_sec"], "img/s"),
      ("epoch from the decoded cache", r["cached_epoch_images_per_sec"], "img/s"),
      ("epoch decoding every time", r["uncached_epoch_images_per_sec"], "img/s"),
      ("Keras (TF) train_on_batch", r["keras_train_images_per_sec"], "img/s"),
      ("Keras (TF) backbone predict_on_batch", r["keras_forward_images_per_sec"], "img/s"),
      ("Keras (TF) train / forward (time)", r["keras_frozen_step_over_forward"], "x"),
      ("Keras (JAX) train_on_batch", r["keras_jax_train_images_per_sec"], "img/s"),
      ("Keras (JAX) backbone predict_on_batch", r["keras_jax_forward_images_per_sec"], "img/s"),
      ("train speed-up vs Keras (TF)", r["train_speedup_vs_keras"], "x"),
      ("eval speed-up vs Keras (TF) predict", r["eval_speedup_vs_keras"], "x"),
      ("train speed-up vs Keras (JAX)", r["train_speedup_vs_keras_jax"], "x"),
      ("eval speed-up vs Keras (JAX) predict", r["eval_speedup_vs_keras_jax"], "x"),
      ("machine peak (large dot)", r["peak_gflops_per_sec"], "GFLOP/s"),
      ("forward achieved", r["forward_gflops_per_sec"], "GFLOP/s"),
      ("forward / peak", r["forward_fraction_of_peak"], ""),
      ("Keras (TF) forward achieved", r["keras_forward_gflops_per_sec"], "GFLOP/s"),
      ("train step, XLA default flags", (r["default_xla_flags"] or {}).get(
          "train_images_per_sec"), "img/s"),
      ("train speed-up from rpsflax XLA flags", r["xla_flags_train_speedup"], "x"),
  ]
  width = max(len(name) for name, _, _ in rows)
  lines += [f"  {name:<{width}}  {_fmt(v)} {unit}".rstrip() for name, v, unit in rows]
  est = r.get("cached_features_speedup_estimate")
  if est:
    lines.append(f"  cached features, {est['epochs']} epochs x {est['num_train']} images, "
                 f"{est['augmented_views']} aug views: ~{est['uncached_seconds']:.0f}s uncached "
                 f"vs ~{est['cached_seconds']:.0f}s cached (x{est['speedup']:.1f}, modelled)")
  if r.get("scaling") and len(r["scaling"]) > 1:
    lines.append("  scaling (per-device batch %d):" % r["batch_size"])
    for s in r["scaling"]:
      lines.append(f"    {s['devices']:>3} devices: {s['train_images_per_sec']:,.1f} img/s "
                   f"({s['efficiency'] * 100:.0f}% per-device efficiency)")
  if r.get("compile_seconds"):
    lines.append("  compile seconds: " + ", ".join(f"{k} {v}" for k, v in
                                                   r["compile_seconds"].items()))
  for key, why in r["skipped"].items():
    lines.append(f"  skipped {key}: {why}")
  v = r["versions"]
  lines.append("  versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
  return "\n".join(lines)


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


# ---------------------------------------------------------------------------------------------
# Command line

def _normalize_argv(argv: list[str]) -> list[str]:
  """--compare-keras -> --compare_keras (absl flag names use underscores)."""
  out = []
  for a in argv:
    if a.startswith("--") and not a.startswith("--config"):
      name, eq, value = a[2:].partition("=")
      a = "--" + name.replace("-", "_") + eq + value
    out.append(a)
  return out


def define_flags():
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415

  config_flags.DEFINE_config_file("config", None, "Recipe, e.g. configs/rps.py "
                                  "(override fields with --config.KEY=VALUE).", lock_config=True)
  flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's batch_size).")
  flags.DEFINE_integer("image_size", 0, "Image side (0: the config's data.image_size).")
  flags.DEFINE_integer("steps", 1, "Steps per timed run (each run also lasts >= --min_seconds).")
  flags.DEFINE_integer("repeats", 0, "Round-robin rounds; figures are their median. 0: as many "
                       f"as fit in --seconds (at least {MIN_ROUNDS}, at most {MAX_ROUNDS}).")
  flags.DEFINE_float("seconds", BUDGET_SECONDS, "Time budget of the timed rounds with "
                     "--repeats=0, for the JAX figures and for each Keras peer.")
  flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation.")
  flags.DEFINE_float("min_seconds", MIN_SECONDS, "A timed run repeats its --steps calls until it "
                     "lasted this long (0: exactly --steps calls).")
  flags.DEFINE_enum("dtype", "", ["", "float32", "bfloat16", "float16"],
                    "Compute dtype ('' = the config's model.dtype); params stay float32.")
  flags.DEFINE_string("data_dir", "", "A real image folder for the input-pipeline figures.")
  flags.DEFINE_integer("pipeline_repeats", 3, "Repeats of the input-pipeline measurements.")
  flags.DEFINE_bool("compare_keras", False, "Also time the same model in Keras 3 on TensorFlow "
                    "and on JAX, each in a worker process (--compare-keras).")
  flags.DEFINE_bool("compare_flags", False, "Also time the JAX steps with XLA's default CPU flags "
                    "(RPSFLAX_XLA_CPU_FLAGS=0) in a subprocess (--compare-flags).")
  flags.DEFINE_bool("finetune", True, "Also time the step with everything trainable.")
  flags.DEFINE_bool("scaling", True, "With several devices, time 1, 2, 4, ..., N of them.")
  flags.DEFINE_string("weights", "", "config.weights to load ('' = random He-normal init).")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.DEFINE_string("out", "", "Also write the JSON object to this file.")
  flags.DEFINE_string("keras_worker", "", "Internal: run the Keras worker for this spec file.")


def main(argv=None) -> int:
  argv = _normalize_argv(list(sys.argv if argv is None else argv))
  if "--keras_worker" in argv:  # the worker: no flags, no JAX
    keras_worker(argv[argv.index("--keras_worker") + 1])
    return 0
  from absl import app, flags, logging  # noqa: PLC0415

  app.define_help_flags()  # --help, --helpfull
  define_flags()
  FLAGS = flags.FLAGS  # noqa: N806
  try:
    FLAGS(argv)
    if FLAGS.config is None:
      raise flags.Error("--config is required, e.g. --config=configs/rps.py")
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  log = (lambda s: print(s, file=sys.stderr, flush=True)) if FLAGS.json else (
      lambda s: print(s, flush=True))

  try:
    result = run(FLAGS.config, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
                 dtype=FLAGS.dtype, steps=FLAGS.steps, repeats=FLAGS.repeats,
                 warmup=FLAGS.warmup, data_dir=FLAGS.data_dir,
                 compare_keras=FLAGS.compare_keras, finetune=FLAGS.finetune,
                 scaling=FLAGS.scaling, weights=FLAGS.weights,
                 config_name=FLAGS["config"].config_filename if hasattr(
                     FLAGS["config"], "config_filename") else "",
                 pipeline_repeats=FLAGS.pipeline_repeats, min_seconds=FLAGS.min_seconds,
                 budget_seconds=FLAGS.seconds,
                 compare_flags_argv=argv[1:] if FLAGS.compare_flags else None, log=log)
  except errors.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  result = _jsonable(result)
  text = json.dumps(result, indent=1)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  print(text if FLAGS.json else format_table(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
