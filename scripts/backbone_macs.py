#!/usr/bin/env python
"""Multiply-accumulates of each ImageNet backbone's forward pass (convs and dense layers).

  python scripts/backbone_macs.py            # 224x224, without and with the top
  python scripts/backbone_macs.py --size 160

Counted by rpsflax/benchmark/flops.py (what the benchmark's GFLOP/s figures use) from the shapes each
nn.Conv / ConvReLU / DepthwiseConv3x3 / nn.Dense sees in an abstract forward (nothing runs): output pixels x
kernel window x input channels per group x output channels. BatchNorm, pooling, activations and
adds are not counted (as Keras' and the papers' GMAC figures do not).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rpsflax.benchmark.flops import layer_macs  # noqa: E402
from rpsflax.models import IMAGENET_BACKBONES, backbone_module, get_spec  # noqa: E402


def count_macs(module, size: int) -> int:
  total = 0

  def count(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      total += layer_macs(context.module, args, out)
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return total


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=int, default=224)
  args = p.parse_args(argv)
  for name in IMAGENET_BACKBONES:
    notop = count_macs(backbone_module(name), args.size)
    top_size = get_spec(name).top_size or args.size  # VGG16's top is built for 224
    top = count_macs(backbone_module(name, include_top=True), top_size)
    print(f"{name:14s} {args.size}x{args.size}: {notop / 1e9:6.3f} GMAC without top, "
          f"{top / 1e9:6.3f} with top")


if __name__ == "__main__":
  main()
