"""Leave-hands-out cross-validation: hands from file names, folds over hands, a tiny CV run."""

import json

import numpy as np
import pytest
from PIL import Image

from rpsflax import config_base, crossval, cv_features, hands
from rpsflax.errors import DataError


@pytest.mark.parametrize("name, hand", [
    ("paper01-000.png", "paper01"),
    ("/data/rps/train/rock/rock05ck01-012.png", "rock05ck01"),
    ("rock07-k03-005.png", "rock07-k03"),        # a dash inside the hand's name
    ("testscissors02-039.png", "testscissors02"),
    ("scissors04-117.png", "scissors04"),
    ("paper3.png", "paper3"),                    # no frame number: its own hand
])
def test_hand_of_real_name_patterns(name, hand):
  assert hands.hand_of(name) == hand


def test_real_rps_folder_has_seven_hands_per_class_of_40_frames(shared_data):
  listing = [p for c in ("paper", "rock", "scissors")
             for p in sorted((shared_data / "rps_large" / "train" / c).glob("*.png"))]
  found = {}
  for p in listing:
    found.setdefault(hands.hand_of(p), []).append(p.parent.name)
  assert len(found) == 21
  for h, classes in found.items():
    assert len(classes) == 40 and len(set(classes)) == 1, h
  assert sorted(h for h, c in found.items() if c[0] == "rock") == [
      "rock01", "rock02", "rock03", "rock04", "rock05ck01", "rock06ck02", "rock07-k03"]


def _hand_set(per_class=7, frames=5):
  names, labels = [], []
  for c, cls in enumerate(("paper", "rock", "scissors")):
    for h in range(per_class):
      for f in range(frames):
        names.append(f"{cls}{h:02d}-{f:03d}.png")
        labels.append(c)
  return [hands.hand_of(n) for n in names], np.array(labels)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_folds_keep_hands_whole_and_every_class_in_every_fold(k):
  hand, labels = _hand_set()
  folds = hands.hand_folds(hand, labels, k, seed=0)
  assert sorted(set(folds.tolist())) == list(range(k))
  for f in range(k):
    test = folds == f
    assert not {h for h, t in zip(hand, test) if t} & {h for h, t in zip(hand, test) if not t}
    assert set(labels[test].tolist()) == {0, 1, 2}, f"fold {f} lacks a class"
  sizes = np.bincount(folds)
  assert sizes.max() - sizes.min() <= 3 * 5  # within one hand per class


def test_folds_are_deterministic_by_seed():
  hand, labels = _hand_set()
  a = hands.hand_folds(hand, labels, 3, seed=0)
  assert np.array_equal(a, hands.hand_folds(hand, labels, 3, seed=0))
  assert not np.array_equal(a, hands.hand_folds(hand, labels, 3, seed=1))


def test_too_many_folds_is_a_clear_error():
  hand, labels = _hand_set(per_class=2)
  with pytest.raises(DataError, match="3 folds need at least 3 hands"):
    hands.hand_folds(hand, labels, 3)


# ---------------------------------------------------------------------------------------------
# A tiny CV run: the cats-vs-dogs CNN (random weights) at 48x48 on synthetic hands.

TAPS = ("max_pooling2d_3:max", "max_pooling2d_3:avg")


def _tiny_config():
  c = config_base.get_config()
  c.model.name, c.weights, c.preprocess = "cnn", "", "rescale"
  c.data.image_size = 48
  c.head.num_classes, c.head.pooling, c.head.dropout = 3, "max", 0.0
  c.optim.name, c.optim.learning_rate = "adam", 1e-2
  c.batch_size, c.num_epochs = 8, 6
  c.augment.horizontal_flip = True
  c.augment.width_shift_range = 4.0
  return c


def _write_hands(root, per_class=3, frames=4):
  """Class c's images are noisy in one colour channel: separable by a linear head."""
  rng = np.random.default_rng(0)
  for c, cls in enumerate(("paper", "rock", "scissors")):
    (root / cls).mkdir(parents=True)
    for h in range(per_class):
      for f in range(frames):
        x = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        x[..., c] += 150
        Image.fromarray(x).save(root / cls / f"{cls}{h:02d}-{f:03d}.png")


