"""Parity at export time: the artifact, run in its own runtime, against `rpsflax.predict`'s
probabilities on one batch of images.

Which images: those the user names (--images), else real images from the workdir's data folder
(config.data.dir) when it is there, else a seeded synthetic batch; the manifest says which.
Images are read and resized exactly as `rpsflax.predict` reads them (input_pipeline.load_images).
"""

import os
import pathlib
from typing import Callable, Sequence

import numpy as np
from absl import logging

from rpsflax import data_files, input_pipeline
from rpsflax.errors import DataError, ExportError

# Bounds on |p_artifact - p_predict| for probabilities in [0, 1], each format's DEFAULT_MAX_DIFF:
# - stablehlo: the same XLA program as rpsflax.predict's, run by the same compiler: measured 0.0
#   on CPU; 1e-5 leaves room for another batch size tiling sums differently.
# - keras, savedmodel, onnx: the same float32 network through other kernels (TensorFlow, ONNX
#   Runtime) that sum in other orders. tests/test_parity_bn_backbones.py measured Keras against
#   this port at up to 2.5e-5 of the largest activation per layer (MobileNetV2, 53 layers deep)
#   and 1.25e-3 for single elements; a logit of a few units moves by ~1e-4 and a probability by
#   at most a quarter of that per unit of logit. 1e-3 covers that with room.
# - onnx: the same graph after tf2onnx's rewrites, run by ONNX Runtime's kernels: on a random
#   ResNet50 whose BatchNorm statistics are calibrated on six images (tests/test_export.py, 32 px)
#   it measured 1.10e-3 (mean 1.2e-4) where Keras and the SavedModel measured 6.95e-4, and 4e-6
#   on VGG16 (2026-12-05, 16 real images); 2e-3 covers that, five times under a real mistake.
# All stay well under what a real mistake does (a swapped channel order, a missing
# preprocessing step or a wrong class order moves probabilities by 1e-2 or more: the tests check).
TIGHT_MAX_DIFF = 1e-5
KERNELS_MAX_DIFF = 1e-3
ONNX_MAX_DIFF = 2e-3
DEFAULT_COUNT = 16
SYNTHETIC_SEED = 0


def _spread(items: Sequence, count: int) -> list:
  """`count` items evenly spaced through a sorted list, so every class folder is visited."""
  if len(items) <= count:
    return list(items)
  idx = np.linspace(0, len(items) - 1, count).round().astype(int)
  return [items[i] for i in idx]


def pick_images(config, user_paths: Sequence[str] = (), count: int = DEFAULT_COUNT,
                seed: int = SYNTHETIC_SEED) -> tuple[np.ndarray, dict]:
  """(uint8 [N, H, W, 3] images, a description for the manifest)."""
  size, method = int(config.data.image_size), config.data.resize_method
  data_dir = config.data.dir
  if user_paths:
    source, where = "user", [str(p) for p in user_paths]
    try:
      files = data_files.list_images(list(user_paths))
    except DataError as e:
      raise ExportError(f"--images: {e}") from e
  elif data_dir and os.path.isdir(data_dir):
    source, where = "data_dir", [str(data_dir)]
    files = data_files.list_images([data_dir])
  else:
    source, where, files = "synthetic", [], []
  if source != "synthetic":
    images, ok, skipped = input_pipeline.load_images(_spread(files, count), size, method,
                                                     decoder=config.data.decoder)
    if not len(ok):
      if source == "user":
        raise ExportError(f"--images={','.join(where)}: no readable image among {len(files)} "
                          "file(s)")
      logging.warning("no readable image in %s: parity on a synthetic batch", data_dir)
      source = "synthetic"
  if source == "synthetic":
    rng = np.random.default_rng(seed)
    images, ok = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), []
  info = {"source": source, "count": int(len(images)), "image_size": size,
          "resize_method": method}
  if source == "synthetic":
    info["seed"] = seed
  else:
    info["from"] = where
    info["files"] = [os.path.relpath(p, where[0]) if source == "data_dir" else str(p) for p in ok]
  return np.asarray(images, np.uint8), info


def measure(run: Callable, images: np.ndarray, reference: np.ndarray,
            class_names: Sequence[str]) -> dict:
  """Run the artifact on `images` and compare with `reference` ([N, C] probabilities)."""
  got = np.asarray(run(images), np.float64)
  want = np.asarray(reference, np.float64)
  if got.shape != want.shape:
    raise ExportError(f"the exported model returns shape {got.shape} where rpsflax.predict "
                      f"gives {want.shape} (classes {list(class_names)})")
  diff = np.abs(got - want)
  return {"max_abs_diff": float(diff.max()) if diff.size else 0.0,
          "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
          "labels_agree": int(np.sum(got.argmax(-1) == want.argmax(-1))),
          "count": int(len(images))}


def check(figures: dict, bound: float, fmt: str, output) -> None:
  """ExportError (nothing written) when the artifact disagrees with rpsflax.predict."""
  if not figures["max_abs_diff"] <= bound:
    raise ExportError(
        f"--format={fmt}: the exported model disagrees with rpsflax.predict by "
        f"{figures['max_abs_diff']:.3g} (bound --max_diff={bound:g}; {figures['labels_agree']}/"
        f"{figures['count']} labels agree), so nothing was written to {pathlib.Path(output)}. "
        "This is a bug of the exporter: please report it with the workdir's config.json")
