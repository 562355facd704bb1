"""report.py: history round trip, eval.json contents, and that every figure is a real, readable PNG."""

import json

import numpy as np
import pytest
from PIL import Image

from rpsflax import report

CLASSES = ["paper", "rock", "scissors"]


def _history(n=3):
  return [dict(epoch=e, train_loss=1.0 / e, train_accuracy=1 - 0.5 / e, val_loss=1.2 / e,
               val_accuracy=1 - 0.6 / e, seconds=2.5) for e in range(1, n + 1)]


def _png_size(path):
  with Image.open(path) as im:
    assert im.format == "PNG"
    return im.size


def test_history_round_trip_converts_numpy_and_nan(tmp_path):
  hist = _history(2)
  hist[0]["train_loss"] = np.float32(0.25)
  hist[1]["val_loss"] = float("nan")  # not measured -> null, still valid JSON
  report.write_history(tmp_path, hist)
  back = report.read_history(tmp_path)
  assert [h["epoch"] for h in back] == [1, 2]
  assert back[0]["train_loss"] == pytest.approx(0.25)
  assert back[1]["val_loss"] is None
  assert report.read_history(tmp_path / "nothing") == []
  assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_metrics_from_confusion():
  cm = np.array([[5, 1, 0], [0, 4, 0], [2, 0, 0]])
  m = report.metrics_from_confusion(cm, CLASSES)
  assert m["num_examples"] == 12
  assert m["accuracy"] == pytest.approx(9 / 12)
  assert m["per_class_accuracy"] == {"paper": pytest.approx(5 / 6), "rock": 1.0, "scissors": 0.0}
  assert report.metrics_from_confusion(np.zeros((3, 3)), CLASSES)["per_class_accuracy"]["rock"] is None
  with pytest.raises(ValueError, match="does not fit"):
    report.metrics_from_confusion(np.zeros((2, 2)), CLASSES)


def test_eval_record_to_json(tmp_path):
  """eval.json's fields, from an evaluation's sums: NumPy scalars become plain JSON, per-class
  accuracy comes from the confusion matrix, extra keys (the checkpoint, ...) are kept."""
  cm = np.array([[3, 1, 0], [0, 4, 0], [0, 1, 2]])
  record = report.EvalRecord.from_evaluation(
      {"accuracy": np.float32(9 / 11), "loss": np.float32(1.25), "num_examples": np.int64(11),
       "confusion": cm}, CLASSES, "holdout", step=7)
  data = json.loads(report.write_json(tmp_path / "eval.json", record.to_json()).read_text())
  assert set(report.EVAL_KEYS) <= set(data)
  assert data["split"] == "holdout" and data["num_examples"] == 11 and data["step"] == 7
  assert data["accuracy"] == pytest.approx(9 / 11) and data["loss"] == 1.25
  assert data["per_class_accuracy"]["scissors"] == pytest.approx(2 / 3)
  assert data["confusion_matrix"] == cm.tolist() and data["class_names"] == CLASSES
  # What the sums leave out is counted from the confusion matrix.
  assert report.EvalRecord.from_evaluation({"loss": 0.5, "confusion": cm}, CLASSES,
                                           "validation").num_examples == 11


def test_plot_curves(tmp_path):
  w, h = _png_size(report.plot_curves(_history(5), tmp_path / "curves.png"))
  assert 600 < w < 2000 and 250 < h < 1000
  # Training-only history (no validation numbers) still draws.
  hist = [{k: v for k, v in h.items() if not k.startswith("val_")} for h in _history(2)]
  assert report.plot_curves(hist, tmp_path / "train_only.png").stat().st_size > 5000
  with pytest.raises(ValueError, match="empty"):
    report.plot_curves([], tmp_path / "empty.png")


@pytest.mark.parametrize("names", [CLASSES, ["cat", "dog"]])
def test_plot_confusion_matrix(tmp_path, names):
  n = len(names)
  cm = np.eye(n, dtype=int) * 7 + 1
  cm[-1] = 0  # a class with no examples must not divide by zero
  w, h = _png_size(report.plot_confusion_matrix(cm, names, tmp_path / "cm.png"))
  assert 300 < w < 1500 and 300 < h < 1500
  with pytest.raises(ValueError):
    report.plot_confusion_matrix(np.ones((n + 1, n + 1)), names, tmp_path / "bad.png")


