"""Label image files with a trained workdir: the body of `python -m rpsflax.predict`.

`run` lists the files, predicts them in chunks (`Predictor`: the workdir's model, images read and
resized exactly as in training and preprocessed by the same jit-compiled function), prints one
line per image and writes the CSV/JSON, the Kaggle submission and the grid a user asked for.
"""

import csv
import json
import pathlib
import re
import sys
import time
from typing import Iterable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from rpsflax import (data_files, input_pipeline, pil_image, report, restore, run_meta,
                     sharding)
from rpsflax.errors import PredictError


# ---------------------------------------------------------------------------------------------
# Pure helpers (no model): ids, truths, files

def file_id(path) -> int:
  """Kaggle's id of a test file: its numeric stem (test1/1234.jpg -> 1234)."""
  stem = pathlib.Path(path).stem
  if not stem.isdigit():
    raise PredictError(f"{path}: a submission needs numerically named files (Kaggle's test1/N.jpg)")
  return int(stem)


def positive_class(class_names: Sequence[str], requested: str = "") -> str:
  if requested:
    if requested not in class_names:
      raise PredictError(f"--positive_class={requested!r}: the model's classes are {list(class_names)}")
    return requested
  if "dog" in class_names:
    return "dog"
  if len(class_names) == 2:
    return class_names[1]  # the sigmoid output of a binary model: P(class 1)
  raise PredictError(f"--submission needs one probability per image: with {len(class_names)} "
                     f"classes {list(class_names)}, name one with --positive_class=...")


def guess_true_label(path, class_names: Sequence[str]) -> Optional[str]:
  """The class a file's folder or name says it is ('rock/x.png', 'cat.12.jpg', 'paper3.png'), if any."""
  path = pathlib.Path(path)
  lower = {c.lower(): c for c in class_names}
  parent = path.parent.name.lower()
  for name in (parent, parent[:-1] if parent.endswith("s") else None):
    if name in lower:
      return lower[name]
  m = re.match(r"[a-z]+", path.name.lower())
  if m and m.group(0) in lower:
    return lower[m.group(0)]
  return None


def write_submission(path, ids: Iterable[int], positive_probs: Iterable[float]) -> pathlib.Path:
  """Kaggle's `id,label` CSV, sorted by id; label is the positive class' probability."""
  rows = sorted(zip((int(i) for i in ids), (float(p) for p in positive_probs)))
  seen = set()
  for i, _ in rows:
    if i in seen:
      raise PredictError(f"id {i} appears twice: two files with the same numeric stem")
    seen.add(i)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "label"])
    for i, p in rows:
      w.writerow([i, f"{p:.6f}"])
  return path


def write_predictions(path, rows: Sequence[dict], class_names: Sequence[str],
                      checkpoint: Optional[dict] = None, workdir=None) -> pathlib.Path:
  """rows ({file, label, probability, probabilities}) as .csv (one p_<class> column each) or .json
  (with `checkpoint`, the record of the checkpoint that predicted them, when given)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix.lower() == ".json":
    record = {"class_names": list(class_names)}
    if checkpoint is not None:  # its path is relative to the workdir, named beside it
      record["checkpoint"] = dict(checkpoint)
      record["workdir"] = str(workdir) if workdir is not None else None
    path.write_text(json.dumps({**record, "predictions": list(rows)}, indent=2) + "\n")
  elif path.suffix.lower() == ".csv":
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["file", "label", "probability"] + [f"p_{c}" for c in class_names])
      for r in rows:
        w.writerow([r["file"], r["label"], f"{r['probability']:.6f}"]
                   + [f"{r['probabilities'][c]:.6f}" for c in class_names])
  else:
    raise PredictError(f"--output={path}: name a .csv or a .json file")
  return path


def natural_key(path) -> list:
  """Sort key that orders numbers by value: scissors2.png before scissors10.png."""
  parts = re.split(r"(\d+)", str(path))
  return [int(t) if i % 2 else t.lower() for i, t in enumerate(parts)]


def list_inputs(paths: Sequence[str]) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
  """Image files named directly or found under folders (each folder's in natural order: 1, 2,
  10; no duplicates); missing paths are reported. A file named explicitly is tried whatever its
  extension (unreadable -> skipped)."""
  existing = [pathlib.Path(p).expanduser() for p in paths if pathlib.Path(p).expanduser().exists()]
  missing = [(str(p), "no such file or folder") for p in paths
             if not pathlib.Path(p).expanduser().exists()]
  files, seen = [], set()
  for p in existing:
    found = [pathlib.Path(f) for f in data_files.list_images(p)]
    for f in sorted(found, key=natural_key) if p.is_dir() else found:
      if f not in seen:
        seen.add(f)
        files.append(f)
  return files, missing


def display_image(path, side: int = 256) -> np.ndarray:
  """The file as a person sees it (RGB, at most `side` pixels a side), for the grid: not the
  model's input, which is resized to config.data.image_size (32 px in the tiny recipes)."""
  try:
    im = pil_image.rgb_image(pathlib.Path(path).read_bytes(), data_files.DEFAULT_MAX_IMAGE_PIXELS)
  except (OSError, ValueError) as e:  # it was predicted, so it decodes for the model: say so
    logging.warning("--grid: %s drawn grey (%s)", path, e)
    return np.full((side, side, 3), 128, np.uint8)
  im.thumbnail((side, side))
  return np.asarray(im, np.uint8)


