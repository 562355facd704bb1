"""What a run leaves for people to read: history.json, curves, confusion matrix, eval.json, grids.

NumPy and matplotlib only (no TensorFlow, no JAX), so a workdir's pictures can be redrawn anywhere.
Figures are drawn on the Agg canvas directly (no pyplot), which leaves the process' matplotlib
backend and global state alone.
"""

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from rpsflax import atomic, run_meta

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
EVAL_KEYS = ("split", "accuracy", "loss", "num_examples", "per_class_accuracy")
WRONG_COLOR = "tab:red"
RIGHT_COLOR = "black"


# ---------------------------------------------------------------------------------------------
# Files

def _plain(value: Any) -> Any:
  """NumPy / JAX scalars and arrays -> plain Python, so json can write them."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "tolist"):  # np.ndarray, np.generic, jax.Array
    return _plain(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN/inf; null says "not measured"
  return value


def write_json(path, obj) -> pathlib.Path:
  """Write atomically (temp file + rename): a crash never leaves half a file behind."""
  return atomic.write_text(path, json.dumps(_plain(obj), indent=2) + "\n")


def print_json(obj, out=None) -> None:
  """Print `obj` as indented JSON (the scripts' one output) and, given a path `out`, write it there
  too (atomically)."""
  text = json.dumps(obj, indent=1)
  if out:
    atomic.write_text(out, text + "\n")
  print(text)


def config_to_dict(config) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def write_config(workdir, config) -> pathlib.Path:
  """config.json: the resolved config of the run (recipe + command-line overrides). Over a
  workdir's config.json from another config, the log says what changed."""
  path, new = pathlib.Path(workdir) / CONFIG_FILE, config_to_dict(config)
  changes = config_changes(read_json(path), new) if path.exists() else []
  if changes:
    logging.warning("The config differs from the one %s was started with:\n  %s", workdir,
                    "\n  ".join(changes))
  return write_json(path, new)


def read_config(workdir):
  """The ConfigDict a workdir was trained with, laid over today's base config (rpsflax/
  config_base.py): a key the run did not save (an older release) reads its default, so code reads
  `config.x` and never restates a default. JSON lists come back as the tuples configs use."""
  import ml_collections  # noqa: PLC0415 (only callers that read a run need it)

  from rpsflax import config_base  # noqa: PLC0415

  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  return ml_collections.ConfigDict(
      over(config_base.get_config().to_dict(), tuples(json.loads(path.read_text()))))


def over(base: dict, saved: dict) -> dict:
  """`saved` laid over `base`, key by key (nested dicts merged, everything else replaced)."""
  out = dict(base)
  for key, value in saved.items():
    both = isinstance(value, dict) and isinstance(out.get(key), dict)
    out[key] = over(out[key], value) if both else value
  return out


def config_changes(old: Mapping, new: Mapping, prefix: str = "config") -> list[str]:
  """'key: old -> new' for every leaf that differs between two config dicts."""
  changes = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      changes += config_changes(a, b, f"{prefix}.{key}")
    elif _plain(a) != _plain(b):
      changes.append(f"{prefix}.{key}: {a!r} -> {b!r}")
  return changes


def write_history(workdir, history: Sequence[Mapping[str, Any]]) -> pathlib.Path:
  """history.json: one {epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds} per epoch."""
  return write_json(pathlib.Path(workdir) / HISTORY_FILE, [dict(h) for h in history])


def read_json(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def read_history(workdir) -> list[dict]:
  """The epochs a run has finished so far ([] when it has not finished one)."""
  path = pathlib.Path(workdir) / HISTORY_FILE
  if not path.exists():
    return []
  return json.loads(path.read_text())


def metrics_from_confusion(confusion, class_names: Sequence[str]) -> dict:
  """Accuracy, example count and per-class accuracy (recall) from a [true, predicted] count matrix."""
  cm = np.asarray(confusion, dtype=np.int64)
  if cm.shape != (len(class_names), len(class_names)):
    raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {len(class_names)} classes")
  total = int(cm.sum())
  rows = cm.sum(axis=1)
  per_class = {name: (float(cm[i, i] / rows[i]) if rows[i] else None)
               for i, name in enumerate(class_names)}
  return {"accuracy": float(np.trace(cm) / total) if total else None,
          "num_examples": total,
          "per_class_accuracy": per_class}


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One evaluation: what eval.json holds, what training and --mode=evaluate return and the
  summary line reads. Built in one place (`from_evaluation`) and written in one (`to_json`).

  accuracy, loss and num_examples are the evaluation's own sums; per-class accuracy comes from
  the confusion matrix, which counts every evaluated example once. `extra` (checkpoint,
  epochs_trained, timing, folders, ...) is recorded as given.
  """
  split: str
  accuracy: Optional[float]
  loss: Optional[float]
  num_examples: int
  confusion: np.ndarray
  class_names: tuple
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_evaluation(cls, evaluation: Mapping[str, Any], class_names: Sequence[str], split: str,
                      **extra) -> "EvalRecord":
    """From an evaluation's summary (accuracy, loss, num_examples, confusion)."""
    cm = np.asarray(evaluation["confusion"], np.int64)
    derived = metrics_from_confusion(cm, class_names)
    pick = lambda k: derived[k] if evaluation.get(k) is None else evaluation[k]
    return cls(split=split, accuracy=pick("accuracy"), loss=evaluation.get("loss"),
               num_examples=int(pick("num_examples")), confusion=cm,
               class_names=tuple(class_names), extra=dict(extra))

  def to_json(self) -> dict:
    return {"split": self.split,
            "accuracy": None if self.accuracy is None else float(self.accuracy),
            "loss": None if self.loss is None else float(self.loss),
            "num_examples": self.num_examples,
            "per_class_accuracy": metrics_from_confusion(self.confusion,
                                                         self.class_names)["per_class_accuracy"],
            "class_names": list(self.class_names),
            "confusion_matrix": self.confusion.astype(int).tolist(), **self.extra}


# ---------------------------------------------------------------------------------------------
# Figures

def _new_figure(width: float, height: float, layout: str | None = None):
  # matplotlib is imported here, when a figure is drawn: a second of every start otherwise,
  # which a command that stops at a mistake, or does not plot, need not pay
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415

  fig = Figure(figsize=(width, height), dpi=100, layout=layout)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path) -> pathlib.Path:
  """Write the figure atomically (see rpsflax.atomic): a kill leaves the old picture or the new."""
  path = pathlib.Path(path)
  with atomic.replacing(path) as tmp:
    fig.savefig(tmp, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
  return path


def _series(history, key) -> np.ndarray:
  return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history], np.float64)


