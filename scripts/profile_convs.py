r"""Where a step's time goes, layer by layer, and which way of computing each conv is fastest on
this CPU: every 3x3 conv (with its bias and ReLU, and the 2x2 pool where the model pools, in the
models' order: conv, pool, bias, ReLU) of the recipes' backbones, timed alone forward and with
its gradient, in each of these variants:

  eigen           conv_general_dilated on XLA's Eigen path (YNNPACK's convolutions and reductions
                  off: --xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce)
  ynn             conv_general_dilated on YNNPACK (XLA's default flags)
  patches         the conv as patches + dot (the 9 shifted inputs side by side, one GEMM with
                  K = 9 x in channels), the dot on YNNPACK's runtime-dispatched GEMM
  patches_onednn  the same, the dot on oneDNN (--xla_cpu_use_onednn with the 'dot' fusion type;
                  oneDNN picks its kernels for the CPU at run time, AVX-512 and AMX included)

  python scripts/profile_convs.py --batch_size=8                  # both recipes, every variant
  python scripts/profile_convs.py --configs configs/catsdogs.py --variants eigen,ynn \
      --dtypes float32,bfloat16 --out profile.json

Each variant runs in its own process (XLA reads its flags once), with RPSFLAX_XLA_CPU_FLAGS=0 and
the variant's flags. dtypes: float32, and bfloat16 where the CPU has AVX512-BF16 (or as asked).
The gradient is w.r.t. kernel, bias and input (the first layer's w.r.t. kernel and bias alone, as
in training). Times are the best of --repeats calls after one untimed call; the load average is
recorded before and after each variant (a shared machine's figures are only comparable under the
same load). Prints a table on stderr and one JSON object on stdout (and --out): per layer, per
variant and dtype, forward and gradient ms and GFLOP/s, the patches variants' largest relative
difference from the direct conv, and per layer the fastest variant; plus the CPU, its ISA, the
XLA:CPU flags the project picks for it, and the peak (rpsflax.benchmark.peak).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's rpsflax

import rpsflax  # noqa: E402,F401  (the project's flags for the parent; workers set their own)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rpsflax import config_base, cpuinfo, report, xla_cpu  # noqa: E402
from rpsflax.benchmark import peak  # noqa: E402
from rpsflax.models.cnn import CNN_FILTERS, cnn_conv_names  # noqa: E402
from rpsflax.models.layers import max_pool_2x2  # noqa: E402
from rpsflax.models.vgg import VGG16_BLOCKS  # noqa: E402

EIGEN = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce"
ONEDNN_DOT = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce,-dot "
              "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot")
# variant -> (XLA_FLAGS of its process, lowering)
VARIANTS = {"eigen": (EIGEN, "direct"), "ynn": ("", "direct"), "patches": (EIGEN, "patches"),
            "patches_onednn": (ONEDNN_DOT, "patches")}
DEFAULT_CONFIGS = ("configs/rps.py", "configs/catsdogs.py")
DN = ("NHWC", "HWIO", "NHWC")


def conv_layers(config):
  """(name, input side, in channels, out channels, padding, pools after) for the backbone."""
  size = int(config.data.image_size)
  out = []
  cin = 3
  if config.model.name == "vgg16":
    for block, convs, filters in VGG16_BLOCKS:
      for i in range(1, convs + 1):
        out.append((f"block{block}_conv{i}", size, cin, filters, "SAME", i == convs))
        cin = filters
      size //= 2
  elif config.model.name == "cnn":
    for filters, name in zip(CNN_FILTERS, cnn_conv_names()):
      out.append((name, size, cin, filters, "VALID", True))
      size = (size - 2) // 2
      cin = filters
  else:
    raise SystemExit(f"{config.model.name}: profile_convs knows vgg16 and cnn")
  return out


def direct(x, k, padding):
  return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)


def patches(x, k, padding):
  """The 3x3 stride-1 conv as one GEMM: (N, H, W, 9 C) patches, tap-major as the HWIO kernel
  flattens, times the (9 C, O) kernel."""
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1] - 2, x.shape[2] - 2
  p = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
  return jax.lax.dot_general(p, k.reshape(-1, k.shape[-1]), (((3,), (0,)), ((), ())))


def best_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best * 1e3


def worker(args) -> int:
  """Times every layer of every config in one variant (this process' XLA flags), dtypes as
  asked; one JSON line per layer on stdout."""
  lowering = VARIANTS[args.worker][1]
  conv = patches if lowering == "patches" else direct
  rng = np.random.default_rng(0)
  for config_path in args.configs:
    config = load(config_path)
    n = args.batch_size or int(config.batch_size)
    for dtype in args.dtypes.split(","):
      for i, (name, size, cin, cout, pad, pools) in enumerate(conv_layers(config)):
        x = jnp.asarray(rng.standard_normal((n, size, size, cin)), dtype)
        k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), dtype)
        bias = jnp.zeros((cout,), dtype)

        def layer(x, k, bias, conv=conv, pad=pad, pools=pools):  # models.layers.ConvReLU's order
          y = conv(x, k, pad)
          return jax.nn.relu((max_pool_2x2(y) if pools else y) + bias)
        row = {"config": config_path, "variant": args.worker, "dtype": dtype, "layer": name,
               "input": [n, size, size, cin], "out_channels": cout}
        fwd = jax.jit(layer)
        if lowering != "direct":
          ref = jax.jit(lambda x, k, b, pad=pad, pools=pools: layer(x, k, b, direct, pad, pools))
          a, b = np.asarray(fwd(x, k, bias), np.float32), np.asarray(ref(x, k, bias), np.float32)
          row["max_rel_diff_vs_direct"] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        row["forward_ms"] = best_ms(fwd, x, k, bias, repeats=args.repeats)
        wrt = (1, 2) if i == 0 else (0, 1, 2)
        grad = jax.jit(jax.grad(lambda x, k, b: jnp.sum(layer(x, k, b).astype(jnp.float32)),
                                argnums=wrt))
        row["grad_ms"] = best_ms(grad, x, k, bias, repeats=args.repeats)
        print(json.dumps(row), flush=True)
  return 0


def load(config_path: str):
  return config_base.load_sibling(os.path.abspath(config_path),
                                  os.path.basename(config_path)[:-3]).get_config()


def run_variant(variant: str, args) -> tuple[list, dict]:
  env = dict(os.environ)
  env[xla_cpu.OPT_OUT_ENV] = "0"
  user = xla_cpu.without_cpu_flags(env.get("XLA_FLAGS", ""),
                                   names={"--xla_cpu_experimental_ynn_fusion_type",
                                          "--xla_cpu_use_onednn",
                                          "--xla_cpu_experimental_onednn_fusion_type"})
  env["XLA_FLAGS"] = " ".join([user, VARIANTS[variant][0]]).strip()
  cmd = [sys.executable, __file__, "--worker", variant, "--configs", *args.configs,
         "--batch_size", str(args.batch_size), "--dtypes", args.dtypes,
         "--repeats", str(args.repeats)]
  load_before = os.getloadavg()
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
  rows = []
  for line in proc.stdout:
    r = json.loads(line)
    gflop = layer_gflop(r)
    r["gflop"] = round(gflop, 4)
    r["forward_gflops_per_sec"] = round(gflop / r["forward_ms"] * 1e3, 1)
    r["grad_gflops_per_sec"] = round(grad_factor(r) * gflop / r["grad_ms"] * 1e3, 1)
    rows.append(r)
    diff = (f"  diff {r['max_rel_diff_vs_direct']:.1e}" if "max_rel_diff_vs_direct" in r else "")
    print(f"{variant:15s} {r['dtype']:9s} {r['layer']:14s} {str(r['input']):20s} "
          f"fwd {r['forward_ms']:8.1f} ms ({r['forward_gflops_per_sec']:6.1f} GFLOP/s)  "
          f"grad {r['grad_ms']:8.1f} ms ({r['grad_gflops_per_sec']:6.1f}){diff}",
          file=sys.stderr, flush=True)
  if proc.wait():
    raise SystemExit(f"variant {variant} failed ({proc.returncode}): {' '.join(cmd)}")
  return rows, {"xla_flags": env["XLA_FLAGS"], "seconds": round(time.perf_counter() - t0, 1),
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def layer_gflop(r) -> float:
  n, size, _, cin = r["input"]
  out = size if r["layer"].startswith("block") else size - 2  # VGG 'same', the CNN 'valid'
  return 2 * n * out * out * 9 * cin * r["out_channels"] / 1e9


def grad_factor(r) -> int:
  """The gradient's GEMM work in forwards: kernel and input gradients (2), kernel alone for a
  first layer (1)."""
  return 1 if r["layer"] in ("block1_conv1", cnn_conv_names()[0]) else 2


def summarize(rows: list) -> dict:
  """Per (config, dtype, variant): summed forward and gradient ms; per layer: the fastest
  variant forward and with its gradient."""
  totals, best = {}, {}
  for r in rows:
    key = f"{r['config']} {r['dtype']} {r['variant']}"
    t = totals.setdefault(key, {"forward_ms": 0.0, "grad_ms": 0.0})
    t["forward_ms"] += r["forward_ms"]
    t["grad_ms"] += r["grad_ms"]
    lk = f"{r['config']} {r['dtype']} {r['layer']}"
    b = best.setdefault(lk, {"forward": (r["variant"], r["forward_ms"]),
                             "grad": (r["variant"], r["grad_ms"])})
    for what in ("forward", "grad"):
      if r[f"{what}_ms"] < b[what][1]:
        b[what] = (r["variant"], r[f"{what}_ms"])
  for t in totals.values():
    t["forward_ms"], t["grad_ms"] = round(t["forward_ms"], 1), round(t["grad_ms"], 1)
  return {"totals": totals,
          "fastest": {k: {w: {"variant": v, "ms": round(ms, 2)} for w, (v, ms) in b.items()}
                      for k, b in best.items()}}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
  p.add_argument("--batch_size", type=int, default=8, help="0: each config's batch_size")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--dtypes", default="", help="default: float32, and bfloat16 with AVX512-BF16")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  cpu = cpuinfo.this_cpu()
  args.dtypes = args.dtypes or ("float32,bfloat16" if cpu.isa == "avx512_bf16" else "float32")
  if args.worker:
    return worker(args)
  unknown = set(args.variants.split(",")) - set(VARIANTS)
  if unknown:
    p.error(f"--variants: {sorted(unknown)} unknown; use some of {list(VARIANTS)}")
  rows, runs = [], {}
  for variant in args.variants.split(","):
    r, runs[variant] = run_variant(variant, args)
    rows += r
  result = {"cpu": {"model_name": cpu.model_name, "isa": cpu.isa,
                    "vector_flags": cpu.vector_flags, "usable_cores": cpuinfo.usable_cores(cpu)},
            "project_xla_cpu_flags": xla_cpu.describe(), "configs": args.configs,
            "batch_size": args.batch_size, "dtypes": args.dtypes, "repeats": args.repeats,
            "variants": {v: {"lowering": VARIANTS[v][1], **runs[v]} for v in runs},
            **summarize(rows), "layers": rows,
            "peak": peak.machine_peak("float32"), "jax": jax.__version__}
  report.print_json(result, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
