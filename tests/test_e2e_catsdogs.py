"""Cats vs dogs end to end, through the real commands: train, final holdout evaluation, submission.

configs/catsdogs_tiny.py (the tutorial's convnet and recipe at 64x64, batch 8, 2 epochs, holdout
20) on Kaggle's flat layout: the real samples of ../shared/data/catsdogs/train (cat.0-149,
dog.0-149) plus broken files (a truncated JPEG, a zero-byte file, text named .jpg) and an
unlabelled test/ folder of N.jpg beside train/, as Kaggle ships it. A second run trains on class
subfolders (train/cats, validation/dogs, as cats_and_dogs_filtered). Without the samples, images
from tests/data_factory.py stand in, so the tests never skip. The last test holds
configs/catsdogs.py to the tutorial's recipe.
"""

import csv
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import commands
import data_factory  # tests/ is on sys.path (rootdir-less test folder), as for keras_reference

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "catsdogs_tiny.py"
SHARED_CATSDOGS = (pathlib.Path(os.environ.get("RPSFLAX_SHARED_DATA", REPO.parent / "shared" / "data"))
                   / "catsdogs" / "train")
TIMEOUT = 300
HOLDOUT = 20          # configs/catsdogs_tiny.py
FALLBACK_PER_CLASS = 40
TEST_IDS = (1, 2, 10)  # sorted by number, not as text ('10' < '2')


# ---------------------------------------------------------------------------------------------
# Data

def _real_samples() -> dict[str, list[pathlib.Path]]:
  """{'cat': [...], 'dog': [...]} of the shared Kaggle samples, or {} when they are absent."""
  if not SHARED_CATSDOGS.is_dir():
    return {}
  out = {c: sorted(SHARED_CATSDOGS.glob(f"{c}.*.jpg")) for c in ("cat", "dog")}
  return out if all(out.values()) else {}


def _truncated_jpeg(src: pathlib.Path, dest: pathlib.Path):
  data = src.read_bytes()
  dest.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def kaggle_dir(tmp_path_factory):
  """D/train/{cat,dog}.N.jpg (+ 3 broken files) and an unlabelled D/test/N.jpg (+ 1 broken).

  Returns (D, {file name: class} of the readable training images, {broken path: kind}).
  """
  root = tmp_path_factory.mktemp("dogs-vs-cats")
  train, test = root / "train", root / "test"
  train.mkdir()
  test.mkdir()
  real = _real_samples()
  if real:
    for files in real.values():
      for f in files:
        (train / f.name).symlink_to(f)
    _truncated_jpeg(real["cat"][0], train / "cat.90000.jpg")
    test_sources = [real["cat"][1], real["dog"][1], real["cat"][2]]
  else:
    data_factory.flat_folder(train, {"cat": FALLBACK_PER_CLASS, "dog": FALLBACK_PER_CLASS},
                             size=(72, 80), untidy=True)
    data_factory.write_broken(train / "cat.90000.jpg", "truncated")
    test_sources = sorted(train.glob("cat.1.*")) + sorted(train.glob("dog.1.*")) \
        + sorted(train.glob("cat.2.*"))
  broken = {train / "cat.90000.jpg": "truncated",
            data_factory.write_broken(train / "dog.90001.jpg", "zero"): "zero",
            data_factory.write_broken(train / "dog.90002.jpg", "text"): "text"}
  labelled = {f.name: f.name.split(".")[0] for f in train.iterdir() if f not in broken}
  for i, src in zip(TEST_IDS, test_sources):
    (test / f"{i}.jpg").write_bytes(pathlib.Path(src).read_bytes())
  data_factory.write_broken(test / "3.jpg", "zero")  # Kaggle wants every id: say which is missing
  return root, labelled, broken


@pytest.fixture(scope="module")
def subfolder_dir(tmp_path_factory):
  """cats_and_dogs_filtered's layout: D/{train,validation}/{cats,dogs}/cat.N.jpg."""
  root = tmp_path_factory.mktemp("cats_and_dogs_filtered")
  real = _real_samples()
  for split, part in (("train", slice(0, 24)), ("validation", slice(140, 150))):
    for cls in ("cat", "dog"):
      dest = root / split / f"{cls}s"
      dest.mkdir(parents=True)
      if real:
        for f in real[cls][part]:
          (dest / f.name).symlink_to(f)
      else:
        n = part.stop - part.start
        for i in range(n):
          data_factory.write_image(dest / f"{cls}.{part.start + i}.jpg", (56, 60),
                                   seed=part.start + i + (1000 if cls == "dog" else 0))
  return root


