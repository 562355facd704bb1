"""The whole benchmark: every figure of a config into one dict (FIGURES; see the package
docstring for what each means), the Keras peers and the default-flags run alongside, None and a
reason under 'skipped' for what cannot run here."""

import json
import os
import subprocess
import sys
from typing import Callable, Optional, Sequence

import jax

from rpsflax import config_check, cpuinfo, data_files, sharding, xla_cpu
from rpsflax.benchmark import (environment, flops, inputs, jax_figures, keras_peer, peak,
                               pipeline, timing)
from rpsflax.benchmark.timing import BUDGET_SECONDS, MIN_ROUNDS, MIN_SECONDS

FIGURES = (
    "train_images_per_sec", "eval_images_per_sec", "forward_images_per_sec",
    "finetune_images_per_sec", "augment_images_per_sec", "cached_head_images_per_sec",
    "frozen_step_over_forward", "finetune_step_over_forward",
    "train_step_flops", "forward_flops", "finetune_step_flops", "flops_source",
    "xla_train_step_flops", "xla_forward_flops", "xla_finetune_step_flops",
    "frozen_flops_over_forward", "finetune_flops_over_forward",
    "train_step_donates_state", "train_step_host_transfers", "compile_seconds",
    "peak_memory_bytes", "cached_features_speedup_estimate",
    "pipeline_images_per_sec", "decode_images_per_sec", "cached_epoch_images_per_sec",
    "uncached_epoch_images_per_sec", "pipeline_num_images", "decode_scaling",
    "keras_train_images_per_sec", "keras_forward_images_per_sec", "keras_frozen_step_over_forward",
    "train_speedup_vs_keras", "eval_speedup_vs_keras", "keras_jit_compile",
    "keras_jax_train_images_per_sec", "keras_jax_forward_images_per_sec",
    "train_speedup_vs_keras_jax", "eval_speedup_vs_keras_jax",
    "train_bf16_images_per_sec", "keras_bf16_train_images_per_sec",
    "keras_bf16_forward_images_per_sec", "train_speedup_vs_keras_bf16",
    "peak_gflops_per_sec", "peak", "forward_gflops_per_sec", "train_step_gflops_per_sec",
    "keras_forward_gflops_per_sec", "keras_train_gflops_per_sec",
    "forward_fraction_of_peak", "train_fraction_of_peak",
    "default_xla_flags", "xla_flags_train_speedup", "scaling", "cpu", "xla_cpu",
)
BF16_ROW = ("auto", "true", "false")  # --bf16_row: auto = where the CPU has AVX512-BF16


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


def bf16_row_config(cfg, bf16_row: str, backend: str, keras_ok: bool):
  """(the config in bfloat16, None) when the bf16 row runs, else (None, why not).

  The row: our train step in bf16 beside Keras' mixed_bfloat16 policy, in the same rounds as the
  rest. 'auto' runs it on CPUs with AVX512-BF16 (where bf16 has its own instructions) when the
  run compares with Keras and measures float32; 'true' wherever Keras runs."""
  if bf16_row not in BF16_ROW:
    raise ValueError(f"--bf16_row={bf16_row!r}: use one of {BF16_ROW}")
  if bf16_row == "false":
    return None, "--bf16_row=false"
  if backend != "cpu":
    return None, f"a CPU figure (on {backend}, run the benchmark with --dtype=bfloat16)"
  if not keras_ok:
    return None, "the bf16 row is beside Keras: needs --compare-keras and TensorFlow"
  if cfg.model.dtype == "bfloat16":
    return None, "the run itself measures bfloat16"
  isa = cpuinfo.this_cpu().isa
  if bf16_row == "auto" and isa != "avx512_bf16":
    return None, f"auto: only on CPUs with AVX512-BF16 (this one is {isa}); --bf16_row=true"
  c = cfg.copy_and_resolve_references()
  c.model.dtype = "bfloat16"
  return c, None


