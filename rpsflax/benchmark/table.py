"""The benchmark's result as a human-readable table (the JSON object is the full record)."""


def _fmt(v, unit=""):
  if v is None:
    return "n/a"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:,.2f}{unit}" if abs(v) < 1e4 else f"{v:,.0f}{unit}"
  return f"{v}{unit}"


def peak_rows(p: dict) -> list:
  """One row per peak figure: the measured products, then the ISA x clock x cores ceilings."""
  rows = [(f"  peak: {name}", v, "GFLOP/s") for name, v in p.get("measured", {}).items()]
  rows += [(f"  peak: {name} (not measured)", v["gflops_per_sec"], "GFLOP/s")
           for name, v in p.get("theoretical", {}).items()]
  return rows


def format_table(r: dict) -> str:
  lines = [f"rpsflax benchmark: {r['config'] or r['model']} ({r['model']}, {r['dtype']}, "
           f"batch {r['batch_size']}, {r['image_size']}px) on {r['device_kind']} "
           f"[{r['backend']}, {r['device_count']} device(s), {r['host_cpus']} host CPUs]",
           f"median of {len((r.get('samples') or {}).get('train', []))} round-robin runs of >= "
           f"{r['steps']} steps and >= {r['min_seconds']}s each, after {r['warmup']} warm-up "
           f"steps; weights {r['weights']}"]
  cpu = r.get("cpu") or {}
  if cpu:
    lines.append(f"host CPU: {cpu['model_name']}, {cpu['isa']} "
                 f"({' '.join(cpu['vector_flags']) or 'no vector flags read'}), "
                 f"{cpu['usable_cores']:g} cores; XLA:CPU flags "
                 f"{' '.join((r.get('xla_cpu') or {}).get('flags') or []) or 'none'}")
  lines.append("")
  rows = [
      ("train step (frozen as configured)", r["train_images_per_sec"], "img/s"),
      ("eval step", r["eval_images_per_sec"], "img/s"),
      ("backbone forward", r["forward_images_per_sec"], "img/s"),
      ("fine-tune step (all trainable)", r["finetune_images_per_sec"], "img/s"),
      ("augmentation alone (on device)", r["augment_images_per_sec"], "img/s"),
      ("head step on cached features", r["cached_head_images_per_sec"], "img/s"),
      ("train step / forward (time)", r["frozen_step_over_forward"], "x"),
      ("fine-tune step / forward (time)", r["finetune_step_over_forward"], "x"),
      ("train step / forward (model FLOPs)", r["frozen_flops_over_forward"], "x"),
      ("fine-tune / forward (model FLOPs)", r["finetune_flops_over_forward"], "x"),
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
      ("bf16 train step", r["train_bf16_images_per_sec"], "img/s"),
      ("Keras (TF) mixed_bfloat16 train_on_batch", r["keras_bf16_train_images_per_sec"],
       "img/s"),
      ("bf16 train speed-up vs Keras (TF) bf16", r["train_speedup_vs_keras_bf16"], "x"),
      *peak_rows(r.get("peak") or {}),
      (f"machine peak (best measured: {(r.get('peak') or {}).get('peak_source', 'n/a')})",
       r["peak_gflops_per_sec"], "GFLOP/s"),
      ("forward achieved (model FLOPs)", r["forward_gflops_per_sec"], "GFLOP/s"),
      ("forward / peak", r["forward_fraction_of_peak"], ""),
      ("train step achieved (model FLOPs)", r["train_step_gflops_per_sec"], "GFLOP/s"),
      ("train step / peak", r["train_fraction_of_peak"], ""),
      ("Keras (TF) forward achieved", r["keras_forward_gflops_per_sec"], "GFLOP/s"),
      ("Keras (TF) train step achieved", r["keras_train_gflops_per_sec"], "GFLOP/s"),
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
  if r.get("decode_scaling"):
    lines += decode_scaling_lines(r["decode_scaling"])
  if r.get("compile_seconds"):
    lines.append("  compile seconds: " + ", ".join(f"{k} {v}" for k, v in
                                                   r["compile_seconds"].items()))
  for key, why in r["skipped"].items():
    lines.append(f"  skipped {key}: {why}")
  v = r["versions"]
  lines.append("  versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
  return "\n".join(lines)


def decode_scaling_lines(ds: dict) -> list[str]:
  """The decode-scaling figure (pipeline.decode_scaling's dict): img/s per decoder and worker
  count, each with its speed-up over one worker and the load average it ran under."""
  lines = [f"  decoding {ds['num_images']} images to {ds['image_size'][0]}x{ds['image_size'][1]} "
           f"({ds['resize_method']}), img/s by workers (x vs 1 worker, 1-minute load average; "
           f"{ds['host_cpus']} host CPUs):"]
  for d, by_w in ds["images_per_sec"].items():
    cells = [f"{w}: {v:,.0f} (" + (f"x{ds['speedup'][d][w]:.2f}, " if ds["speedup"] else "")
             + f"load {ds['load_average'][d][w]:.1f})" for w, v in by_w.items()]
    lines.append(f"    {d:<12} " + "  ".join(cells))
  if ds["above_host_cpus"]:
    lines.append(f"    not run (above the host's CPUs): {ds['above_host_cpus']} workers")
  for d, why in ds["skipped"].items():
    lines.append(f"    skipped {d}: {why}")
  return lines