# ---------------------------------------------------------------------------------------------
# The model

class Predictor:
  """A trained workdir's model as a jit-compiled probabilities function over fixed-size batches."""

  def __init__(self, workdir, which: str = "best", batch_size: int = 32):
    (self.config, self.model, self.params, self.class_names,
     predict_fn, meta) = restore.load_for_inference(workdir, which=which)
    self.checkpoint = meta.checkpoint_record()  # which one, epoch, step, folder
    self.mesh = sharding.make_mesh()
    n = self.mesh.devices.size
    self.batch_size = -(-max(1, int(batch_size)) // n) * n  # a multiple of the device count
    self._shard = lambda x: sharding.shard_batch({"image": x, "mask": np.ones(len(x), bool)},
                                                 self.mesh)["image"]
    self._fn = jax.jit(predict_fn, in_shardings=(sharding.replicated(self.mesh),
                                                 sharding.data_sharding(self.mesh)),
                       out_shardings=sharding.replicated(self.mesh))

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  def load(self, paths):
    """(uint8 images, readable paths, [(path, why)] skipped), resized as in training."""
    return input_pipeline.load_images([str(p) for p in paths], self.image_size,
                                      self.config.data.resize_method,
                                      decoder=self.config.data.decoder)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """[N, C] class probabilities for uint8 images [N, H, W, 3], batch by batch."""
    out = []
    b = self.batch_size
    for i in range(0, len(images), b):
      chunk = np.asarray(images[i:i + b])
      pad = b - len(chunk)
      if pad:  # same shape every call: one compilation
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      probs = jax.device_get(self._fn(self.params, self._shard(chunk)))
      out.append(np.asarray(probs[:b - pad], np.float64))
    if not out:
      return np.zeros((0, len(self.class_names)))
    return np.concatenate(out)


def predict_files(predictor: Predictor, files: Sequence[pathlib.Path], *, chunk: int = 512):
  """Predict every file, reading `chunk` files at a time (a test folder need not fit in memory).

  Returns (rows, skipped): rows are {file, label, probability, probabilities} in the order of
  `files`.
  """
  rows, skipped = [], []
  names = predictor.class_names
  for start in range(0, len(files), chunk):
    images, ok, bad = predictor.load(files[start:start + chunk])
    skipped += [(str(p), why) for p, why in bad]
    if not len(ok):
      continue
    probs = predictor.probabilities(images)
    for path, p in zip(ok, probs):
      k = int(np.argmax(p))
      rows.append({"file": str(path), "label": names[k], "probability": float(p[k]),
                   "probabilities": {c: float(v) for c, v in zip(names, p)}})
  return rows, skipped


def run(workdir, paths: Sequence[str], *, which: str = "best", batch_size: int = 32,
        output: str = "", grid: str = "", grid_max: int = 32, submission: str = "",
        positive: str = "", quiet: bool = False, out=sys.stdout) -> list[dict]:
  """The command, as a function: predict, print, and write the requested files. Returns the rows;
  the last log line sums it up (the checkpoint used, accuracy where file or folder names give
  the classes, the files written)."""
  start = time.time()
  if output and pathlib.Path(output).suffix.lower() not in (".csv", ".json"):
    raise PredictError(f"--output={output}: name a .csv or a .json file")
  files, skipped = list_inputs(paths)
  if submission:  # fail on a bad file name before the model is even loaded
    for f in files:
      file_id(f)
  if not files:
    raise PredictError("no image files found in " + " ".join(map(str, paths))
                       + "".join(f"\n  {p}: {why}" for p, why in skipped))
  if not (pathlib.Path(workdir) / report.CONFIG_FILE).is_file():
    raise PredictError(f"--workdir={workdir}: no {report.CONFIG_FILE}, so not a training run's "
                       "workdir (train one with python -m rpsflax.main)")
  predictor = Predictor(workdir, which, batch_size)
  logging.info("predicting %d file(s) with %s of %s", len(files),
               run_meta.describe_checkpoint(predictor.checkpoint), workdir)
  pos = positive_class(predictor.class_names, positive) if submission else None
  rows, bad = predict_files(predictor, files)
  skipped += bad
  if not quiet:
    for r in rows:
      print(f"{r['file']}\t{r['label']}\t{r['probability']:.4f}", file=out)
  if skipped:  # (load_images logged each one too)
    print(f"skipped {len(skipped)} unreadable file(s):" + "".join(
        f"\n  {p}: {why}" for p, why in skipped), file=sys.stderr)
  if not rows:
    raise PredictError(f"none of the {len(files)} file(s) could be read")
  written = {}
  if output:
    written["predictions"] = write_predictions(output, rows, predictor.class_names,
                                               predictor.checkpoint, workdir)
  if grid:
    written["grid"] = write_grid(grid, rows, predictor.class_names, grid_max)
  if submission:
    write_submission(submission, [file_id(r["file"]) for r in rows],
                     [r["probabilities"][pos] for r in rows])
    missing = [p for p, _ in skipped if pathlib.Path(p).stem.isdigit()]
    if missing:
      logging.warning("%s lacks %d unreadable file(s) (Kaggle expects every id): %s", submission,
                      len(missing), ", ".join(missing[:10]))
    logging.info("%s: %d rows, label = P(%s)", submission, len(rows), pos)
    written["submission"] = submission
  logging.info("%s", report.run_summary("predict", time.time() - start, {
      **accuracy_from_names(rows, predictor.class_names), "checkpoint": predictor.checkpoint,
      "outputs": {k: str(v) for k, v in written.items()}}))
  return rows


def write_grid(path, rows: Sequence[dict], class_names: Sequence[str], grid_max: int):
  """The first `grid_max` predictions drawn over their files (red where the name disagrees)."""
  shown = [(r, display_image(r["file"])) for r in rows[:max(1, grid_max)]]
  truths = [guess_true_label(r["file"], class_names) for r, _ in shown]
  report.plot_prediction_grid([im for _, im in shown], [r["label"] for r, _ in shown],
                              [r["probability"] for r, _ in shown], path,
                              true_labels=truths if any(truths) else None,
                              titles=[pathlib.Path(r["file"]).name for r, _ in shown],
                              max_images=len(shown), total=len(rows))
  if len(shown) < len(rows):
    logging.info("--grid %s: %s (--grid_max=%d)", path, report.grid_caption(len(shown), len(rows)),
                 grid_max)
  return path


def accuracy_from_names(rows: Sequence[dict], class_names: Sequence[str]) -> dict:
  """Accuracy over the files whose folder or name gives their class ({} when none does)."""
  truths = [(guess_true_label(r["file"], class_names), r["label"]) for r in rows]
  known = [(t, p) for t, p in truths if t is not None]
  if not known:
    return {}
  return {"accuracy": sum(t == p for t, p in known) / len(known), "num_examples": len(known),
          "split": "the files whose folder or name gives their class"}
