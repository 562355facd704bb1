"""The JAX figures: the jit steps (train, eval, forward, fine-tune, augment, cached head, and the
bf16 train step beside Keras' mixed_bfloat16) timed round-robin with the Keras peers, their FLOPs
(counted from the model, rpsflax/benchmark/flops.py, and XLA's count beside), XLA's facts about
them (donation, host round-trips), the cached-features model, and scaling over devices."""

import statistics
import time
from typing import Callable, Optional

import jax
import numpy as np

from rpsflax import augment, errors, features, models, sharding
# Aliased: bench_steps and bench_scaling take a `steps` (count) argument the module would shadow.
from rpsflax import steps as step_fns
from rpsflax.benchmark import flops, inputs, timing

# Keras peer -> our runner its train figure is paired with (default: 'train'; eval with 'eval').
PEER_TRAIN_RUNNER = {"keras_bf16": "train_bf16"}


def bench_steps(config, mesh, *, steps: int, repeats: int, warmup: int, finetune: bool = True,
                cached: bool = True, bf16_config=None, min_seconds: float = timing.MIN_SECONDS,
                budget_seconds: float = timing.BUDGET_SECONDS, peers: Optional[dict] = None,
                log: Callable[[str], None] = lambda s: None) -> dict:
  """Train/eval/forward/finetune/augment/cached-head throughput of `config` on `mesh` (and the
  train step of `bf16_config`, the same in bfloat16, when given), with the Keras peers' figures
  timed in the same rounds.

  Everything is compiled and warmed up first, then timed round-robin (see timing.interleaved).
  """
  model = models.build_model(config)
  b = int(config.batch_size)
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  host = inputs.synthetic_batch(config, b)
  batch = sharding.shard_batch(host, mesh)
  rng = jax.device_put(jax.random.PRNGKey(0), repl)
  # Each state gets its own device copy (donated). batch_stats: {} without BatchNorm.
  host_vars = inputs.bench_variables(config, model)
  variables = jax.device_put(step_fns.model_variables(host_vars["params"],
                                                      host_vars["batch_stats"]), repl)
  out, compile_s, runners = {}, {}, {}

  def step_runner(name, cfg, jitted, batch_in, step_model=model):
    """A donating train step as a runner: its state is threaded through the calls."""
    state = jax.device_put(step_fns.create_train_state(cfg, step_model,
                                                       params=host_vars["params"],
                                                       batch_stats=host_vars["batch_stats"]),
                           repl)
    compiled, compile_s[name] = _compile(jitted, state, batch_in, rng)
    holder = {"state": state}

    def call():
      holder["state"], metrics = compiled(holder["state"], batch_in, rng)
      return metrics["loss_sum"]
    runners[name] = (call, b)
    return compiled, state

  run_steps = step_fns.compile_steps(config, model, mesh)  # the train and eval steps of one run
  c_train, state0 = step_runner("train", config, run_steps.train, batch)
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
  out["train_step_flops"] = flops.train_step_flops(config, model, b)
  out["xla_train_step_flops"] = _flops(c_train)

  state = step_fns.TrainState(step=None, params=variables["params"], opt_state=None,
                              batch_stats=variables.get("batch_stats", {}))
  ev, compile_s["eval"] = _compile(run_steps.eval, state, batch)
  runners["eval"] = (lambda: ev(state, batch)["count"], b)

  fwd, compile_s["forward"] = _compile(jax.jit(forward_fn(config, model),
                                               in_shardings=(repl, data), out_shardings=data),
                                       variables, batch["image"])
  runners["forward"] = (lambda: fwd(variables, batch["image"]), b)
  out["forward_flops"] = flops.forward_flops(config, model, b)
  out["xla_forward_flops"] = _flops(fwd)

  if config.augment.enabled:
    aug_fn = lambda r, x: augment.augment_batch(r, x, config.augment)
    aug, compile_s["augment"] = _compile(jax.jit(aug_fn, in_shardings=(repl, data),
                                                 out_shardings=data), rng, batch["image"])
    runners["augment"] = (lambda: aug(rng, batch["image"]), b)

  out["finetune_step_flops"] = out["xla_finetune_step_flops"] = None
  if finetune:
    ft = inputs.finetune_config(config)
    c_ft, _ = step_runner("finetune", ft, step_fns.compile_steps(ft, model, mesh).train, batch)
    out["finetune_step_flops"] = flops.train_step_flops(ft, model, b)
    out["xla_finetune_step_flops"] = _flops(c_ft)

  if bf16_config is not None:
    m16 = models.build_model(bf16_config)
    step_runner("train_bf16", bf16_config,
                step_fns.compile_steps(bf16_config, m16, mesh).train, batch, step_model=m16)

  out["cached_features_unavailable"] = _not_cacheable(config) if cached else "not asked for"
  if out["cached_features_unavailable"] is None:
    cfg = _cached(config)
    fb = {**host, "image": np.zeros((b,) + _feature_shape(cfg, model), np.float32)}
    step_runner("cached_head", cfg,
                step_fns.compile_steps(cfg, model, mesh, on_features=True).train,
                sharding.shard_batch(fb, mesh))

  log(f"JAX: compiled {', '.join(compile_s)} in {sum(compile_s.values()):.0f}s; timing")
  rates = timing.interleaved(runners, steps=steps, repeats=repeats, warmup=warmup,
                             block=jax.block_until_ready, min_seconds=min_seconds,
                             budget_seconds=budget_seconds, peers=peers, log=log)
  for name in ("train", "eval", "forward", "augment", "finetune", "cached_head", "train_bf16"):
    out[f"{name}_images_per_sec"] = statistics.median(rates[name]) if name in rates else None
  for name in peers or {}:
    for figure in ("train", "forward"):
      out[f"{name}_{figure}_images_per_sec"] = statistics.median(rates[f"{name}_{figure}"])
    ours = PEER_TRAIN_RUNNER.get(name, "train")
    out[f"train_speedup_vs_{name}"] = timing.paired_ratio(rates[ours], rates[f"{name}_train"])
    out[f"eval_speedup_vs_{name}"] = (None if ours != "train" else  # no bf16 eval runner
                                      timing.paired_ratio(rates["eval"], rates[f"{name}_forward"]))
  out["frozen_step_over_forward"] = timing.paired_ratio(rates["forward"], rates["train"])
  out["finetune_step_over_forward"] = timing.paired_ratio(rates["forward"], rates.get("finetune"))
  out["frozen_flops_over_forward"] = timing.ratio(out["train_step_flops"], out["forward_flops"])
  out["finetune_flops_over_forward"] = timing.ratio(out["finetune_step_flops"],
                                                    out["forward_flops"])
  out["compile_seconds"] = {k: round(v, 2) for k, v in compile_s.items()}
  out["samples"] = {k: [round(r, 3) for r in v] for k, v in rates.items()}
  out["peak_memory_bytes"] = _peak_memory(mesh)
  return out