def test_prediction_grid(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
  labels = ["rock"] * 10
  truth = ["rock"] * 5 + ["paper"] * 4 + [None]
  path = report.plot_prediction_grid(images, labels, rng.random(10), tmp_path / "grid.png",
                                     true_labels=truth, titles=[f"{i}.png" for i in range(10)])
  w, h = _png_size(path)
  assert w > 400 and h > 300  # 4 columns x 3 rows of ~2 inch cells at 100 dpi
  # Float images in [0, 255] and a single image work too.
  report.plot_prediction_grid(images[:1].astype(np.float32), ["cat"], [0.9], tmp_path / "one.png")
  assert (tmp_path / "one.png").stat().st_size > 1000
  with pytest.raises(ValueError):
    report.plot_prediction_grid(images[:0], [], [], tmp_path / "none.png")


def test_prediction_grid_marks_wrong_in_red(tmp_path, monkeypatch):
  colors = []
  from matplotlib.figure import Figure  # what report draws on (imported when it draws)

  orig = Figure.subplots

  def spy(self, *a, **k):
    axes = orig(self, *a, **k)
    for ax in np.ravel(axes):
      orig_title = ax.set_title
      ax.set_title = lambda text, *aa, _o=orig_title, **kk: (colors.append(kk.get("color")),
                                                             _o(text, *aa, **kk))[1]
    return axes

  monkeypatch.setattr(Figure, "subplots", spy)
  images = np.zeros((3, 8, 8, 3), np.uint8)
  report.plot_prediction_grid(images, ["cat", "dog", "dog"], [0.9, 0.8, 0.7], tmp_path / "g.png",
                              true_labels=["cat", "cat", None])
  assert colors == [report.RIGHT_COLOR, report.WRONG_COLOR, report.RIGHT_COLOR]


def test_write_training_report(tmp_path):
  cm = np.array([[3, 1, 0], [0, 4, 0], [0, 1, 2]])
  record = report.EvalRecord.from_evaluation({"loss": 0.7, "confusion": cm}, CLASSES,
                                             "validation", step=30)
  paths = report.write_training_report(tmp_path, _history(3), record)
  for name in ("history.json", "curves.png", "confusion_matrix.png", "eval.json"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert set(paths) == {"history", "curves", "eval", "confusion_matrix"}
  data = json.loads((tmp_path / "eval.json").read_text())
  assert data["split"] == "validation"
  assert data["accuracy"] == pytest.approx(9 / 11)
  assert data["num_examples"] == 11
  assert data["per_class_accuracy"]["scissors"] == pytest.approx(2 / 3)
  assert data["loss"] == pytest.approx(0.7) and data["step"] == 30
  assert data["confusion_matrix"] == cm.tolist() and data["class_names"] == CLASSES
  # An evaluation-only report goes beside it under its own name, leaving eval.json alone.
  report.write_eval_report(tmp_path / "eval" / "holdout", report.EvalRecord.from_evaluation(
      {"loss": 0.1, "confusion": np.eye(3, dtype=int)}, CLASSES, "holdout"))
  assert json.loads((tmp_path / "eval" / "holdout" / "eval.json").read_text())["accuracy"] == 1.0
  assert json.loads((tmp_path / "eval.json").read_text())["split"] == "validation"


def test_a_saved_config_is_read_over_the_base(tmp_path):
  """Keys a run saved win (nested ones too); keys it did not save (an older release) read the
  base default; lists come back as tuples."""
  from rpsflax import config_base

  saved = {"seed": 7, "trainable": ["head/.*", "backbone/block5.*"],
           "model": {"name": "cnn"}, "data": {"image_size": 48}, "only_then": 1}
  (tmp_path / report.CONFIG_FILE).write_text(json.dumps(saved))
  c = report.read_config(tmp_path)
  base = config_base.get_config()
  assert (c.seed, c.model.name, c.data.image_size, c.only_then) == (7, "cnn", 48, 1)
  assert c.trainable == ("head/.*", "backbone/block5.*")
  assert c.model.alpha == base.model.alpha and c.data.max_image_pixels == base.data.max_image_pixels
  assert c.cached_features.enabled is False and c.lr_groups == ()


def test_config_json_written_over_another_config_says_what_changed(tmp_path, caplog):
  """A workdir started with one config and run with another: config.json names the new one and
  the log names each key that changed, old -> new; the same config again says nothing."""
  import logging

  from rpsflax import config_base

  config = config_base.get_config()
  report.write_config(tmp_path, config)
  config.seed, config.data.image_size = 7, 48
  with caplog.at_level(logging.WARNING):
    report.write_config(tmp_path, config)
    report.write_config(tmp_path, config)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "config.data.image_size: 224 -> 48" in warnings[0] and "config.seed: 0 -> 7" in warnings[0]
  assert report.read_config(tmp_path).seed == 7


def test_run_summary_names_accuracy_checkpoint_and_files():
  """The commands' last log line (issue 24): accuracy, the checkpoint used, one line per file."""
  text = report.run_summary("evaluate", 12.4, {
      "split": "holdout", "accuracy": 0.75, "loss": 0.5, "num_examples": 20,
      "checkpoint": {"which": "best", "epoch": 3, "step": 30, "path": "/w/checkpoints/best/30"},
      "outputs": {"confusion_matrix": "/w/eval/holdout/confusion_matrix.png",
                  "eval": "/w/eval/holdout/eval.json"}})
  assert text.splitlines() == [
      "evaluate done in 12s: accuracy 0.7500 on holdout (20 examples, loss 0.5000) with the best "
      "checkpoint (epoch 3, step 30)",
      "  eval.json:        /w/eval/holdout/eval.json",
      "  confusion matrix: /w/eval/holdout/confusion_matrix.png"]
