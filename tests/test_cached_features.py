"""Cached backbone features (configs/rps_cached.py): computed once, reused on resume, recomputed
when anything they depend on changes, and the checkpoint is the full model.

A tiny run: VGG16 at 32x32 with random weights on 18 images (data_factory), 2 augmented views.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import data_factory
import keras_reference as kr
from rpsflax import errors, evaluation, features, input_pipeline, models, prediction, restore, steps, train

IMAGE = 32
VIEWS = 2


def _config(data_dir, num_epochs=2, views=VIEWS):
  c = kr.load_recipe("rps_cached")
  c.weights = ""
  c.data.dir = str(data_dir)
  c.data.image_size = IMAGE
  c.data.val_fraction = 0.25
  c.batch_size = 4
  c.eval_batch_size = 8
  c.num_epochs = num_epochs
  c.log_every_steps = 2
  c.cached_features.augmented_views = views
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("cached")
  data = root / "data"
  data_factory.class_folders(data / "train", {"paper": 6, "rock": 6, "scissors": 6},
                             size=(40, 40))
  config = _config(data)
  config.data.device_cache = "on"  # the features on the device (what 'auto' picks here too)
  result = train.train_and_evaluate(config, root / "wd")
  return root, data, config, result


def _datasets(config, workdir):
  return input_pipeline.create_datasets(config, workdir)


def _images(datasets, split):
  images, labels = [], []
  for batch in datasets.eval_batches(split):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels)


def test_run_writes_the_cache_and_a_normal_workdir(run):
  root, _, config, result = run
  wd = root / "wd"
  manifest = json.loads((wd / "features" / features.MANIFEST).read_text())
  n = json.loads((wd / "data_report.json").read_text())
  train_arr = np.load(wd / "features" / "train.npy")
  val_arr = np.load(wd / "features" / "validation.npy")
  assert train_arr.shape[0] == 1 + VIEWS and train_arr.shape[2:] == (1, 1, 512)
  assert val_arr.shape[0] == 1 and train_arr.shape[1] + val_arr.shape[1] == 18
  assert manifest["splits"]["train"]["shape"] == list(train_arr.shape)
  fields = manifest["fields"]
  assert fields["image_size"] == IMAGE and fields["augmented_views"] == VIEWS
  assert len(fields["weights_sha256"]) == 64 and set(fields["data"]) == {"train", "validation"}
  assert np.isfinite(train_arr).all() and train_arr.std() > 0
  history = json.loads((wd / "history.json").read_text())
  assert [h["epoch"] for h in history] == [1, 2]
  assert (wd / "eval.json").is_file() and (wd / "checkpoints" / "latest").is_dir()
  assert result["num_examples"] == val_arr.shape[1] and n  # data_report was written


def test_views_are_the_backbone_on_clean_and_augmented_images(run):
  root, _, config, _ = run
  wd = root / "wd"
  state, _ = restore.restore_state(config, wd, which="latest")
  datasets = _datasets(config, wd)
  cached = np.load(wd / "features" / "train.npy")
  images, _ = _images(datasets, "train")
  model = models.build_model(config)
  direct = jax.jit(lambda p, x: model.apply({"params": p}, steps.prepare_images(config, x),
                                            method="features"))(state.params, images)
  direct = np.asarray(direct).max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(cached[0], np.asarray(direct), rtol=1e-5, atol=1e-4)
  for v in range(1, 1 + VIEWS):  # augmented: not the clean view, not each other
    assert np.abs(cached[v] - cached[0]).max() > 1e-3
  assert np.abs(cached[1] - cached[2]).max() > 1e-3
  # Each augmented view is backbone(augment(x)) with the key of that view and that example:
  # fold_in(fold_in(fold_in(PRNGKey(seed), tag), view), example index), one image at a time.
  from rpsflax import augment

  base = jax.random.fold_in(jax.random.PRNGKey(config.seed), features._AUG_TAG)
  pool = jax.jit(lambda p, x: model.apply({"params": p}, steps.prepare_images(config, x),
                                          method="features").max(axis=(1, 2), keepdims=True))
  aug = jax.jit(lambda key, x: augment.augment_batch(key, x, config.augment))
  for v in range(1, 1 + VIEWS):
    view_key = jax.random.fold_in(base, v)
    augmented = np.concatenate([np.asarray(aug(jax.random.fold_in(view_key, i), images[i][None]))
                                for i in range(len(images))])  # float32, as the cache's input
    assert np.abs(augmented - images.astype(np.float32)).max() > 1
    want = np.asarray(pool(state.params, augmented))
    np.testing.assert_allclose(cached[v], want, rtol=1e-5, atol=1e-4, err_msg=f"view {v}")


def test_resume_reuses_the_cache_and_equals_a_straight_run(run, monkeypatch):
  root, data, _, _ = run
  resumed = root / "resumed"
  shutil.copytree(root / "wd", resumed)
  stamp = (resumed / "features" / "train.npy").stat().st_mtime_ns

  def no_compute(*args, **kwargs):
    raise AssertionError("features were recomputed although the cache matches")
  with monkeypatch.context() as m:
    m.setattr(features, "compute_split", no_compute)
    out = train.train_and_evaluate(_config(data, 3), resumed)  # epoch 3 on the reused cache
  assert (resumed / "features" / "train.npy").stat().st_mtime_ns == stamp
  straight = train.train_and_evaluate(_config(data, 3), root / "straight3")
  # A fresh run computed the same features: views are seeded per (view, image).
  np.testing.assert_allclose(np.load(root / "straight3" / "features" / "train.npy"),
                             np.load(resumed / "features" / "train.npy"), rtol=1e-6, atol=1e-5)
  assert out["accuracy"] == straight["accuracy"] and out["loss"] == straight["loss"]
  config = _config(data, 3)
  a, _ = restore.restore_state(config, resumed, which="latest")
  b, _ = restore.restore_state(config, root / "straight3", which="latest")
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_host_fed_run_equals_the_device_resident_one(run, tmp_path):
  """The fixture's run kept its features on the device (rpsflax.resident); the host-fed path on
  the same features (config.data.device_cache='off') trains the same bits: parameters and
  optimizer state, history, eval.json. Views drawn per epoch, dropout on."""
  root, data, config, result = run
  off = _config(data)
  off.data.device_cache = "off"
  off.cached_features.dir = str(root / "wd" / "features")  # the same cache, reused
  out = train.train_and_evaluate(off, tmp_path / "off")
  a, _ = restore.restore_state(config, root / "wd", which="latest")
  b, _ = restore.restore_state(config, tmp_path / "off", which="latest")
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  no_seconds = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
  assert no_seconds(json.loads((tmp_path / "off" / "history.json").read_text())) == \
      no_seconds(json.loads((root / "wd" / "history.json").read_text()))
  drop = ("timing",)
  ev_off, ev_on = (json.loads((w / "eval.json").read_text()) for w in (tmp_path / "off", root / "wd"))
  assert {k: v for k, v in ev_off.items() if k not in drop} == \
      {k: v for k, v in ev_on.items() if k not in drop}
  assert out["loss"] == result["loss"]


def test_cache_is_invalid_when_what_it_depends_on_changes(run, tmp_path):
  root, data, config, _ = run
  wd = root / "wd"
  fields = json.loads((wd / "features" / features.MANIFEST).read_text())["fields"]
  arrays, why = features.load_cache(wd / "features", fields)
  assert arrays is not None and why == ""
  for key, value in (("image_size", 64), ("augmented_views", 3), ("weights_sha256", "0" * 64)):
    arrays, why = features.load_cache(wd / "features", {**fields, key: value})
    assert arrays is None and key in why
  # A training image that changed on disk changes the data fingerprint.
  datasets = _datasets(config, wd)
  before = features.data_fingerprint(datasets, "train")
  first = datasets.split_paths("train")[0]
  st = os.stat(first)
  try:
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert features.data_fingerprint(datasets, "train") != before
  finally:
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
  # Different backbone weights: a different fingerprint.
  state, _ = restore.restore_state(config, wd, which="latest")
  params = jax.device_get(state.params)
  other = jax.tree.map(np.array, params)
  other["backbone"]["block1_conv1"]["bias"][0] += 1.0
  assert features.weights_fingerprint(params) != features.weights_fingerprint(other)


def test_full_model_predict_and_evaluate_match_the_head_on_cached_features(run):
  root, _, config, result = run
  wd = root / "wd"
  datasets = _datasets(config, wd)
  images, labels = _images(datasets, "validation")
  # The best checkpoint: the one the training run's final evaluation (`result`) used (issue 24).
  assert result["checkpoint"]["which"] == "best"
  predictor = prediction.Predictor(wd, which="best", batch_size=8)
  full = predictor.probabilities(images)

  state, _ = restore.restore_state(config, wd, which="best")
  model = models.build_model(config)
  cached = np.load(wd / "features" / "validation.npy")[0]
  logits = model.apply({"params": state.params}, cached, method="classify")
  head = np.asarray(jax.nn.softmax(logits, axis=-1))
  np.testing.assert_allclose(full, head, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(full.argmax(-1), head.argmax(-1))

  evaluated = evaluation.evaluate_checkpoint(config, wd, split="validation", which="best")  # the full model
  assert evaluated["num_examples"] == result["num_examples"] == len(labels)
  assert evaluated["accuracy"] == pytest.approx(result["accuracy"])
  assert evaluated["loss"] == pytest.approx(result["loss"], rel=1e-4)
  assert result["accuracy"] == pytest.approx(float(np.mean(head.argmax(-1) == labels)))


def test_two_devices_with_padded_batches_compute_the_same_features(run, tmp_path):
  """The row bookkeeping of sharded, padded batches: 3 images per batch padded to 4 on 2 devices."""
  root, _, _, _ = run
  script = textwrap.dedent("""
      import sys
      import jax, numpy as np
      from rpsflax import features, input_pipeline, models, report, restore, sharding
      wd, out = sys.argv[1:]
      config = report.read_config(wd)
      config.eval_batch_size = 3
      mesh = sharding.make_mesh()
      assert mesh.devices.size == 2
      state, _ = restore.restore_state(config, wd, which="latest", mesh=mesh)
      datasets = input_pipeline.create_datasets(config, None)
      views = 1 + config.cached_features.augmented_views
      model = models.build_model(config)
      np.save(out, features.compute_split(config, datasets, "train", state.params, mesh, views,
                                          features.feature_fns(config, model, mesh)))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  out = tmp_path / "two.npy"
  proc = subprocess.run([sys.executable, "-c", script, str(root / "wd"), str(out)], env=env,
                        cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(out), np.load(root / "wd" / "features" / "train.npy"),
                             rtol=1e-5, atol=1e-4)


