r"""Where a step's time goes, layer by layer: each 3x3 conv (+ ReLU + pool where the model pools)
of a config's backbone, timed alone forward and with its gradient, against this machine's peak.

  python scripts/profile_convs.py --config=configs/rps.py --batch_size=8
  RPSFLAX_XLA_CPU_FLAGS=0 python scripts/profile_convs.py --config=configs/catsdogs.py  # XLA defaults

Prints one JSON object: per layer the input shape, GFLOP, forward ms and GFLOP/s, gradient ms
(w.r.t. kernel and input; the first layer's w.r.t. the kernel alone, as in training), and the
share of the summed forward time; plus peak GFLOP/s (a large dot) and the XLA_FLAGS in force.
The layers run with the same XLA flags as the project (`import rpsflax` sets them).
"""

import argparse
import os
import sys
import time

import rpsflax  # noqa: F401  (sets the project's XLA:CPU flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import config_base, report
from rpsflax.benchmark import jax_figures
from rpsflax.models.cnn import CNN_FILTERS, cnn_conv_names
from rpsflax.models.layers import max_pool_2x2
from rpsflax.models.vgg import VGG16_BLOCKS


def best_ms(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best * 1e3


def conv_layers(config):
  """(name, input side, in channels, out channels, padding, pools after) for the backbone."""
  size = int(config.data.image_size)
  out = []
  if config.model.name == "vgg16":
    cin = 3
    for block, convs, filters in VGG16_BLOCKS:
      for i in range(1, convs + 1):
        out.append((f"block{block}_conv{i}", size, cin, filters, "SAME", i == convs))
        cin = filters
      size //= 2
  else:
    cin = 3
    for filters, name in zip(CNN_FILTERS, cnn_conv_names()):
      out.append((name, size, cin, filters, "VALID", True))
      size = (size - 2) // 2
      cin = filters
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  config = config_base.load_sibling(os.path.abspath(args.config),
                                    os.path.basename(args.config)[:-3]).get_config()
  n = args.batch_size or int(config.batch_size)
  rows, rng = [], np.random.default_rng(0)
  for i, (name, size, cin, cout, pad, pools) in enumerate(conv_layers(config)):
    x = jnp.asarray(rng.standard_normal((n, size, size, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)

    def layer(x, k, pad=pad, pools=pools):
      y = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), pad,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")))
      return max_pool_2x2(y) if pools else y
    fwd = best_ms(jax.jit(layer), x, k)
    wrt = (1,) if i == 0 else (0, 1)
    grad = best_ms(jax.jit(jax.grad(lambda x, k: jnp.sum(layer(x, k)), argnums=wrt)), x, k)
    out_side = size if pad == "SAME" else size - 2
    gflop = 2 * n * out_side * out_side * 9 * cin * cout / 1e9
    rows.append({"layer": name, "input": [n, size, size, cin], "out_channels": cout,
                 "gflop": round(gflop, 3), "forward_ms": round(fwd, 2),
                 "forward_gflops_per_sec": round(gflop / fwd * 1e3, 1),
                 "grad_ms": round(grad, 2)})
    print(f"{name:14s} {str(rows[-1]['input']):22s} fwd {fwd:8.1f} ms "
          f"({rows[-1]['forward_gflops_per_sec']:6.1f} GFLOP/s)  grad {grad:8.1f} ms",
          file=sys.stderr, flush=True)
  total = sum(r["forward_ms"] for r in rows)
  for r in rows:
    r["forward_share"] = round(r["forward_ms"] / total, 3)
  result = {"config": args.config, "batch_size": n, "layers": rows,
            "forward_ms_total": round(total, 1), "grad_ms_total": round(sum(r["grad_ms"] for r in rows), 1),
            "forward_gflops_per_sec": round(sum(r["gflop"] for r in rows) / total * 1e3, 1),
            "peak_gflops_per_sec": round(jax_figures.peak_gflops(), 1),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
  report.print_json(result, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
