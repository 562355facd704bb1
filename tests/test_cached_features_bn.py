"""Cached features for a BatchNorm backbone: the head trains on features computed in inference
mode with the state's moving statistics, exactly as the uncached frozen run computes them.

A tiny MobileNetV2 (alpha 0.35, 48x48) on 16 images, from seeded random weights and moving
statistics (the init's mean 0 / variance 1 would make inference mode nearly the identity, so a
cache that ignored the statistics could pass).
"""

import json

import jax
import numpy as np
import pytest

import data_factory
import keras_reference as kr
from rpsflax import errors, features, input_pipeline, restore, sharding, steps, train

IMAGE = 48


def _config(data_dir, cached: bool):
  c = kr.load_recipe("catsdogs_mobilenetv2")  # frozen MobileNetV2, BN in inference mode
  c.model.alpha = 0.35
  c.weights = ""
  c.data.tfds_name = ""
  c.data.dir = str(data_dir)
  c.data.image_size = IMAGE
  c.data.val_fraction = 0.25
  c.augment.enabled = False  # the uncached run would augment every step; the cache has no views
  c.batch_size = 4
  c.eval_batch_size = 8
  c.num_epochs = 2
  c.log_every_steps = 2
  c.cached_features.enabled = cached
  c.cached_features.augmented_views = 0
  return c


def seeded_variables(config, model, seed=0):
  """{'params', 'batch_stats'} drawn in NumPy from the model's shapes (no init compile): He-normal
  kernels, N(0, 0.1) biases, gamma in [0.5, 1.5], and moving statistics far from the init's."""
  shapes = jax.eval_shape(lambda r: steps.init_variables(config, model, r), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name == "kernel":
      return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    return rng.normal(0.0, 0.5 if name == "mean" else 0.1, s.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(root, {'cached': result, 'uncached': result}, initial batch_stats) of two 2-epoch runs
  from the same seeded initial state."""
  root = tmp_path_factory.mktemp("cached_bn")
  data_factory.class_folders(root / "data" / "train", {"cats": 8, "dogs": 8}, size=(56, 56))
  initial = {}

  def seeded_state(config, model, init_rng, mesh, weights_source):
    v = initial.setdefault("variables", seeded_variables(config, model))
    state = steps.create_train_state(config, model, params=v["params"],
                                     batch_stats=v["batch_stats"])
    return jax.device_put(state, sharding.replicated(mesh))

  results = {}
  with pytest.MonkeyPatch.context() as m:
    m.setattr(train, "initial_state", seeded_state)
    for name in ("uncached", "cached"):
      results[name] = train.train_and_evaluate(_config(root / "data", name == "cached"),
                                               root / name)
  return root, results, initial["variables"]["batch_stats"]


def _latest(root, name):
  config = _config(root / "data", name == "cached")
  state, _ = restore.restore_state(config, root / name, which="latest")
  return jax.device_get(state)


@pytest.mark.slow  # ~40 s of CPU for the fixture's two tiny MobileNetV2 runs
def test_head_trained_on_cached_features_matches_the_uncached_frozen_run(runs):
  root, results, initial = runs
  assert (root / "cached" / "features" / features.MANIFEST).is_file()
  assert not (root / "uncached" / "features").exists()
  cached, uncached = _latest(root, "cached"), _latest(root, "uncached")
  assert int(cached.step) == int(uncached.step) == 6  # 12 training images, batch 4, 2 epochs
  # The frozen backbone and its statistics: untouched in both runs, bit for bit.
  for state in (cached, uncached):
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, initial)
  jax.tree.map(np.testing.assert_array_equal, cached.params["backbone"],
               uncached.params["backbone"])
  # The head: the same training, up to the rounding of two compilations of the backbone.
  for a, b in zip(jax.tree.leaves(cached.params["head"]), jax.tree.leaves(uncached.params["head"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  h_c = json.loads((root / "cached" / "history.json").read_text())
  h_u = json.loads((root / "uncached" / "history.json").read_text())
  for a, b in zip(h_c, h_u):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)
  assert results["cached"]["num_examples"] == results["uncached"]["num_examples"] == 4
  assert results["cached"]["loss"] == pytest.approx(results["uncached"]["loss"], rel=1e-4)
  assert results["cached"]["accuracy"] == results["uncached"]["accuracy"]


@pytest.mark.slow  # the same runs
def test_cache_key_covers_the_moving_statistics(runs):
  root, _, initial = runs
  config = _config(root / "data", True)
  datasets = input_pipeline.create_datasets(config, root / "cached")
  state = _latest(root, "cached")
  fields = features.cache_key_fields(config, datasets, state.params, state.batch_stats)
  stored = json.loads((root / "cached" / "features" / features.MANIFEST).read_text())["fields"]
  assert fields == stored  # the run's own key: this state reuses its cache
  arrays, why = features.load_cache(root / "cached" / "features", fields)
  assert arrays is not None and why == ""
  other = jax.tree.map(np.array, initial)
  other["backbone"]["block_16_project_BN"]["var"][0] += 0.5  # one moving variance, nothing else
  moved = features.cache_key_fields(config, datasets, state.params, other)
  assert moved["weights_sha256"] != fields["weights_sha256"]
  arrays, why = features.load_cache(root / "cached" / "features", moved)
  assert arrays is None and "weights_sha256" in why


def test_refuses_bn_layers_in_training_mode(tmp_path):
  config = _config(tmp_path / "nodata", True)
  features.check_settings(config)  # frozen BN: accepted
  config.model.bn_trainable = True
  features.check_settings(config)  # bn_trainable, but no BN layer trains: still inference mode
  config.trainable = ("head/.*", "backbone/block_16_project_BN/.*")
  with pytest.raises(errors.ConfigError, match=r"config\.cached_features\.enabled.*BatchNorm.*"
                     r"config\.model\.bn_trainable=True runs 1 of them in training mode "
                     r"\(block_16_project_BN\).*--config\.model\.bn_trainable=False"):
    train.train_and_evaluate(config, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()  # refused before touching anything
