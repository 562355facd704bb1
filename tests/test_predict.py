"""predict.py: Kaggle ids and submission CSV, output files, labels from names, and the model path.

The model tests build a small trained-looking workdir (config.json + a 'best' checkpoint of the
cats-vs-dogs CNN at its smallest input size) without training, then check what predict writes
against the model applied directly.
"""

import csv
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_reference import SHARED_DATA  # the location every test reads (conftest.py)

from rpsflax import report
from rpsflax import errors, prediction

CATSDOGS = ["cat", "dog"]


# ---------------------------------------------------------------------------------------------
# Pure helpers

def test_file_id():
  assert prediction.file_id("test1/1234.jpg") == 1234
  assert prediction.file_id(pathlib.Path("7.png")) == 7
  for bad in ("cat.1.jpg", "a12.jpg", "12a.jpg"):
    with pytest.raises(errors.PredictError, match="numerically named"):
      prediction.file_id(bad)


def test_positive_class():
  assert prediction.positive_class(CATSDOGS) == "dog"
  assert prediction.positive_class(["dog", "zebra"]) == "dog"  # 'dog' wins wherever it is
  assert prediction.positive_class(["neg", "pos"]) == "pos"
  assert prediction.positive_class(["paper", "rock", "scissors"], "rock") == "rock"
  with pytest.raises(errors.PredictError, match="--positive_class"):
    prediction.positive_class(["paper", "rock", "scissors"])
  with pytest.raises(errors.PredictError, match="model's classes"):
    prediction.positive_class(CATSDOGS, "horse")


@pytest.mark.parametrize("path,expected", [
    ("data/rock/img1.png", "rock"),
    ("validation/dogs/dog.2001.jpg", "dog"),     # plural folder (cats_and_dogs_filtered)
    ("train/cat.12.jpg", "cat"),                 # Kaggle prefix
    ("rps/validation/paper3.png", "paper"),      # RPS validation prefix
    ("rps/validation/rock-hires1.png", "rock"),
    ("x/scissors/s.png", "scissors"),
    ("test1/12.jpg", None),
    ("photos/catalog.jpg", None),                # 'catalog' is not 'cat'
])
def test_guess_true_label(path, expected):
  names = ["cat", "dog", "paper", "rock", "scissors"]
  assert prediction.guess_true_label(path, names) == expected


def test_write_submission_sorted_numeric(tmp_path):
  path = prediction.write_submission(tmp_path / "sub.csv", [10, 2, 9, 1], [0.9, 0.2, 1.0, 0.0])
  lines = path.read_text().splitlines()
  assert lines[0] == "id,label"
  rows = [line.split(",") for line in lines[1:]]
  assert [int(r[0]) for r in rows] == [1, 2, 9, 10]  # numeric order, not '1, 10, 2, 9'
  assert [float(r[1]) for r in rows] == [0.0, 0.2, 1.0, 0.9]
  with pytest.raises(errors.PredictError, match="twice"):
    prediction.write_submission(tmp_path / "dup.csv", [3, 3], [0.1, 0.2])


def test_write_predictions_csv_json(tmp_path):
  rows = [{"file": "a/1.png", "label": "dog", "probability": 0.75,
           "probabilities": {"cat": 0.25, "dog": 0.75}}]
  with open(prediction.write_predictions(tmp_path / "p.csv", rows, CATSDOGS), newline="") as f:
    got = list(csv.reader(f))
  assert got == [["file", "label", "probability", "p_cat", "p_dog"],
                 ["a/1.png", "dog", "0.750000", "0.250000", "0.750000"]]
  data = json.loads(prediction.write_predictions(tmp_path / "p.json", rows, CATSDOGS).read_text())
  assert data == {"class_names": CATSDOGS, "predictions": rows}
  with pytest.raises(errors.PredictError, match=".csv or a .json"):
    prediction.write_predictions(tmp_path / "p.txt", rows, CATSDOGS)


def test_run_refuses_bad_arguments_before_loading_a_model(tmp_path):
  (tmp_path / "test").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "test" / "cat.1.jpg")
  with pytest.raises(errors.PredictError, match="numerically named"):
    prediction.run(tmp_path / "no-run", [tmp_path / "test"], submission=str(tmp_path / "s.csv"))
  with pytest.raises(errors.PredictError, match=".csv or a .json"):
    prediction.run(tmp_path / "no-run", [tmp_path / "test"], output=str(tmp_path / "p.xlsx"))
  with pytest.raises(errors.PredictError, match="no config.json"):
    prediction.run(tmp_path / "no-run", [tmp_path / "test"])


# ---------------------------------------------------------------------------------------------
# With a model