def test_tiny_cross_validation_end_to_end(tmp_path):
  _write_hands(tmp_path / "data")
  config = _tiny_config()
  paths, labels, names, images = cv_features.load_folder(tmp_path / "data", 48)
  assert names == ["paper", "rock", "scissors"] and images.shape == (36, 48, 48, 3)
  folds = hands.hand_folds([hands.hand_of(p) for p in paths], labels, 3)
  logs = []
  cache = cv_features.build_or_load(config, paths, labels, images, 2, TAPS, tmp_path / "cache",
                                    log=logs.append)
  assert cache.shape == (2, 36, 256) and sum("computing" in m for m in logs) == 2
  again = cv_features.build_or_load(config, paths, labels, images, 2, TAPS, tmp_path / "cache",
                                    log=logs.append)
  assert np.array_equal(cache, again) and len(logs) == 4  # read back, nothing computed
  assert not np.array_equal(cache[0], cache[1])  # view 1 is augmented

  recipe = crossval.Recipe("tiny", config, ("max_pooling2d_3:max",))
  r = crossval.run_recipe(recipe, cache, TAPS, labels, folds, 3)
  assert len(r["per_fold"]) == 3 and all(len(f["accuracy"]) == 6 for f in r["per_fold"])
  assert np.sum(r["confusion"]) == 36  # every image held out exactly once
  assert r["final_mean"] > 0.9, r
  assert r["final_sd"] == pytest.approx(np.std([f["final"] for f in r["per_fold"]], ddof=1))
  tta = crossval.run_recipe(crossval.Recipe("tta", config, ("max_pooling2d_3:max",), tta=True),
                            cache, TAPS, labels, folds, 3)
  assert np.sum(tta["confusion"]) == 36
  json.dumps([r, tta])  # what scripts/cv_rps.py writes
  assert "| tiny |" in crossval.table([r, tta])


def test_cv_view_features_do_not_depend_on_the_batch(tmp_path):
  _write_hands(tmp_path / "data", per_class=1, frames=2)
  config = _tiny_config()
  _, _, _, images = cv_features.load_folder(tmp_path / "data", 48)
  from rpsflax import models
  model = models.build_model(config)
  v = cv_features.backbone_variables(config, model)
  a = cv_features.compute_view(config, model, v, images, 1, TAPS, batch=4)
  b = cv_features.compute_view(config, model, v, images, 1, TAPS, batch=5)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_select_takes_the_named_taps():
  cache = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
  x = crossval.select(cache, ("a", "b", "c"), ("c", "a"))
  assert x.shape == (2, 3, 1, 1, 4)
  np.testing.assert_array_equal(x[..., 0, 0, :], np.concatenate([cache[..., 4:], cache[..., :2]], -1))


def test_compare_pairs_folds_and_applies_the_one_sd_rule():
  def result(name, finals):
    folds = [{"final": f, "last5": f} for f in finals]
    return {"name": name, "final_mean": float(np.mean(finals)),
            "final_sd": float(np.std(finals, ddof=1)), "per_fold": folds}
  base = result("tutorial", [0.6, 0.9, 1.0])           # sd 0.208
  small = result("small", [0.7, 0.95, 1.0])            # +0.05 mean: within one sd
  big = result("big", [0.95, 0.99, 1.0])               # +0.147: within one sd too
  huge = result("huge", [1.0, 1.0, 1.0])               # +0.167 < 0.208: still not
  crossval.compare([base, small, big, huge], "tutorial")
  assert small["vs_baseline"]["final_mean"] == pytest.approx(0.05)
  assert small["vs_baseline"]["final_sd"] == pytest.approx(np.std([0.1, 0.05, 0.0], ddof=1))
  assert not any(r["beats_by_1sd"] for r in (base, small, big, huge))
  steady = result("tutorial", [0.80, 0.82, 0.84])      # sd 0.02
  better = result("better", [0.86, 0.88, 0.90])
  crossval.compare([steady, better], "tutorial")
  assert better["beats_by_1sd"] and not steady["beats_by_1sd"]


def test_cv_recipes_match_the_config_files(repo_root):
  from rpsflax import cv_recipes
  table = cv_recipes.recipes(repo_root / "configs")
  tut, avg = (cv_recipes.load_config(repo_root / "configs", n) for n in ("rps", "rps_avgpool"))
  for name, ref in (("tutorial", tut), ("rps_tuned", avg)):
    c = table[name].config
    for key in ("head.pooling", "head.dropout", "optim.name", "optim.learning_rate",
                "batch_size", "num_epochs"):
      a, b = c, ref
      for part in key.split("."):
        a, b = a[part], b[part]
      assert a == b, (name, key)
