#!/usr/bin/env python
"""Convert Keras weights (VGG16 ImageNet release, or a cats-vs-dogs CNN file) into a Flax folder.

  # the official VGG16 ImageNet weights without the top (downloads 58 MB once, md5-checked):
  python scripts/convert_keras_weights.py
  # from a local copy (offline machines), with the 1000-class top:
  python scripts/convert_keras_weights.py --input vgg16_weights_tf_dim_ordering_tf_kernels.h5 --include-top
  # ResNet50 / MobileNetV2 (BatchNorm statistics go to batch_stats; 160x160 MobileNetV2 release):
  python scripts/convert_keras_weights.py --model resnet50
  python scripts/convert_keras_weights.py --model mobilenet_v2 --image-size 160
  # a cats-vs-dogs model saved by the Keras tutorial:
  python scripts/convert_keras_weights.py --model cnn --input catsdogs.weights.h5

Exit status: 0 done, 2 a mistake to fix (one `error:` line naming the file and the fix: not a
weights file, missing or wrong-shaped layers, offline download), 1 a bug (traceback).

The output folder (an Orbax checkpoint in params/ plus manifest.json) loads in one call with
`rpsflax.weights.load_converted(DIR)`, and trains with `--config.weights=DIR`.
"""

import argparse
import math
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rpsflax import errors  # noqa: E402  (after the path: this checkout's rpsflax)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      prog="convert_keras_weights.py",
      description=(
          "Convert a Keras weights file into Flax parameters, matching layers by Keras layer "
          "name and checking every shape against the Flax model. Reads the legacy Keras HDF5 "
          "release files (vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5), Keras 3 "
          ".weights.h5 files and .keras models (opened with safe_mode). Writes DIR/params (an "
          "Orbax checkpoint) and DIR/manifest.json (source file, md5, Keras layer -> Flax path, "
          "shapes); load it with rpsflax.weights.load_converted(DIR) or train with "
          "--config.weights=DIR."),
      epilog=__doc__.split("\n\n")[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", metavar="FILE", default="",
                 help="Keras file to convert. Omit to download the official Keras ImageNet "
                      "release of --model through keras.utils.get_file (md5-checked where Keras "
                      "publishes one; cached in ~/.keras).")
  p.add_argument("--output", metavar="DIR", default="",
                 help="folder to write (default: weights/vgg16_notop, weights/vgg16 with "
                      "--include-top, weights/resnet50_notop, weights/mobilenet_v2_1.0_224_notop, "
                      "weights/catsdogs_cnn for --model cnn). An existing conversion there is "
                      "replaced.")
  p.add_argument("--include-top", action="store_true",
                 help="ImageNet backbones: also convert the top (VGG16's fc1, fc2; the "
                      "1000-class predictions layer; the file must have them). Without it a "
                      "file's top layers are ignored.")
  p.add_argument("--model", default="vgg16", metavar="NAME",
                 help="a backbone of the registry (rpsflax.models.BACKBONES; default vgg16). One "
                      "with an ImageNet release (vgg16, resnet50, mobilenet_v2) converts as the "
                      "standalone Keras application (Flax paths are Keras layer names: "
                      "block1_conv1/..., conv1_bn/...). One without (cnn) converts as the model "
                      "of configs/catsdogs.py (conv2d..conv2d_3 -> backbone, dense/dense_1 -> "
                      "head/hidden_0, head/predictions when present).")
  p.add_argument("--alpha", type=float, default=1.0,
                 help="backbones with widths (mobilenet_v2): width multiplier (0.35, 0.5, 0.75, "
                      "1.0, 1.3, 1.4)")
  p.add_argument("--image-size", type=int, default=0,
                 help="cnn: input size the dense layer was built for (default: the config's "
                      "data.image_size, 150). mobilenet_v2: which release to download (96, 128, "
                      "160, 192 or 224; default 224)")
  return p.parse_args(argv)


EXIT_USER_ERROR = 2  # a mistake the user can fix (as rpsflax.main and argparse); bugs exit 1


def user_error(message: str) -> int:
  """One `error:` line on stderr, no traceback; the exit status of a user's mistake."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return EXIT_USER_ERROR


def main(argv=None) -> int:
  args = parse_args(argv)
  # After the flags parse: --help and bad arguments answer without loading JAX.
  from rpsflax import models  # noqa: PLC0415
  from rpsflax import weights as W  # noqa: PLC0415

  spec = models.REGISTRY.get(args.model)
  if spec is None:
    return user_error(f"--model {args.model}: use one of {', '.join(models.BACKBONES)}")
  if spec.release is None and args.include_top:
    return user_error(f"--include-top is for the ImageNet backbones; a {args.model} file's dense "
                      "layers are always converted")
  if spec.release is None and not args.input:
    return user_error(f"--model {args.model} needs --input FILE: there is no official release "
                      "of this model")

  t0 = time.time()
  try:
    if spec.release is not None:  # the standalone Keras application
      rel = W.release(args.model, args.include_top, args.image_size or 224, args.alpha)
      output = pathlib.Path(args.output or REPO / "weights" / rel.folder)
      source = args.input or W.download_release(rel)
      shapes, layer_map, ignore = W.backbone_target(args.model, args.include_top, args.alpha)
      alpha = f", alpha={args.alpha}" if spec.alphas else ""
      optional = ()
      desc = f"{spec.keras_application}(include_top={args.include_top}{alpha})"
    else:  # the tutorial's whole model: backbone and head
      output = pathlib.Path(args.output or REPO / "weights" / f"catsdogs_{args.model}")
      source = args.input
      from rpsflax import config_base  # noqa: PLC0415
      config = config_base.load_sibling(str(REPO / "configs" / "catsdogs.py"), "catsdogs").get_config()
      config.model.name = args.model
      shapes, layer_map, optional = W.model_target(config, args.image_size or None)
      ignore, desc = (), "build_model(configs/catsdogs.py)"
    variables, manifest = W.convert_keras_file(source, shapes, layer_map, optional=optional,
                                               ignore=ignore, description=desc)
    manifest["include_top"] = bool(args.include_top)
    W.save_converted(output, variables, manifest)
  except (errors.WeightsError, errors.WriteError) as e:
    return user_error(str(e))

  layers = manifest["layers"]
  n = sum(math.prod(s) for e in layers.values() for s in e["weights"].values())
  print(f"converted {len(layers)} layers, {n:,} parameters ({desc}) in {time.time() - t0:.1f}s")
  print(f"  source: {os.path.abspath(source)} ({manifest['source_format']}, md5 {manifest['source_md5']})")
  for kname, entry in layers.items():
    shapes_txt = ", ".join(f"{w} {tuple(s)}" for w, s in entry["weights"].items())
    print(f"  {kname:14s} -> {entry['flax_path']:22s} {shapes_txt}")
  print(f"  written: {output.resolve()} (load: rpsflax.weights.load_converted; train: "
        f"--config.weights={output})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