@pytest.fixture(scope="module")
def catsdogs_workdir(tmp_path_factory):
  """A workdir holding config.json and a 'best' checkpoint of a randomly initialised small CNN."""
  import jax

  from rpsflax import checkpoint, config_base, config_check, models, steps

  workdir = tmp_path_factory.mktemp("catsdogs_run")
  config = config_base.load_sibling(str(pathlib.Path(__file__).parents[1] / "configs" / "x.py"),
                                    "catsdogs").get_config()
  config.data.image_size = config_check.min_image_size("cnn")
  config.head.hidden = (16,)
  report.write_config(workdir, config)
  model = models.build_model(config)
  state = steps.create_train_state(config, model, rng=jax.random.PRNGKey(3))
  # Spread the outputs (a random head gives ~0.5 everywhere), so a mix-up of images shows.
  params = jax.tree.map(lambda p: p, state.params)
  params["head"]["predictions"]["kernel"] = params["head"]["predictions"]["kernel"] * 30.0
  state = state.replace(params=params)
  with checkpoint.Checkpoints(workdir, async_save=False) as ckpts:
    ckpts.save(state, {"step": 1, "epoch": 1, "class_names": CATSDOGS}, which=checkpoint.BEST)
  return workdir, config, model, state.params


@pytest.fixture(scope="module")
def kaggle_test_folder(tmp_path_factory):
  """Kaggle's unlabelled test layout: N.jpg, plus one corrupt file that must be skipped."""
  folder = tmp_path_factory.mktemp("test1")
  rng = np.random.default_rng(0)
  for i in (1, 2, 3, 10, 11):
    size = (40 + 7 * i, 50 + 3 * i)  # sizes differ and differ from the model's input
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"{i}.jpg")
  Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(folder / "4.jpg")  # gray
  (folder / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  return folder


def _expected_dog_probability(predictor, files, model, params):
  """Independent reference: load, rescale by 1/255 and apply the model, one image at a time."""
  images, ok, _ = predictor.load(files)
  x = images.astype(np.float32) * np.float32(1 / 255)
  logits = np.concatenate([np.asarray(model.apply({"params": params}, x[i:i + 1]))
                           for i in range(len(x))])
  return {str(p): float(1 / (1 + np.exp(-z))) for p, z in zip(ok, logits[:, 0])}


def test_submission_end_to_end(tmp_path, catsdogs_workdir, kaggle_test_folder, capsys):
  workdir, _, model, params = catsdogs_workdir
  sub, out_csv, grid = tmp_path / "submission.csv", tmp_path / "preds.csv", tmp_path / "grid.png"
  rows = prediction.run(workdir, [kaggle_test_folder], batch_size=4, submission=str(sub),
                     output=str(out_csv), grid=str(grid))
  printed = capsys.readouterr()
  assert "5.jpg" in printed.err  # the corrupt file is reported ...
  assert len(rows) == 6 and all(not r["file"].endswith("5.jpg") for r in rows)  # ... and skipped

  lines = sub.read_text().splitlines()
  assert lines[0] == "id,label"
  ids = [int(line.split(",")[0]) for line in lines[1:]]
  probs = [float(line.split(",")[1]) for line in lines[1:]]
  assert ids == [1, 2, 3, 4, 10, 11]
  assert all(0.0 <= p <= 1.0 for p in probs)

  predictor = prediction.Predictor(workdir, batch_size=4)
  files = sorted(kaggle_test_folder.iterdir())
  expected = _expected_dog_probability(predictor, files, model, params)
  by_id = {int(pathlib.Path(f).stem): p for f, p in expected.items()}
  np.testing.assert_allclose(probs, [by_id[i] for i in ids], atol=2e-6)
  assert np.ptp(probs) > 0.05 and 0.0 < min(probs) and max(probs) < 1.0  # informative answers

  with open(out_csv, newline="") as f:
    table = list(csv.DictReader(f))
  for r in table:
    p_dog = float(r["p_dog"])
    assert float(r["p_cat"]) == pytest.approx(1 - p_dog, abs=2e-6)
    assert r["label"] == ("dog" if p_dog > 0.5 else "cat")
  assert grid.stat().st_size > 5000


def test_batch_size_does_not_change_predictions(catsdogs_workdir, kaggle_test_folder):
  workdir = catsdogs_workdir[0]
  files = sorted(kaggle_test_folder.glob("*.jpg"))
  a = prediction.predict_files(prediction.Predictor(workdir, batch_size=1), files)[0]
  b = prediction.predict_files(prediction.Predictor(workdir, batch_size=64), files, chunk=2)[0]
  assert [r["file"] for r in a] == [r["file"] for r in b]
  np.testing.assert_allclose([r["probabilities"]["dog"] for r in a],
                             [r["probabilities"]["dog"] for r in b], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Cats vs dogs, Kaggle style: train, final evaluation on the holdout (one command), submission

SHARED_CATSDOGS = SHARED_DATA / "catsdogs" / "train"  # RPSFLAX_SHARED_DATA, else ../shared/data


def _kaggle_folders(root: pathlib.Path, per_class: int = 10, n_test: int = 6):
  """root/train/{cat,dog}.N.jpg (real samples when present, else drawn) and root/test1/N.jpg."""
  train, test = root / "train", root / "test1"
  train.mkdir(parents=True)
  test.mkdir()
  rng = np.random.default_rng(1)
  for cls, shade in (("cat", 60), ("dog", 190)):
    for i in range(per_class):
      src = SHARED_CATSDOGS / f"{cls}.{i}.jpg"
      if src.is_file():
        (train / src.name).write_bytes(src.read_bytes())
      else:
        arr = np.clip(rng.normal(shade, 30, (60, 50, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(train / f"{cls}.{i}.jpg")
  for k, src in enumerate(sorted(train.iterdir())[::3][:n_test], start=1):
    (test / f"{k}.jpg").write_bytes(src.read_bytes())
  return train.parent, test


def test_catsdogs_holdout_evaluation_and_submission(tmp_path):
  from rpsflax import config_base, config_check, evaluation, prediction, train

  data, test1 = _kaggle_folders(tmp_path / "dogs-vs-cats")
  config = config_base.load_sibling(str(pathlib.Path(__file__).parents[1] / "configs" / "x.py"),
                                    "catsdogs").get_config()
  config.data.dir = str(data)
  config.data.image_size = config_check.min_image_size("cnn")
  config.data.holdout = 4
  config.head.hidden = (16,)
  config.batch_size = config.eval_batch_size = 8
  config.num_epochs = 1
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir)
  holdout = (workdir / "splits" / "holdout.txt").read_text().splitlines()
  assert len(holdout) == 4

  # The final evaluation (python -m rpsflax.main --mode=evaluate --workdir=W --split=holdout;
  # the e2e test runs that command line) writes its own file and leaves eval.json alone.
  evaluation.evaluate(None, workdir, "holdout", "")
  ev = json.loads((workdir / "eval" / "holdout" / "eval.json").read_text())
  assert ev["split"] == "holdout" and ev["num_examples"] == 4
  assert set(ev["per_class_accuracy"]) == set(CATSDOGS) and 0.0 <= ev["accuracy"] <= 1.0
  assert (workdir / "eval" / "holdout" / "confusion_matrix.png").is_file()
  assert json.loads((workdir / "eval.json").read_text())["split"] == "holdout"  # training's final

  # Kaggle submission and a grid labelled cat/dog.
  sub, grid = tmp_path / "submission.csv", tmp_path / "grid.png"
  rows = prediction.run(workdir, [test1], submission=str(sub), grid=str(grid), quiet=True)
  lines = sub.read_text().splitlines()
  assert lines[0] == "id,label" and [int(x.split(",")[0]) for x in lines[1:]] == [1, 2, 3, 4, 5, 6]
  assert {r["label"] for r in rows} <= set(CATSDOGS)
  for line, r in zip(lines[1:], sorted(rows, key=lambda r: int(pathlib.Path(r["file"]).stem))):
    assert float(line.split(",")[1]) == pytest.approx(r["probabilities"]["dog"], abs=1e-6)
  assert grid.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------
# One story (issue 24): the checkpoint used, a summary, a grid that says what it shows

def test_natural_order_within_a_folder(tmp_path):
  for name in ("scissors10.png", "scissors2.png", "scissors1.png", "paper-hires1.png", "paper3.png"):
    (tmp_path / name).write_bytes(b"")
  files, missing = prediction.list_inputs([str(tmp_path / "scissors10.png"), str(tmp_path)])
  assert [f.name for f in files] == ["scissors10.png", "paper3.png", "paper-hires1.png",
                                     "scissors1.png", "scissors2.png"]
  assert not missing


def test_predictions_name_their_checkpoint_and_the_grid_its_count(tmp_path, catsdogs_workdir,
                                                                   kaggle_test_folder, caplog,
                                                                   monkeypatch):
  import logging

  workdir = catsdogs_workdir[0]
  out_json, grid = tmp_path / "preds.json", tmp_path / "grid.png"
  drawn = {}
  real_plot = report.plot_prediction_grid

  def spy(images, *args, **kwargs):
    drawn["shapes"] = [np.asarray(im).shape for im in images]
    drawn["titles"] = kwargs["titles"]
    return real_plot(images, *args, **kwargs)

  monkeypatch.setattr(report, "plot_prediction_grid", spy)
  # absl's logger has a level of its own, which code run earlier in this worker may have set to
  # WARNING (absl.logging.set_verbosity): open both for the INFO line asserted below
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    rows = prediction.run(workdir, [kaggle_test_folder], output=str(out_json), grid=str(grid),
                          grid_max=4, quiet=True)
  record = json.loads(out_json.read_text())
  assert record["checkpoint"] == {"which": "best", "epoch": 1, "step": 1,
                                  "path": "checkpoints/best/1"}
  assert record["workdir"] == str(workdir)
  assert [pathlib.Path(r["file"]).name for r in rows] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg",
                                                          "10.jpg", "11.jpg"]  # natural order
  # The grid draws the files as they are (their own sizes), not the model's 30x30 input.
  assert drawn["titles"] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
  assert drawn["shapes"][0] == (47, 53, 3) and drawn["shapes"][3] == (30, 30, 3)
  log = caplog.text
  assert "showing 4 of 6 images" in log
  assert "with the best checkpoint (epoch 1, step 1)" in log
  assert f"predictions: {out_json}" in log and f"grid:        {grid}" in log