def plot_curves(history: Sequence[Mapping[str, Any]], path) -> pathlib.Path:
  """Loss and accuracy per epoch, training vs validation: the tutorial's two plots side by side."""
  if not history:
    raise ValueError("plot_curves: the history is empty (no finished epoch)")
  epochs = _series(history, "epoch")
  fig = _new_figure(11, 4.2)
  for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
    for split, style, label in (("train", "o-", "Training"), ("val", "s--", "Validation")):
      values = _series(history, f"{split}_{metric}")
      if np.isfinite(values).any():
        ax.plot(epochs, values, style, markersize=4, label=f"{label} {metric}")
    ax.set_title(f"Training and validation {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if metric == "accuracy":
      ax.set_ylim(-0.02, 1.02)
    if len(epochs) <= 20:
      ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  return _save(fig, path)


def plot_confusion_matrix(confusion, class_names: Sequence[str], path,
                          title: str | None = None) -> pathlib.Path:
  """Counts written in each cell; colour is the row-normalised share, so rare classes read too."""
  cm = np.asarray(confusion, dtype=np.int64)
  n = len(class_names)
  if cm.shape != (n, n):
    raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {n} classes")
  rows = cm.sum(axis=1, keepdims=True)
  share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
  size = max(4.0, 1.1 * n + 2.0)
  fig = _new_figure(size + 1.0, size)
  ax = fig.subplots()
  image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  ax.set_xticks(range(n), labels=class_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
  ax.set_yticks(range(n), labels=class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  total = int(cm.sum())
  acc = np.trace(cm) / total if total else float("nan")
  ax.set_title(title or f"Confusion matrix ({total} examples, accuracy {acc:.1%})")
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=10,
              color="white" if share[i, j] > 0.5 else "black")
  fig.tight_layout()
  return _save(fig, path)


def plot_prediction_grid(images, labels: Sequence[str], probs: Sequence[float], path,
                         true_labels: Sequence[str | None] | None = None,
                         titles: Sequence[str] | None = None, ncols: int | None = None,
                         max_images: int = 64, total: int | None = None) -> pathlib.Path:
  """Images titled with the predicted label and its probability; red where a known truth differs.

  images: RGB arrays [H, W, 3], uint8 (or float in [0, 255]), each of its own size (the files as
  they are, not the model's input); labels/probs: the predicted class name and its probability;
  true_labels: the truth per image (None where unknown); titles: e.g. file names, shown under the
  prediction. The figure's title says how many images it shows of `total` (default: all given).
  """
  images = [np.asarray(im) for im in images]
  n = min(len(images), max_images)
  if n == 0:
    raise ValueError("plot_prediction_grid: no images")
  if not (len(labels) >= n and len(probs) >= n):
    raise ValueError("plot_prediction_grid: need one label and one probability per image")
  ncols = ncols or min(n, max(4, math.ceil(math.sqrt(n))), 8)
  nrows = math.ceil(n / ncols)
  title_lines = 1 + (true_labels is not None) + (titles is not None)
  fig = _new_figure(2.3 * ncols, (2.2 + 0.2 * title_lines) * nrows + 0.4, layout="constrained")
  fig.suptitle(grid_caption(n, len(images) if total is None else total))
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  for i, ax in enumerate(axes):
    ax.axis("off")
    if i >= n:
      continue
    img = images[i]
    ax.imshow(img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8))
    text = f"{labels[i]} {float(probs[i]):.1%}"
    truth = true_labels[i] if true_labels is not None else None
    wrong = truth is not None and truth != labels[i]
    if wrong:
      text += f"\n(true: {truth})"
    if titles is not None:
      text += f"\n{_shorten(titles[i])}"
    ax.set_title(text, fontsize=9, color=WRONG_COLOR if wrong else RIGHT_COLOR)
  return _save(fig, path)


def grid_caption(shown: int, total: int) -> str:
  return f"showing {shown} of {total} image{'s' if total != 1 else ''}"


def _shorten(text: str, width: int = 22) -> str:
  text = str(text)
  return text if len(text) <= width else "…" + text[-(width - 1):]


# ---------------------------------------------------------------------------------------------
# The end-of-training report

def training_outputs(workdir) -> dict[str, str]:
  """The files of a finished training run a user looks at first (those that exist)."""
  workdir = pathlib.Path(workdir)
  names = {"eval": "eval.json", "curves": "curves.png", "confusion_matrix": "confusion_matrix.png"}
  return {k: str(workdir / v) for k, v in names.items() if (workdir / v).exists()}


def write_training_report(workdir, history: Sequence[Mapping[str, Any]],
                          record: EvalRecord) -> dict[str, pathlib.Path]:
  """history.json, curves.png, and `record`'s eval.json and confusion_matrix.png for a finished
  run."""
  workdir = pathlib.Path(workdir)
  paths = {"history": write_history(workdir, history)}
  if history:
    paths["curves"] = plot_curves(history, workdir / "curves.png")
  paths.update(write_eval_report(workdir, record))
  return paths


def write_eval_report(directory, record: EvalRecord) -> dict[str, pathlib.Path]:
  """eval.json and confusion_matrix.png for one evaluation, in `directory` (made if missing)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  title = (f"{record.split}: {record.num_examples} examples, accuracy {record.accuracy:.1%}"
           if record.accuracy is not None else None)
  return {
      "eval": write_json(directory / "eval.json", record.to_json()),
      "confusion_matrix": plot_confusion_matrix(record.confusion, record.class_names,
                                                directory / "confusion_matrix.png", title=title),
  }


# ---------------------------------------------------------------------------------------------
# The end-of-run summary (the commands' last log line)

# What a summary names, in this order: the keys of `write_training_report`'s paths and prediction's.
OUTPUT_LABELS = {"eval": "eval.json", "curves": "curves", "confusion_matrix": "confusion matrix",
                 "predictions": "predictions", "grid": "grid", "submission": "submission"}


def run_summary(what: str, seconds: float, result: Mapping[str, Any]) -> str:
  """'train done in 76s: accuracy 0.3333 on validation (33 examples, loss 1.2283) with the best
  checkpoint (epoch 1, step 23)' and one indented line per output file (result['outputs'])."""
  head = f"{what} done in {seconds:.0f}s"
  if result.get("accuracy") is not None:
    head += f": accuracy {float(result['accuracy']):.4f} on {result.get('split', '?')}"
    details = [f"{result['num_examples']} examples"] if result.get("num_examples") is not None else []
    if result.get("loss") is not None:
      details.append(f"loss {float(result['loss']):.4f}")
    head += f" ({', '.join(details)})" if details else ""
  if isinstance(result.get("checkpoint"), Mapping):
    head += f"{',' if result.get('accuracy') is None else ''} with " + \
        run_meta.describe_checkpoint(result["checkpoint"])
  outputs = {k: v for k, v in (result.get("outputs") or {}).items() if v}
  width = max((len(OUTPUT_LABELS.get(k, k)) for k in outputs), default=0) + 1
  lines = [f"  {(OUTPUT_LABELS.get(k, k) + ':').ljust(width)} {v}"
           for k, v in sorted(outputs.items(), key=lambda kv: _order(kv[0]))]
  return "\n".join([head] + lines)


def _order(key: str) -> int:
  keys = list(OUTPUT_LABELS)
  return keys.index(key) if key in keys else len(keys)