def test_epochs_follow_the_uncached_order_and_draw_seeded_views(run):
  root, _, config, _ = run
  datasets = _datasets(config, root / "wd")
  arrays, _ = features.load_cache(root / "wd" / "features",
                                  json.loads((root / "wd" / "features" / features.MANIFEST)
                                             .read_text())["fields"])
  cached = features.FeatureDatasets(datasets, arrays, config.seed)
  assert cached.steps_per_epoch == datasets.steps_per_epoch
  for epoch in (0, 1):
    a, b = list(cached.train_batches(epoch)), list(datasets.train_batches(epoch))
    assert len(a) == len(b)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["label"], y["label"])
      np.testing.assert_array_equal(x["mask"], y["mask"])
      assert x["image"].shape == (4, 1, 1, 512) and not x["image"][~x["mask"]].any()
  n = arrays["train"].shape[1]
  v0, v1 = features.view_choice(0, 0, n, 3), features.view_choice(0, 1, n, 3)
  np.testing.assert_array_equal(v0, features.view_choice(0, 0, n, 3))
  assert set(np.unique(np.concatenate([v0, v1]))) <= {0, 1, 2} and not np.array_equal(v0, v1)
  assert not features.view_choice(0, 0, n, 1).any()


@pytest.mark.parametrize("override", [{"trainable": (".*",)},
                                      {"lr_groups": (("backbone/block5_.*", 1e-5),)}],
                         ids=["all", "block5-group"])
