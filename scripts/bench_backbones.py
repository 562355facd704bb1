#!/usr/bin/env python
"""Forward images/s of the ported ImageNet backbones beside Keras (TensorFlow) on this machine.

  python scripts/bench_backbones.py                       # resnet50 at 224, mobilenet_v2 at 160
  python scripts/bench_backbones.py --backbones mobilenet_v2 --size 224 --batch 32

Both run the backbone without its top, in inference mode, fp32, on the same seeded weights and
preprocessed batch: ours as one jit-compiled apply, Keras as `model(x, training=False)` in a
tf.function (what predict runs). Timed round by round, interleaved (rpsflax.benchmark.timing.interleaved),
so a shared machine's load drift hits both; the ratio is the median of the per-round ratios.
In one process: TensorFlow's and XLA's thread pools idle while the other runs.
A frozen-backbone train step costs this forward plus the head (no backbone gradient); that step
beside Keras' train_on_batch: `python -m rpsflax.benchmark --config=configs/rps_resnet50.py
--compare-keras` (or configs/catsdogs_mobilenetv2.py), see BENCHMARKS.md.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rpsflax.benchmark import environment, timing  # noqa: E402
from rpsflax.models import backbone_module  # noqa: E402
from rpsflax.preprocess import get_preprocessor  # noqa: E402


def bench(name: str, size: int, batch: int, budget: float) -> dict:
  # Inside: TensorFlow and the tests' Keras helpers load only once flags have parsed.
  import keras_reference as kr  # noqa: PLC0415  (seeded Keras models, release-layout writer)
  import tensorflow as tf  # noqa: PLC0415

  model = kr.seeded_bn_backbone(name, False, size)
  path = kr.write_weights_h5(model, f"/tmp/bench_{name}_{os.getpid()}.weights.h5")
  from rpsflax import weights as W  # noqa: PLC0415
  variables = W.load_keras_backbone(path, name)
  os.unlink(path)
  images = np.stack([kr.synthetic_image(size, seed=i) for i in range(batch)])
  x = np.asarray(get_preprocessor(name)(images))
  module = backbone_module(name)
  ours = jax.jit(lambda v, x: module.apply(v, x))
  xj = jax.device_put(x)
  keras_fn = tf.function(lambda x: model(x, training=False))
  xt = tf.constant(x)
  err = kr.rel_error(np.asarray(ours(variables, xj)), keras_fn(xt).numpy())[2]
  rates = timing.interleaved(
      {"flax": (lambda: ours(variables, xj), batch),
       "keras": (lambda: keras_fn(xt).numpy(), batch)},
      steps=2, repeats=0, warmup=2, block=jax.block_until_ready, budget_seconds=budget,
      log=lambda s: print(s, flush=True))
  return {"backbone": name, "image_size": size, "batch": batch,
          "flax_images_per_s": statistics.median(rates["flax"]),
          "keras_images_per_s": statistics.median(rates["keras"]),
          "flax_over_keras": timing.paired_ratio(rates["flax"], rates["keras"]),
          "rounds": len(rates["flax"]), "max_rel_error_vs_keras": err}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenet_v2"])
  p.add_argument("--size", type=int, default=0, help="default: 224 for resnet50, 160 else")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--budget", type=float, default=40.0, help="seconds of timed rounds each")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args(argv)
  results = []
  for name in args.backbones:
    size = args.size or (224 if name == "resnet50" else 160)
    r = bench(name, size, args.batch, args.budget)
    results.append(r)
    print(f"{name} {size}x{size} batch {args.batch}: ours {r['flax_images_per_s']:.1f} img/s, "
          f"Keras {r['keras_images_per_s']:.1f} img/s, ours/Keras {r['flax_over_keras']:.2f}x "
          f"({r['rounds']} rounds; outputs agree to {r['max_rel_error_vs_keras']:.1e})", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"versions": environment.versions(),
                                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
  main()