def run(config, *, batch_size: int = 0, image_size: int = 0, dtype: str = "", steps: int = 1,
        repeats: int = 0, warmup: int = 1, data_dir: str = "", compare_keras: bool = False,
        finetune: bool = True, scaling: bool = True, weights: str = "", config_name: str = "",
        min_seconds: float = MIN_SECONDS, budget_seconds: float = BUDGET_SECONDS,
        compare_flags_argv: Optional[list] = None, bf16_row: str = "auto",
        pipeline_repeats: int = 3, decode_workers: Optional[Sequence[int]] = None,
        log: Callable[[str], None] = lambda s: None) -> dict:
  """Every figure as one dict (see the package docstring); None + a reason under 'skipped'."""
  cfg = inputs.bench_config(config, batch_size=batch_size, image_size=image_size, dtype=dtype,
                            weights=weights)
  config_check.check_config(cfg)
  result = {k: None for k in FIGURES}
  skipped = {}
  timed = dict(steps=steps, repeats=repeats, warmup=warmup, min_seconds=min_seconds,
               budget_seconds=budget_seconds)
  host = inputs.synthetic_batch(cfg, int(cfg.batch_size))
  tf_missing = environment.tensorflow_missing() if (compare_keras or data_dir) else None
  peers: dict = {}

  if compare_keras:  # first: the worker process may use the accelerator before JAX holds it
    if tf_missing:
      skipped["keras"] = f"--compare-keras needs TensorFlow and Keras: {tf_missing}"
    else:
      for backend in keras_peer.KERAS_BACKENDS:
        log(f"Keras ({backend} backend): building and compiling the same model in a worker")
        name = "keras" if backend == "tensorflow" else f"keras_{backend}"
        peers[name] = keras_peer.KerasPeer(cfg, host, steps=steps, warmup=warmup,
                                           min_seconds=min_seconds, backend=backend)
  else:
    skipped["keras"] = "not asked for (--compare-keras)"

  devices = jax.local_devices()
  backend = jax.default_backend()
  log(f"JAX: {len(devices)} x {devices[0].device_kind} ({backend})")
  cpu = cpuinfo.this_cpu()  # the host's, whatever the backend
  result["cpu"] = {"model_name": cpu.model_name, "vendor": cpu.vendor, "family": cpu.family,
                   "isa": cpu.isa, "vector_flags": cpu.vector_flags,
                   "threads_per_core": cpu.threads_per_core,
                   "usable_cores": cpuinfo.usable_cores(cpu), "mhz": cpu.mhz,
                   "mhz_source": cpu.mhz_source}
  result["xla_cpu"] = xla_cpu.describe()
  log(f"CPU: {cpu.model_name}, {cpu.isa} ({' '.join(cpu.vector_flags)}); XLA:CPU flags: "
      f"{' '.join(result['xla_cpu']['flags']) or 'none'} ({result['xla_cpu']['basis']})")
  bf16_cfg, why_not = bf16_row_config(cfg, bf16_row, backend, compare_keras and not tf_missing)
  if bf16_cfg is None:
    skipped["bf16_row"] = why_not
  else:
    log("Keras (tensorflow backend, mixed_bfloat16) for the bf16 row, in a worker")
    peers["keras_bf16"] = keras_peer.KerasPeer(bf16_cfg, host, steps=steps, warmup=warmup,
                                               min_seconds=min_seconds, backend="tensorflow")
  mesh = sharding.make_mesh(devices[:1])  # the headline figures: one device
  try:
    # 2 s of products per figure by default; less for the short runs of tests and device checks.
    result["peak"] = peak.machine_peak(str(cfg.model.dtype),
                                       seconds=min(2.0, max(0.2, 2 * min_seconds)))
    result["peak_gflops_per_sec"] = result["peak"]["peak_gflops_per_sec"]
    log("peak: " + ", ".join(f"{k} {v:,.0f}" for k, v in result["peak"]["measured"].items()) +
        "".join(f", {k} {v['gflops_per_sec']:,.0f}" for k, v in
                result["peak"]["theoretical"].items()) +
        f" GFLOP/s; peak = {result['peak']['peak_source']}; compiling the steps")
    result.update(jax_figures.bench_steps(cfg, mesh, **timed, finetune=finetune, peers=peers,
                                          bf16_config=bf16_cfg, log=log))
  finally:
    details = {name: peer.close() for name, peer in peers.items()}
  for name, d in details.items():
    if name == "keras":
      result["keras_jit_compile"] = d.pop("keras_jit_compile")
    result[f"{name}_details"] = d
  if compare_flags_argv is not None:
    log("JAX with XLA's default CPU flags (RPSFLAX_XLA_CPU_FLAGS=0), in a subprocess")
    result["default_xla_flags"] = bench_default_flags(compare_flags_argv)
    result["xla_flags_train_speedup"] = timing.ratio(
        result["train_images_per_sec"], result["default_xla_flags"]["train_images_per_sec"])
  else:
    skipped["default_xla_flags"] = "not asked for (--compare-flags)"
  if len(devices) > 1 and scaling:
    log("scaling over devices")
    fixed = {k: v for k, v in timed.items() if k != "budget_seconds"}
    result["scaling"] = jax_figures.bench_scaling(cfg, **{**fixed,
                                                          "repeats": repeats or MIN_ROUNDS})
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
      p = pipeline.bench_pipeline(cfg, data_dir, repeats=pipeline_repeats)
      result["samples"].update({f"pipeline_{k}": v for k, v in p.pop("samples").items()})
      result.update(p)
  else:
    skipped["pipeline"] = "no --data_dir (a folder of class subfolders) given"
  if data_dir and decode_workers:  # PIL's figures need no TensorFlow, tf.data's are skipped
    log(f"decode scaling on {data_dir}: {list(decode_workers)} workers")
    result["decode_scaling"] = pipeline.decode_scaling(
        data_files.list_images(data_dir), cfg.data.image_size, cfg.data.resize_method,
        decode_workers, repeats=pipeline_repeats,
        max_pixels=int(cfg.data.max_image_pixels),
        log=log)
  else:
    skipped["decode_scaling"] = "not asked for (--data_dir and --decode_workers=1,2,...)"

  b = int(cfg.batch_size)
  gflops = lambda flop, ips: None if ips is None or flop is None else flop / b * ips / 1e9
  fwd, step = result["forward_flops"], result["train_step_flops"]
  result["forward_gflops_per_sec"] = gflops(fwd, result["forward_images_per_sec"])
  result["train_step_gflops_per_sec"] = gflops(step, result["train_images_per_sec"])
  result["keras_forward_gflops_per_sec"] = gflops(fwd, result["keras_forward_images_per_sec"])
  result["keras_train_gflops_per_sec"] = gflops(step, result["keras_train_images_per_sec"])
  result["peak"] = peak.with_rates(result["peak"], {
      f"keras_{k}_{cfg.model.dtype}": result[f"keras_{k}_gflops_per_sec"]
      for k in ("forward", "train")})
  result["peak_gflops_per_sec"] = result["peak"]["peak_gflops_per_sec"]
  result["forward_fraction_of_peak"] = timing.ratio(result["forward_gflops_per_sec"],
                                                    result["peak_gflops_per_sec"])
  result["train_fraction_of_peak"] = timing.ratio(result["train_step_gflops_per_sec"],
                                                  result["peak_gflops_per_sec"])
  result["flops_source"] = {k: flops.SOURCE for k in ("forward_flops", "train_step_flops",
                                                      "finetune_step_flops")}
  result["flops_source"].update({f"xla_{k}": flops.XLA_SOURCE for k in result["flops_source"]})
  samples = result.get("samples") or {}
  result["keras_frozen_step_over_forward"] = timing.paired_ratio(samples.get("keras_forward"),
                                                                 samples.get("keras_train"))
  result["cached_features_speedup_estimate"] = jax_figures.cached_speedup_estimate(
      cfg, result["forward_images_per_sec"], result["train_images_per_sec"],
      result["cached_head_images_per_sec"])
  unavailable = result.pop("cached_features_unavailable", None)
  if result["cached_head_images_per_sec"] is None:
    skipped["cached_features"] = unavailable or "not measured"
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
      "host_cpus": os.cpu_count(), "versions": environment.versions(), "skipped": skipped,
  })
  return result