def forward_fn(config, model) -> Callable:
  """forward(variables, uint8 images) -> backbone features: preprocessing and the backbone, with
  BatchNorm in inference mode (moving statistics), as the frozen train step runs it."""
  return lambda v, x: model.apply(v, step_fns.prepare_images(config, x), method="features")


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


def _not_cacheable(config) -> Optional[str]:
  """Why cached features do not apply to `config` (e.g. it trains the backbone), or None."""
  try:
    features.check_settings(_cached(config))
    return None
  except errors.ConfigError as e:
    return str(e)


def _feature_shape(config, model) -> tuple[int, ...]:
  """Shape of one image's cached features (the head-only step's input)."""
  size = config.data.image_size
  v = jax.eval_shape(lambda rng: step_fns.init_variables(config, model, rng),
                     jax.random.PRNGKey(0))
  out = jax.eval_shape(features.make_feature_fn(config, model, augmented=False), v["params"],
                       v["batch_stats"], jax.ShapeDtypeStruct((1, size, size, 3), np.uint8),
                       jax.ShapeDtypeStruct((2,), np.uint32),
                       jax.ShapeDtypeStruct((1,), np.int32))
  return tuple(out.shape[1:])


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
  k = int(config.cached_features.augmented_views)
  k = k or 4  # the rps_cached recipe's views when the config being measured has none
  uncached = e * num_train / train_ips
  cached = (1 + k) * num_train / forward_ips + e * num_train / head_ips
  return {"epochs": e, "augmented_views": k, "num_train": num_train,
          "uncached_seconds": round(uncached, 2), "cached_seconds": round(cached, 2),
          "speedup": round(uncached / cached, 2)}


def bench_scaling(config, *, steps: int, repeats: int, warmup: int,
                  min_seconds: float = timing.MIN_SECONDS) -> list[dict]:
  """Train images/s over 1, 2, 4, ..., N local devices, config.batch_size per device."""
  model = models.build_model(config)
  host_vars = inputs.bench_variables(config, model)
  rows = []
  for n in sharding.device_counts_to_try():
    mesh = sharding.make_mesh(jax.local_devices()[:n])
    c = config.copy_and_resolve_references()
    c.batch_size = c.eval_batch_size = int(config.batch_size) * n
    repl = sharding.replicated(mesh)
    state = jax.device_put(step_fns.create_train_state(c, model, params=host_vars["params"],
                                                       batch_stats=host_vars["batch_stats"]),
                           repl)
    batch = sharding.shard_batch(inputs.synthetic_batch(c, c.batch_size), mesh)
    rng = jax.device_put(jax.random.PRNGKey(0), repl)
    compiled, _ = _compile(step_fns.compile_steps(c, model, mesh).train, state, batch, rng)
    holder = {"state": state}

    def call():
      holder["state"], metrics = compiled(holder["state"], batch, rng)
      return metrics["loss_sum"]
    rate, _ = timing.median_rate(call, c.batch_size, steps=steps, repeats=repeats, warmup=warmup,
                                 block=jax.block_until_ready, min_seconds=min_seconds)
    rows.append({"devices": n, "global_batch": c.batch_size,
                 "train_images_per_sec": rate, "per_device_images_per_sec": rate / n})
  for r in rows:
    r["efficiency"] = r["per_device_images_per_sec"] / rows[0]["per_device_images_per_sec"]
  return rows