# ---------------------------------------------------------------------------------------------
# Commands

def run_cmd(module: str, *args, expect_rc: int = 0) -> subprocess.CompletedProcess:
  return commands.run_cmd(module, *args, expect_rc=expect_rc, timeout=TIMEOUT)


def _read(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def _splits(workdir) -> dict[str, list[tuple[str, int]]]:
  out = {}
  for p in (pathlib.Path(workdir) / "splits").glob("*.txt"):
    out[p.stem] = [(path, int(label)) for path, label in
                   (line.rsplit("\t", 1) for line in p.read_text().splitlines())]
  return out


# ---------------------------------------------------------------------------------------------
# Kaggle's flat layout: train, final evaluation, submission

def test_kaggle_layout_train_holdout_submission(tmp_path, kaggle_dir):
  data, labelled, broken = kaggle_dir
  w = tmp_path / "run"

  # 1. Train: the broken files are skipped and reported, the unlabelled test/ is left alone.
  proc = run_cmd("rpsflax.main", f"--config={TINY}", f"--workdir={w}", f"--config.data.dir={data}")
  log = proc.stderr
  assert f"skipped {len(broken)} unreadable files" in log
  for path in broken:
    assert str(path) in log
  assert f"{data / 'test'} holds no labelled images" in log

  rep = _read(w / "data_report.json")
  assert rep["class_names"] == ["cat", "dog"]
  assert rep["num_skipped"] == len(broken)
  reasons = {pathlib.Path(s["path"]).name: s["reason"] for s in rep["skipped"]}
  assert set(reasons) == {p.name for p in broken}
  assert "truncated" in reasons["cat.90000.jpg"].lower()
  assert "empty" in reasons["dog.90001.jpg"]
  assert "not an image" in reasons["dog.90002.jpg"]
  assert set(rep["folders"]) == {"train"} and rep["layouts"] == {"train": "flat"}

  # 2. Splits: seeded holdout first, then validation, disjoint, every readable image once,
  #    dog = 1, cat = 0 (the file name's prefix).
  splits = _splits(w)
  assert set(splits) == {"train", "validation", "holdout"}
  names = {k: [pathlib.Path(p).name for p, _ in v] for k, v in splits.items()}
  assert len(names["holdout"]) == HOLDOUT
  n = len(labelled)
  assert len(names["validation"]) == round(0.25 * (n - HOLDOUT))
  assert sum(map(len, names.values())) == n
  assert sorted(sum(names.values(), [])) == sorted(labelled)  # disjoint, complete, none broken
  for split, rows in splits.items():
    for path, label in rows:
      assert label == {"cat": 0, "dog": 1}[labelled[pathlib.Path(path).name]], (split, path)
  held = [label for _, label in splits["holdout"]]
  assert held.count(0) == held.count(1) == HOLDOUT // 2  # stratified
  assert rep["num_examples"] == {k: len(v) for k, v in names.items()}

  # 3. The run's outputs; training ends with an evaluation of the best checkpoint on the holdout.
  history = _read(w / "history.json")
  assert [h["epoch"] for h in history] == [1, 2]
  for h in history:
    assert np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])
    assert 0.0 <= h["train_accuracy"] <= 1.0 and 0.0 <= h["val_accuracy"] <= 1.0
  for png in ("curves.png", "confusion_matrix.png"):
    assert (w / png).stat().st_size > 10_000, png
  assert list((w / "tensorboard").glob("**/events.out.tfevents.*"))
  ev = _read(w / "eval.json")
  assert ev["split"] == "holdout" and ev["num_examples"] == HOLDOUT
  assert set(ev["per_class_accuracy"]) == {"cat", "dog"}

  # 4. The final evaluation is one command: the best checkpoint on the holdout, in files of its
  #    own (eval.json stays the training run's).
  proc = run_cmd("rpsflax.main", "--mode=evaluate", f"--workdir={w}", "--split=holdout")
  final = _read(w / "eval" / "holdout" / "eval.json")
  assert final["split"] == "holdout" and final["num_examples"] == HOLDOUT
  assert final["checkpoint"]["which"] == "best" and 0.0 <= final["accuracy"] <= 1.0
  cm = np.asarray(final["confusion_matrix"])
  assert cm.shape == (2, 2) and cm.sum() == HOLDOUT and list(cm.sum(axis=1)) == [10, 10]
  assert final["accuracy"] == pytest.approx(np.trace(cm) / HOLDOUT)
  assert (w / "eval" / "holdout" / "confusion_matrix.png").stat().st_size > 10_000
  assert _read(w / "eval.json") == ev
  assert f"on holdout ({HOLDOUT} examples" in proc.stderr

  # 5. Kaggle submission and a prediction grid for the unlabelled test folder.
  sub, grid, preds = tmp_path / "sub.csv", tmp_path / "grid.png", tmp_path / "preds.csv"
  proc = run_cmd("rpsflax.predict", f"--workdir={w}", data / "test", f"--submission={sub}",
                 f"--grid={grid}", f"--output={preds}")
  with open(sub, newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["id", "label"]
  assert [int(r[0]) for r in rows[1:]] == list(TEST_IDS)  # 3.jpg is unreadable: left out, said
  assert "3.jpg" in proc.stderr
  p_dog = {int(i): float(p) for i, p in rows[1:]}
  assert all(0.0 <= p <= 1.0 for p in p_dog.values())
  printed = {pathlib.Path(line.split("\t")[0]).stem: line.split("\t")[1:]
             for line in proc.stdout.splitlines() if "\t" in line}
  assert set(printed) == {str(i) for i in TEST_IDS}
  for i, (label, prob) in printed.items():  # the printed label is the likelier class
    p = p_dog[int(i)]
    assert label == ("dog" if p > 0.5 else "cat")
    assert float(prob) == pytest.approx(max(p, 1.0 - p), abs=1e-4)
  with open(preds, newline="") as f:
    full = {pathlib.Path(r["file"]).stem: r for r in csv.DictReader(f)}
  for i, p in p_dog.items():
    assert float(full[str(i)]["p_dog"]) == pytest.approx(p, abs=1e-6)
    assert float(full[str(i)]["p_cat"]) == pytest.approx(1.0 - p, abs=1e-5)
  assert grid.stat().st_size > 10_000

  # The CSV's label is P(dog) = sigmoid(the model's logit) of the best checkpoint, recomputed
  # here from the model itself on the images as training reads them.
  import jax

  from rpsflax import input_pipeline, preprocess, restore

  config, model, params, class_names, _, _ = restore.load_for_inference(w)
  assert class_names == ["cat", "dog"]
  images, ok, _ = input_pipeline.load_images([str(data / "test" / f"{i}.jpg") for i in TEST_IDS],
                                             config.data.image_size, config.data.resize_method)
  assert len(ok) == len(TEST_IDS)
  logits = model.apply({"params": params}, preprocess.rescale(images), train=False)
  np.testing.assert_allclose(jax.nn.sigmoid(logits[:, 0]), [p_dog[i] for i in TEST_IDS],
                             atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Class subfolders (cats_and_dogs_filtered)

def test_class_subfolders_train(tmp_path, subfolder_dir):
  w = tmp_path / "run"
  run_cmd("rpsflax.main", f"--config={TINY}", f"--workdir={w}", f"--config.data.dir={subfolder_dir}",
          "--config.num_epochs=1", "--config.data.holdout=8", "--config.data.image_size=48")
  rep = _read(w / "data_report.json")
  assert rep["class_names"] == ["cats", "dogs"]
  assert rep["layouts"] == {"train": "classes", "validation": "classes"}
  splits = _splits(w)
  # validation is the validation folder as it is; the holdout is drawn from train only.
  val = splits["validation"]
  assert sorted(p for p, _ in val) == sorted(str(p) for p in (subfolder_dir / "validation").glob("*/*"))
  assert len(splits["holdout"]) == 8 and len(splits["train"]) == 48 - 8
  for split, rows in splits.items():
    for path, label in rows:
      assert label == {"cats": 0, "dogs": 1}[pathlib.Path(path).parent.name], (split, path)
  assert not {p for p, _ in splits["holdout"]} & {p for p, _ in splits["train"]}
  assert all(f"{os.sep}train{os.sep}" in p for p, _ in splits["holdout"])
  assert [h["epoch"] for h in _read(w / "history.json")] == [1]
  ev = _read(w / "eval.json")
  assert ev["split"] == "holdout" and ev["num_examples"] == 8
  assert set(ev["per_class_accuracy"]) == {"cats", "dogs"}


# ---------------------------------------------------------------------------------------------
# The recipe is the tutorial's

def _load(path):
  from rpsflax import config_base

  return config_base.load_sibling(str(path), pathlib.Path(path).stem).get_config()


def test_recipe_matches_the_tutorial(tmp_path):
  import jax
  import jax.numpy as jnp

  from rpsflax import config_check, data_files, models, steps

  c = _load(REPO / "configs" / "catsdogs.py")
  config_check.check_config(c)
  assert (c.model.name, c.weights, c.preprocess, c.data.image_size) == ("cnn", "", "rescale", 150)
  assert (c.head.num_classes, c.head.pooling, c.head.dropout, tuple(c.head.hidden)) == \
      (1, "flatten", 0.5, (512,))
  assert (c.optim.name, c.optim.learning_rate, c.batch_size) == ("rmsprop", 1e-4, 128)
  assert tuple(c.trainable) == (".*",) and not c.lr_groups
  a = c.augment
  assert a.enabled and (a.rotation_range, a.width_shift_range, a.height_shift_range,
                        a.shear_range, a.zoom_range) == (40, 0.2, 0.2, 0.2, 0.2)
  assert a.horizontal_flip and not a.vertical_flip and a.fill_mode == "nearest"
  assert c.data.tfds_name == "cats_vs_dogs"

  # The tiny variant changes sizes only.
  t = _load(TINY)
  config_check.check_config(t)
  for key in ("model", "head", "optim", "augment", "preprocess", "weights", "trainable"):
    assert t[key] == c[key], key

  # Conv(32) Pool Conv(64) Pool Conv(128) Pool Conv(128) Pool Flatten Dropout Dense(512) Dense(1).
  model = models.build_model(c)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 150, 150, 3))))["params"]
  shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
  assert [shapes["backbone"][n]["kernel"] for n in ("conv2d", "conv2d_1", "conv2d_2", "conv2d_3")] \
      == [(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 128), (3, 3, 128, 128)]
  assert shapes["head"]["hidden_0"]["kernel"] == (7 * 7 * 128, 512)  # 150 -> 74 -> 36 -> 17 -> 7
  assert shapes["head"]["predictions"]["kernel"] == (512, 1)

  # Binary cross-entropy and accuracy at 0.5: p = sigmoid(z), loss = -log p for a dog.
  z = jnp.array([[2.0], [-0.5], [0.1]])
  loss, pred = steps.per_example_loss(z, jnp.array([1, 1, 0]), 1)
  p = 1 / (1 + np.exp(-np.array([2.0, -0.5, 0.1])))
  np.testing.assert_allclose(loss, [-np.log(p[0]), -np.log(p[1]), -np.log(1 - p[2])], rtol=1e-6)
  assert list(pred) == [1, 0, 1]

  # Training images are augmented then rescaled; evaluation images only rescaled (1/255).
  images = jnp.asarray(data_factory.image_array((16, 16), 3)[None].repeat(2, 0))
  np.testing.assert_array_equal(steps.prepare_images(c, images),  # pylint: disable=protected-access
                                np.asarray(images, np.float32) * np.float32(1 / 255))
  augmented = steps.prepare_images(c, images, jax.random.PRNGKey(1))  # pylint: disable=protected-access
  assert not np.allclose(augmented, np.asarray(images, np.float32) / 255)

  # 25,000 labelled images: 1,000 held out, the 24,000 left split 18,000 / 6,000.
  labels = np.repeat([0, 1], 12_500)
  draws = data_files.draw_splits(labels, seed=c.seed, holdout=c.data.holdout,
                                 val_fraction=c.data.val_fraction, has_validation=False)
  assert {k: len(v) for k, v in draws.items()} == {"holdout": 1000, "validation": 6000,
                                                   "train": 18000}
  assert len(np.unique(np.concatenate(list(draws.values())))) == 25_000

  # TFDS cats_vs_dogs (used when config.data.dir is empty) labels cat 0, dog 1: sorted, unchanged.
  import tensorflow_datasets as tfds

  names = tfds.builder(c.data.tfds_name, data_dir=str(tmp_path)).info.features["label"].names
  assert sorted(names) == names == ["cat", "dog"]