def test_refuses_a_trainable_backbone(tmp_path, override):
  config = _config(tmp_path / "nodata")
  for key, value in override.items():
    config[key] = value
  with pytest.raises(errors.ConfigError, match=r"config\.cached_features\.enabled.*"
                     r"frozen backbone.*backbone/block"):
    train.train_and_evaluate(config, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()  # refused before touching anything
  config.cached_features.enabled = False
  features.check_settings(config)  # no-op when disabled


def test_augmented_views_need_augmentation(tmp_path):
  config = _config(tmp_path)
  config.augment.enabled = False
  with pytest.raises(errors.ConfigError, match="config.cached_features.augmented_views"):
    features.check_settings(config)
  config.cached_features.augmented_views = 0
  features.check_settings(config)


def test_a_run_lists_its_data_folder_and_resolves_its_weights_once(run, tmp_path, monkeypatch):
  """preflight hands its folder listing and its resolved 'imagenet' release to the run: one
  listing of the data folder, one md5 of the release file (Keras' cache) per run."""
  from rpsflax import data_files, weights
  from rpsflax.models import vgg

  _, data, _, _ = run
  notop = {name: [np.zeros(w.shape, np.float32) for w in (p["kernel"], p["bias"])]
           for name, p in weights.vgg16_target(False)[0].items()}
  fname = vgg.VGG16_RELEASES[False][0]
  layers = [(n, notop[n]) for n in vgg.vgg16_layer_names(False)]
  (tmp_path / "models").mkdir()  # Keras' cache, where 'imagenet' finds the release offline
  path = kr.write_legacy_arrays(tmp_path / "models" / fname, layers)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  monkeypatch.setitem(vgg.VGG16_RELEASES, False, (fname, "http://unused", weights.file_md5(path)))
  monkeypatch.setattr(weights.releases, "WEIGHTS_DIR", tmp_path / "no_weights_dir")
  listed, downloads = [], []
  list_folder, download = data_files.list_folder, weights.releases.download_release
  monkeypatch.setattr(data_files, "list_folder", lambda p: listed.append(p) or list_folder(p))
  monkeypatch.setattr(weights.releases, "download_release",
                      lambda rel: downloads.append(rel.fname) or download(rel))
  config = _config(data, num_epochs=1, views=0)
  config.weights = "imagenet"
  train.train_and_evaluate(config, tmp_path / "wd")
  assert listed == [str(data / "train")] and downloads == [fname]
