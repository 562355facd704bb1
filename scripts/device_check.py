r"""The prepared device check: parity, benchmark, host overhead and both recipes end to end.

Run it through scripts/device_check.sh (which installs the carried wheels first):

  scripts/device_check.sh OUT_DIR            # the GPU machine: real sizes, < 8 min on one H200
  scripts/device_check.sh OUT_DIR --quick    # any CPU: every stage, scaled down (minutes)

Each stage runs in its own subprocess (so each gets the whole accelerator: JAX preallocates
its memory) and writes OUT_DIR/<stage>.json; OUT_DIR/summary.json lists every stage with its
status, wall time and headline figures, rewritten after each stage so a run cut short still
reports what it did. Nothing is downloaded: images (synthetic PNGs and JPEGs) and random VGG16
weights (legacy Keras HDF5, seeded) are written under --work; the Keras references are
scripts/device_references.npz. Stages:

  env        versions, devices, CPU model, where ml_collections was imported from
  parity     VGG16 (every block) and the CNN vs stored Keras outputs: fp32 with
             JAX_DEFAULT_MATMUL_PRECISION=highest (the parity tests' bounds), and the bf16 bound
  bench_*    python -m rpsflax.benchmark for rps and catsdogs at their sizes, fp32 and bf16, with
             achieved TFLOP/s and the fraction of the chip's dense bf16 peak
  pipeline   host decode + batching rates of the folder the rps runs use (PIL without TF)
  overhead   an epoch of the rps recipe (uncached and cached features) as the run trains it on
             device-resident data, host-fed, and as one jitted call: the share inside jit
  rps        the 20-epoch recipe from 2,520 PNGs (+372 validation), wall time from command start
             to eval.json: cold and warm compilation cache x uncached and cached features
  catsdogs_big  the 30-epoch recipe at the tutorial's scale: 18,000 train / 6,000 validation
             JPEGs (hard links to the written ones), cold then warm compilation cache
  decode     decoding rates (images/s) with 1, 2, 4, ... workers: PIL, and tf.data where TF is
  catsdogs   the 30-epoch recipe on 2,000 images (+1,000 validation), wall time (not by default)
Every training run reports its own time breakdown (eval.json's `timing`), copied into the
stage's JSON; summary.json's `targets` holds each figure the GPU issue sets a target for.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import device_references as refs  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s. NVIDIA's H200 datasheet
# (https://www.nvidia.com/en-us/data-center/h200/) lists "BF16 Tensor Core 1,979 TFLOPS" for the
# SXM part with the footnote "With sparsity": dense is half, 989.4 TFLOP/s (as for H100 SXM;
# TechPowerUp-style spec tables list 989.43 TFLOPS dense BF16 tensor).
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12}
# In order of what the targets need most: a stage that would start after --budget is
# skipped (and says so), so a slow day loses the least important figures.
STAGES = ("env", "parity", "rps", "catsdogs_big", "decode", "overhead", "bench_rps_bfloat16",
          "bench_rps_float32", "bench_catsdogs_bfloat16", "bench_catsdogs_float32", "pipeline",
          "catsdogs")
# The default run: every stage but the small catsdogs one (catsdogs_big measures that recipe).
DEFAULT_STAGES = tuple(s for s in STAGES if s != "catsdogs")
# (full, quick) sizes; every one is also a flag.
SIZES = {
    "rps_train_per_class": (840, 6), "rps_val_per_class": (124, 2), "rps_epochs": (20, 2),
    "rps_image_size": (224, 48), "cd_train_per_class": (1000, 10), "cd_val_per_class": (500, 5),
    "cd_epochs": (30, 2), "cd_image_size": (150, 150), "bench_seconds": (5.0, 2.0),
    "bench_rps_image_size": (224, 48), "bench_rps_batch": (32, 8), "bench_cd_batch": (128, 16),
    "overhead_epochs": (3, 1),
    # the tutorial's scale: 18,000 / 6,000 JPEGs, made of hard links to the written ones
    "cd_big_train_per_class": (9000, 30), "cd_big_val_per_class": (3000, 10),
    "decode_images": (3000, 60), "decode_workers": ("1,2,4,8,16", "1,2"),
}


# ---------------------------------------------------------------------------------------------
# Data and weights, written on the spot

def _rps_image(cls: int, i: int):
  from PIL import Image, ImageDraw  # noqa: PLC0415

  rng = np.random.RandomState(1000 * cls + i)
  yy, xx = np.mgrid[0:300, 0:300]
  bg = (200 + 30 * np.sin(xx / (20 + i % 7))[..., None] + rng.normal(0, 4, (300, 300, 3)))
  img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
  d = ImageDraw.Draw(img)
  o, colour = 20 + i % 40, tuple(int(c) for c in rng.randint(60, 200, 3))
  if cls == 0:
    d.rectangle([o, o, 280 - o // 2, 280 - o // 3], fill=colour)
  elif cls == 1:
    d.ellipse([o, o, 280 - o // 2, 280 - o // 3], fill=colour)
  else:
    d.polygon([(o, 280), (150, o), (280 - o // 2, 280)], fill=colour)
  return img


def _cd_image(cls: int, i: int):
  from PIL import Image  # noqa: PLC0415

  rng = np.random.RandomState(7000 * cls + i)
  h, w = 300 + i % 7 * 25, 350 + i % 5 * 30
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = rng.uniform(40, 215, 3) + 60 * (xx if cls else yy)[..., None]
  img = np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
  return Image.fromarray(img)


def write_folders(work: pathlib.Path, s: dict) -> dict:
  """rps: train/{paper,rock,scissors}/*.png (+ validation/), catsdogs: cats_and_dogs_filtered's
  train/{cats,dogs}/*.jpg (+ validation/). Written in a thread pool (PIL encodes without the GIL)."""
  jobs = []
  rps, cd = work / "rps", work / "catsdogs"
  for split, n in (("train", s["rps_train_per_class"]), ("validation", s["rps_val_per_class"])):
    for c, name in enumerate(("paper", "rock", "scissors")):
      (rps / split / name).mkdir(parents=True, exist_ok=True)
      off = 0 if split == "train" else 10**6
      jobs += [(rps / split / name / f"{name}{i:04d}.png", _rps_image, c, off + i, "PNG")
               for i in range(n)]
  for split, n in (("train", s["cd_train_per_class"]), ("validation", s["cd_val_per_class"])):
    for c, name in enumerate(("cats", "dogs")):
      (cd / split / name).mkdir(parents=True, exist_ok=True)
      off = 0 if split == "train" else 10**6
      jobs += [(cd / split / name / f"{name[:-1]}.{i}.jpg", _cd_image, c, off + i, "JPEG")
               for i in range(n)]

  def write(job):
    path, draw, c, i, fmt = job
    if not path.exists():
      draw(c, i).save(path, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))

  with concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
    list(pool.map(write, jobs))
  return {"rps": str(rps), "catsdogs": str(cd), "images_written": len(jobs)}


def vgg16_weights(work: pathlib.Path) -> str:
  path = work / "vgg16_seeded_notop.h5"
  if not path.exists():
    refs.write_legacy_h5(path, refs.vgg16_layers())
  return str(path)


# ---------------------------------------------------------------------------------------------
# Stages (each in its own process)

def cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def stage_env(args, work) -> dict:
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415

  from rpsflax import tf_decode  # noqa: PLC0415
  from rpsflax.benchmark import environment  # noqa: PLC0415

  d = jax.devices()
  return {"versions": environment.versions(), "backend": jax.default_backend(),
          "devices": [str(x) for x in d], "device_kind": d[0].device_kind,
          "cpu_run": jax.default_backend() == "cpu", "host_cpu": cpu_model(),
          "host_cpus": os.cpu_count(), "ml_collections_from": ml_collections.__file__,
          "decoder": refs_config("rps", 32).data.decoder,
          "tensorflow": tf_decode.tensorflow_missing()
          or "importable", "quick": args.quick, "sizes": sizes(args)}


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = float(np.abs(want).max())
  big = np.abs(want) > 1e-2 * scale
  return {"rel_max": float(np.abs(got - want).max() / scale),
          "rel_l2": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
          "element_rel_max": float((np.abs(got - want)[big] / np.abs(want)[big]).max()),
          "scale": scale}


def stage_parity(args, work) -> dict:
  """fp32 (run with JAX_DEFAULT_MATMUL_PRECISION=highest) and bf16 against Keras' fp32 outputs.

  Bounds are the parity tests': VGG16 2e-5 of the layer's largest activation and 5e-4 per
  element (tests/test_parity_vgg.py), CNN 1e-5 on probabilities and features
  (tests/test_parity_cnn.py); bf16 2e-2 per block, and above 1e-4 so bf16 really ran
  (tests/test_bf16.py)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from rpsflax import config_base, models, preprocess, weights  # noqa: PLC0415

  r = np.load(REPO / "scripts" / "device_references.npz")
  vl, cl = refs.vgg16_layers(), refs.cnn_layers()
  if refs.digest(vl) != str(r["vgg_digest"]) or refs.digest(cl) != str(r["cnn_digest"]):
    raise RuntimeError("NumPy drew other weights than when the references were made: "
                       "regenerate them (python scripts/device_references.py)")
  out = {"precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default"),
         "keras_version_of_references": str(r["keras_version"]), "checks": {}}
  h5_vgg = vgg16_weights(work)
  h5_cnn = refs.write_legacy_h5(work / "cnn_seeded.h5", cl)

  def run(name, dtype, size, weights_file, x):
    c = config_base.load_sibling(str(REPO / "configs" / "x.py"), name).get_config()
    c.weights, c.model.dtype, c.data.image_size = "", dtype, size
    model = models.build_model(c)
    params = jax.jit(lambda k, x: model.init(k, x, train=False)["params"])(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    params = weights.load_for_model(weights_file, params, models.keras_layer_map(c))
    pre = preprocess.get_preprocessor(c.preprocess)

    def f(p, x):
      y = pre(x, dtype=models.compute_dtype(c))
      logits = model.apply({"params": p}, y, train=False)
      if name == "catsdogs":  # its output is the last pool (the CNN sows nothing apart)
        return logits, {"features": model.apply({"params": p}, y, method="features")}
      _, state = model.apply({"params": p}, y, method="features", mutable=["intermediates"])
      return logits, {k: v[0] for k, v in state["intermediates"]["backbone"].items()}
    logits, inter = jax.jit(f)(params, x)
    return np.asarray(logits, np.float32), {k: np.asarray(v, np.float32) for k, v in inter.items()}

  bounds = {"vgg_float32": (2e-5, 5e-4), "cnn_float32": (1e-5, None), "bfloat16": 2e-2}
  for dtype in ("float32", "bfloat16"):
    _, inter = run("rps", dtype, refs.VGG_SIZE, h5_vgg, r["vgg_images"])
    for pool in refs.VGG_POOLS:
      e = _rel(inter[pool], r[f"vgg_{pool}"])
      if dtype == "float32":
        tol, el = bounds["vgg_float32"]
        e["ok"] = e["rel_max"] < tol and e["element_rel_max"] < el
        e["bound"] = {"rel_max": tol, "element_rel_max": el}
      else:
        e["ok"] = 1e-4 < e["rel_l2"] and e["rel_max"] < bounds["bfloat16"]
        e["bound"] = {"rel_max": bounds["bfloat16"], "rel_l2_above": 1e-4}
      out["checks"][f"vgg16_{dtype}_{pool}"] = e
    logits, inter = run("catsdogs", dtype, refs.CNN_SIZE, h5_cnn, r["cnn_images"])
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    p_err = float(np.abs(probs - r["cnn_output"]).max())
    f = _rel(inter["features"], r["cnn_max_pooling2d_3"])
    if dtype == "float32":
      ok = p_err < 1e-5 and f["rel_max"] < 1e-5
      bound = {"prob_abs": 1e-5, "features_rel_max": 1e-5}
    else:
      ok = p_err < 1e-2 and 1e-4 < f["rel_l2"] and f["rel_max"] < bounds["bfloat16"]
      bound = {"prob_abs": 1e-2, "features_rel_max": bounds["bfloat16"], "rel_l2_above": 1e-4}
    out["checks"][f"cnn_{dtype}"] = {"prob_abs_err": p_err, "features": f, "ok": ok,
                                     "bound": bound}
  out["ok"] = all(c["ok"] for c in out["checks"].values())
  out["worst_vgg16_float32_rel"] = max(v["rel_max"] for k, v in out["checks"].items()
                                       if k.startswith("vgg16_float32"))
  return out


def stage_bench(args, work, recipe: str, dtype: str) -> dict:
  s = sizes(args)
  cmd = [sys.executable, "-m", "rpsflax.benchmark", f"--config={REPO / 'configs' / recipe}.py",
         f"--dtype={dtype}", "--json", f"--seconds={s['bench_seconds']}", "--steps=5",
         "--min_seconds=0.2", "--nofinetune", "--warmup=2"]
  if recipe == "rps":
    cmd += [f"--image_size={s['bench_rps_image_size']}", f"--batch_size={s['bench_rps_batch']}"]
  else:
    cmd += [f"--batch_size={s['bench_cd_batch']}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-3000:]}")
  b = json.loads(proc.stdout[proc.stdout.index("{"):])
  kind = b["device_kind"]
  peak = next((v for k, v in BF16_PEAK.items() if k in kind), None)

  def tflops(flops, ips):
    return None if not flops or not ips else flops / b["batch_size"] * ips / 1e12
  train = tflops(b.get("train_step_flops"), b.get("train_images_per_sec"))
  fwd = tflops(b.get("forward_flops"), b.get("forward_images_per_sec"))
  b["command"] = " ".join(cmd[1:])
  b["achieved"] = {
      "train_step_tflops_per_sec": train, "forward_tflops_per_sec": fwd,
      "chip_bf16_peak_tflops_per_sec": peak / 1e12 if peak else None,
      "peak_source": ("NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity, "
                      "dense = half" if peak else
                      "no datasheet peak for this device: see measured peak_gflops_per_sec"),
      "train_fraction_of_bf16_peak": train * 1e12 / peak if peak and train else None,
      "forward_fraction_of_bf16_peak": fwd * 1e12 / peak if peak and fwd else None,
      "forward_fraction_of_measured_dot_peak": b.get("forward_fraction_of_peak")}
  return b


def stage_pipeline(args, work) -> dict:
  from rpsflax.benchmark import pipeline  # noqa: PLC0415

  c = refs_config("rps", sizes(args)["rps_image_size"])
  out = pipeline.bench_pipeline(c, str(work / "rps"), repeats=1 if args.quick else 2)
  out["decoder"] = c.data.decoder
  out["image_size"] = int(c.data.image_size)
  return out


def refs_config(name: str, image_size: int):
  from rpsflax import config_base  # noqa: PLC0415

  c = config_base.load_sibling(str(REPO / "configs" / "x.py"), name).get_config()
  c.data.image_size = image_size
  return c


def stage_overhead(args, work) -> dict:
  """Per epoch of the rps recipe, uncached and on cached features: the epoch as the run trains it
  (rpsflax.train.train_epoch over a device-resident `resident.Feed`: chunks of log_every_steps,
  the progress bar, the sums read one call late) and as the host-fed path trains it
  (`train.HostFeed`: host batches, one jitted step each), against the same steps in ONE jitted
  call on the resident data (the device's own time). `inside_jit_fraction` = that one call's
  time / the resident epoch's wall time: the share of an epoch spent in jitted code."""
  import jax  # noqa: PLC0415

  from rpsflax import features, input_pipeline, models, resident, sharding, train  # noqa: PLC0415
  from rpsflax import steps as step_fns  # noqa: PLC0415  (`steps` is a count below)
  from rpsflax.benchmark import inputs  # noqa: PLC0415

  s = sizes(args)
  out = {}
  for variant in ("uncached_features", "cached_features"):
    c = refs_config("rps_cached" if variant == "cached_features" else "rps", s["rps_image_size"])
    c.weights, c.data.dir, c.data.device_cache = "", str(work / "rps"), "on"
    wd = work / f"overhead_{variant}"
    shutil.rmtree(wd, ignore_errors=True)
    mesh = sharding.make_mesh()
    ds = input_pipeline.create_datasets(c, wd)
    t0 = time.perf_counter()
    ds.prepare()
    decode_s = time.perf_counter() - t0
    model = models.build_model(c)
    state = jax.device_put(step_fns.create_train_state(c, model, params=inputs.random_params(
        c, model)), sharding.replicated(mesh))
    t0 = time.perf_counter()
    if variant == "cached_features":
      ds = features.feature_datasets(c, wd, ds, state, mesh, model)
    compiled = step_fns.compile_steps(c, model, mesh, on_features=variant == "cached_features")
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    on_device = resident.load(compiled, ds, mesh, c.data.device_cache)
    load_s = time.perf_counter() - t0
    rng = jax.random.PRNGKey(0)
    loop = train.EpochLoop(c, mesh, compiled.train, rng)
    every = max(1, int(c.log_every_steps))
    steps = ds.steps_per_epoch

    def resident_epoch(state, e):
      state, _, _ = train.train_epoch(loop, state, on_device.train_feed(e, rng, every), epoch=e + 1)
      return state

    def host_epoch(state, e):
      feed = train.HostFeed(loop, ds.train_batches(e), steps)
      state, _, _ = train.train_epoch(loop, state, feed, epoch=e + 1)
      return state

    def one_call(state, e):
      state, sums = on_device.train_feed(e, rng, steps).run(state, None, 0, steps)
      jax.block_until_ready(sums)
      return state

    for f in (resident_epoch, host_epoch, one_call):  # compiles, and warms every path
      state = f(state, 0)
    samples = {"resident_epoch": [], "host_fed_epoch": [], "one_jitted_call": []}
    for e in range(1, 1 + s["overhead_epochs"]):
      for name, f in (("resident_epoch", resident_epoch), ("host_fed_epoch", host_epoch),
                      ("one_jitted_call", one_call)):
        t0 = time.perf_counter()
        state = f(state, e)
        samples[name].append(time.perf_counter() - t0)
    res, host, dev = (min(samples[k]) for k in ("resident_epoch", "host_fed_epoch",
                                                "one_jitted_call"))
    out[variant] = {
        "steps_per_epoch": steps, "batch_size": int(c.batch_size),
        "image_size": int(c.data.image_size), "log_every_steps": every,
        "resident_epoch_seconds": res, "host_fed_epoch_seconds": host,
        "one_jitted_call_seconds": dev, "inside_jit_fraction": min(1.0, dev / res),
        "host_fed_inside_jit_fraction": min(1.0, dev / host),
        "resident_speedup_over_host_fed": host / res,
        "decode_once_seconds": decode_s, "feature_cache_seconds": prep_s,
        "to_device_seconds": load_s, "load_average": os.getloadavg(), "samples": samples}
  return out


def _main_run(args, work, name, config, data, extra, cache_dir) -> dict:
  wd = work / "runs" / name
  shutil.rmtree(wd, ignore_errors=True)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [sys.executable, "-m", "rpsflax.main", f"--config={REPO / 'configs' / config}.py",
         f"--workdir={wd}", f"--config.data.dir={data}", *extra]
  cached_before = sum(1 for _ in cache_dir.rglob("*") if _.is_file()) if cache_dir.exists() else 0
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode or not (wd / "eval.json").exists():
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-3000:]}")
  history = json.loads((wd / "history.json").read_text())
  return {"command": " ".join(cmd[1:]), "wall_seconds_to_eval_json": wall,
          "compile_cache": "warm" if cached_before else "cold",
          "cache_files_before": cached_before,
          "cache_files_after": sum(1 for _ in cache_dir.rglob("*") if _.is_file()),
          "eval": json.loads((wd / "eval.json").read_text()),
          "epoch_seconds": [h["seconds"] for h in history],
          # the run's own account of where its wall time went (train.py writes it)
          "timing": json.loads((wd / "eval.json").read_text()).get("timing"),
          "decoder_line": next((ln[ln.index("decoding"):] for ln in proc.stderr.splitlines()
                                if "decoding images with" in ln), None)}


def stage_rps(args, work) -> dict:
  s = sizes(args)
  extra = [f"--config.weights={vgg16_weights(work)}", f"--config.num_epochs={s['rps_epochs']}",
           f"--config.data.image_size={s['rps_image_size']}"]
  out = {"train_images": 3 * s["rps_train_per_class"], "epochs": s["rps_epochs"],
         "validation_images": 3 * s["rps_val_per_class"]}
  for variant, config in (("uncached", "rps"), ("cached", "rps_cached")):
    cache = work / f"jax_cache_{variant}"
    shutil.rmtree(cache, ignore_errors=True)
    for temp in ("cold", "warm"):
      try:
        out[f"{variant}_{temp}"] = _main_run(args, work, f"rps_{variant}_{temp}", config,
                                             work / "rps", extra, cache)
      except RuntimeError as e:  # keep the other runs' figures
        out[f"{variant}_{temp}"] = {"error": str(e)[-3000:]}
  out["ok"] = not any("error" in v for v in out.values() if isinstance(v, dict))
  return out


def stage_catsdogs(args, work) -> dict:
  s = sizes(args)
  cache = work / "jax_cache_catsdogs"
  shutil.rmtree(cache, ignore_errors=True)
  extra = ["--config.data.holdout=0", f"--config.num_epochs={s['cd_epochs']}",
           f"--config.data.image_size={s['cd_image_size']}"]
  out = _main_run(args, work, "catsdogs", "catsdogs", work / "catsdogs", extra, cache)
  out.update(train_images=2 * s["cd_train_per_class"], epochs=s["cd_epochs"],
             validation_images=2 * s["cd_val_per_class"])
  return out


def link_big_folder(work: pathlib.Path, s: dict) -> tuple[pathlib.Path, int]:
  """catsdogs_big/{train,validation}/{cats,dogs}: the written JPEGs repeated by hard links (new
  names, same bytes) up to the tutorial's 18,000 / 6,000. Links cost no disk and no writing time;
  every one is still opened and decoded by the run."""
  src, dst, n = work / "catsdogs", work / "catsdogs_big", 0
  for split, per_class in (("train", s["cd_big_train_per_class"]),
                           ("validation", s["cd_big_val_per_class"])):
    for name in ("cats", "dogs"):
      files = sorted((src / split / name).glob("*.jpg"))
      out = dst / split / name
      out.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        link = out / f"{name[:-1]}.{i}.jpg"
        if not link.exists():
          os.link(files[i % len(files)], link)
        n += 1
  return dst, n


def stage_catsdogs_big(args, work) -> dict:
  s = sizes(args)
  t0 = time.perf_counter()
  data, n = link_big_folder(work, s)
  out = {"images": n, "linking_seconds": time.perf_counter() - t0, "epochs": s["cd_epochs"],
         "train_images": 2 * s["cd_big_train_per_class"],
         "validation_images": 2 * s["cd_big_val_per_class"]}
  cache = work / "jax_cache_catsdogs_big"
  shutil.rmtree(cache, ignore_errors=True)
  extra = ["--config.data.holdout=0", f"--config.num_epochs={s['cd_epochs']}",
           f"--config.data.image_size={s['cd_image_size']}"]
  for temp in ("cold", "warm"):
    try:
      out[temp] = _main_run(args, work, f"catsdogs_big_{temp}", "catsdogs", data, extra, cache)
    except RuntimeError as e:  # keep the other run's figures
      out[temp] = {"error": str(e)[-3000:]}
  out["ok"] = not any("error" in v for v in out.values() if isinstance(v, dict))
  return out


def stage_decode(args, work) -> dict:
  """Decoding images/s with 1, 2, 4, ... workers (PIL; tf.data where TensorFlow imports), on the
  written cats/dogs JPEGs (Kaggle-like sizes) resized to the recipe's 150 px."""
  from rpsflax.benchmark import pipeline  # noqa: PLC0415

  s = sizes(args)
  paths = sorted(str(p) for p in (work / "catsdogs").rglob("*.jpg"))[:s["decode_images"]]
  workers = tuple(int(w) for w in str(s["decode_workers"]).split(","))
  out = pipeline.decode_scaling(paths, (s["cd_image_size"], s["cd_image_size"]), "nearest",
                                workers=workers)
  out.update(images=len(paths), host_cpus=os.cpu_count(), load_average=os.getloadavg())
  return out


def run_stage(args, name: str) -> dict:
  work = pathlib.Path(args.work)
  if name.startswith("bench_"):
    _, recipe, dtype = name.split("_")
    return stage_bench(args, work, recipe, dtype)
  return globals()[f"stage_{name}"](args, work)


# ---------------------------------------------------------------------------------------------
# The driver (imports no JAX: every stage gets the accelerator to itself)

def sizes(args) -> dict:
  return {k: getattr(args, k) for k in SIZES}


def headline(name: str, r: dict) -> dict:
  if name == "parity":
    return {"ok": r["ok"], "worst_vgg16_float32_rel": r["worst_vgg16_float32_rel"]}
  if name.startswith("bench_"):
    return {"train_images_per_sec": r["train_images_per_sec"],
            "forward_images_per_sec": r["forward_images_per_sec"], **r["achieved"]}
  if name == "overhead":
    return {k: {f: v[f] for f in ("inside_jit_fraction", "resident_epoch_seconds",
                                  "host_fed_epoch_seconds")}
            for k, v in r.items() if isinstance(v, dict)}
  if name == "rps":
    return {k: v.get("wall_seconds_to_eval_json", "failed") for k, v in r.items()
            if isinstance(v, dict)}
  if name == "catsdogs":
    return {"wall_seconds_to_eval_json": r["wall_seconds_to_eval_json"]}
  if name == "decode":
    return {"images_per_sec": r.get("images_per_sec"), "host_cpus": r.get("host_cpus")}
  if name == "catsdogs_big":
    return {k: r[k].get("wall_seconds_to_eval_json", "failed") for k in ("cold", "warm")}
  if name == "pipeline":
    return {k: r[k] for k in ("decode_images_per_sec", "cached_epoch_images_per_sec",
                              "uncached_epoch_images_per_sec", "decoder")}
  return {k: r.get(k) for k in ("backend", "device_kind", "cpu_run", "decoder")}


# Issue 21's targets on one H200 (warm compilation cache unless named cold): (stage, path to the
# figure in its JSON, bound, 'max' = at most / 'min' = at least).
TARGETS = {
    "rps_uncached_warm_seconds": ("rps", ("uncached_warm", "wall_seconds_to_eval_json"), 8, "max"),
    "rps_uncached_cold_seconds": ("rps", ("uncached_cold", "wall_seconds_to_eval_json"), 20, "max"),
    "rps_cached_warm_seconds": ("rps", ("cached_warm", "wall_seconds_to_eval_json"), 5, "max"),
    "catsdogs_tutorial_scale_warm_seconds": ("catsdogs_big", ("warm", "wall_seconds_to_eval_json"),
                                             25, "max"),
    "decode_pil_images_per_sec_16_workers": ("decode", ("images_per_sec", "pil", "16"), 4000,
                                             "min"),
    "cached_head_epoch_inside_jit_fraction": ("overhead", ("cached_features",
                                                           "inside_jit_fraction"), 0.9, "min"),
}


def targets(out: pathlib.Path) -> dict:
  """Each target's figure from the stage JSONs, its bound and whether it is met (None: not run)."""
  result = {}
  for name, (stage, path, bound, kind) in TARGETS.items():
    value = None
    try:
      value = json.loads((out / f"{stage}.json").read_text())
      for key in path:
        value = value[key]
    except (OSError, KeyError, TypeError, ValueError):
      value = None
    ok = None if not isinstance(value, (int, float)) else (
        value <= bound if kind == "max" else value >= bound)
    result[name] = {"value": value, "bound": bound, "kind": kind, "met": ok}
  return result


def drive(args) -> int:
  out, work = pathlib.Path(args.out), pathlib.Path(args.work)
  out.mkdir(parents=True, exist_ok=True)
  work.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  summary = {"command": " ".join(sys.argv), "quick": args.quick, "work": str(work),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}
  t0 = time.perf_counter()
  summary["data"] = write_folders(work, sizes(args))
  vgg16_weights(work)
  summary["data"]["seconds"] = time.perf_counter() - t0
  failed = 0
  for name in [s for s in STAGES if s in args.stages.split(",")]:
    left = args.budget - (time.perf_counter() - t_start)
    if left < 10:
      summary["stages"][name] = {"status": "skipped: time budget spent"}
      continue
    env = dict(os.environ)
    if name == "parity":
      env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    cmd = [sys.executable, __file__, "--stage", name, "--out", str(out), "--work", str(work),
           *(["--quick"] if args.quick else []),
           *[f"--{k}={getattr(args, k)}" for k in SIZES]]
    t0 = time.perf_counter()
    print(f"[device_check] {name} ...", flush=True)
    # Its own process group: on timeout the stage's children (a benchmark, a training run)
    # are killed with it, so they do not hold the accelerator during the next stage.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
      _, err = proc.communicate(timeout=left)
      status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
      tail = "" if proc.returncode == 0 else err[-3000:]
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
      status, tail = "failed (time budget spent)", ""
    wall = time.perf_counter() - t0
    entry = {"status": status, "wall_seconds": round(wall, 2)}
    path = out / f"{name}.json"
    if status == "ok":
      result = json.loads(path.read_text())
      entry["headline"] = headline(name, result)
      if result.get("ok") is False:  # it ran, and a check (parity bounds) or a run failed
        status = entry["status"] = "failed (a check or a run failed: see its JSON)"
      if name == "env":
        cpu = entry["headline"]["cpu_run"]
        summary["cpu_run"] = cpu
        summary["note"] = ("CPU run: CPU figures, not GPU ones" if cpu else "accelerator run") + (
            " (--quick: scaled-down sizes)" if args.quick else " (full sizes)")
    else:
      entry["stderr_tail"] = tail
    failed += status != "ok"
    summary["stages"][name] = entry
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[device_check] {name}: {status} in {wall:.1f}s "
          f"{json.dumps(entry.get('headline', ''))[:400]}", flush=True)
  summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
  summary["targets"] = targets(out)
  (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  print(f"[device_check] targets: {json.dumps(summary['targets'])}", flush=True)
  print(f"[device_check] done in {summary['wall_seconds']:.0f}s, {failed} stage(s) failed; "
        f"{out / 'summary.json'}", flush=True)
  return 1 if failed else 0


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="folder for the JSON files")
  p.add_argument("--work", default="", help="scratch folder (images, weights, workdirs, "
                 "compile caches); default a new temporary folder")
  p.add_argument("--quick", action="store_true", help="scaled-down sizes for a CPU")
  p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help="comma-separated subset of "
                 + ", ".join(STAGES))
  p.add_argument("--budget", type=float, default=450.0,
                 help="seconds for all stages; a stage that would start later is skipped")
  p.add_argument("--stage", default="", help=argparse.SUPPRESS)
  pre, _ = p.parse_known_args(argv)
  for k, (full, quick) in SIZES.items():
    p.add_argument(f"--{k}", type=type(full), default=quick if pre.quick else full)
  args = p.parse_args(argv)
  args.work = args.work or tempfile.mkdtemp(prefix="rpsflax_device_check_")
  return args


def main(argv=None) -> int:
  args = parse(argv)
  if not args.stage:
    return drive(args)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  result = run_stage(args, args.stage)
  result["stage"] = args.stage
  (pathlib.Path(args.out) / f"{args.stage}.json").write_text(
      json.dumps(result, indent=1, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
