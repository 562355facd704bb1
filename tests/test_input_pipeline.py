"""tf.data pipeline: Keras-exact decoding/resizing, batches, padding, order, processes, TFDS."""

import json
import os
import re

import numpy as np
from PIL import Image
import pytest

from rpsflax import config_base
from rpsflax import input_pipeline as ip
from rpsflax import tf_decode
from rpsflax.errors import DataError
from tests import data_factory as fac

tf = tf_decode.tf


def _config(data_dir="", *, size=16, batch=8, eval_batch=8, classes=2, **data):
  c = config_base.get_config()
  c.data.dir = str(data_dir)
  c.data.image_size = size
  c.data.val_fraction = 0.0
  c.batch_size, c.eval_batch_size = batch, eval_batch
  c.head.num_classes = classes
  for k, v in data.items():
    c.data[k] = v
  return c


def _create(config, workdir=None, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return ip.create_datasets(config, workdir, **kw)


def _pil_reference(path, size, method=Image.NEAREST):
  """What keras.utils.load_img does (PIL convert('RGB'), then resize), without Keras."""
  im = Image.open(path)
  if im.mode != "RGB":
    im = im.convert("RGB")
  if im.size != (size[1], size[0]):
    im = im.resize((size[1], size[0]), method)
  return np.asarray(im)


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices("GPU") == []


# -- decoding and resizing -----------------------------------------------------------------------

def test_nearest_resize_reproduces_pil_indices():
  mismatches = []
  for n_in in [1, 2, 3, 5, 7, 8, 16, 20, 24, 40, 64, 99, 128, 150, 224, 300, 375, 500, 640, 900]:
    src = np.arange(n_in * 3, dtype=np.int32).reshape(n_in, 1, 3) % 251
    src = np.broadcast_to(src, (n_in, 2, 3)).astype(np.uint8)
    for n_out in [1, 2, 3, 7, 13, 32, 100, 150, 224, 299]:
      got = tf_decode.resize_image(tf.constant(src), (n_out, 2)).numpy()
      want = np.asarray(Image.fromarray(src).resize((2, n_out), Image.NEAREST))
      if not np.array_equal(got, want):
        mismatches.append((n_in, n_out))
  assert not mismatches  # a plain floor((i + 0.5) * scale) misses ~10% of these pairs


def test_decoding_matches_keras_load_img_on_real_images(shared_data):
  import keras  # pylint: disable=import-outside-toplevel
  paths = [shared_data / "rps" / "validation" / "paper-hires1.png",    # 900x900 RGBA
           shared_data / "rps" / "validation" / "rock3.png",           # 300x300 RGBA
           shared_data / "rps" / "train" / "scissors" / sorted(
               os.listdir(shared_data / "rps" / "train" / "scissors"))[0],
           *[shared_data / "catsdogs" / "train" / f"{c}.{i}.jpg"
             for c in ("cat", "dog") for i in (0, 7, 42, 149)]]
  for size in [(224, 224), (150, 150), (120, 200)]:
    images, ok, skipped = ip.load_images(paths, size, "nearest")
    assert not skipped and ok == [str(p) for p in paths]
    for img, p in zip(images, paths):
      want = np.asarray(keras.utils.load_img(p, target_size=size, interpolation="nearest"))
      np.testing.assert_array_equal(img, want, err_msg=f"{p} at {size}")
  # smooth methods: TF's antialiased resize is within one level of PIL's bilinear
  images, _, _ = ip.load_images(paths, (150, 150), "bilinear")
  for img, p in zip(images, paths):
    want = np.asarray(keras.utils.load_img(p, target_size=(150, 150), interpolation="bilinear"))
    diff = np.abs(img.astype(int) - want)
    assert diff.max() <= 1 and diff.mean() < 0.3, p


def test_untidy_modes_decode_like_pil(tmp_path):
  paths = fac.class_folders(tmp_path, {"a": 12}, untidy=True)
  images, ok, skipped = ip.load_images(paths, (20, 24))
  assert not skipped and len(ok) == 12
  for img, p in zip(images, paths):
    mode = Image.open(p).mode
    if mode == "I;16":  # PIL saturates 16-bit gray to white; we keep the high byte
      gray = np.asarray(Image.open(p), np.uint16) >> 8
      want = np.repeat(_pil_reference_from_array(gray.astype(np.uint8), (20, 24))[..., None],
                       3, -1)
    else:
      want = _pil_reference(p, (20, 24))
    np.testing.assert_array_equal(img, want, err_msg=f"{p.name} ({mode})")


def _pil_reference_from_array(a, size):
  return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.NEAREST))


def test_load_images_skips_broken_files(tmp_path):
  good = fac.flat_folder(tmp_path, {"x": 2})
  broken = fac.broken_files(tmp_path)
  images, ok, skipped = ip.load_images([*good, *broken], 16)
  assert images.shape == (2, 16, 16, 3) and ok == [str(p) for p in good]
  assert sorted(p for p, _ in skipped) == sorted(str(p) for p in broken)


# -- datasets from folders -----------------------------------------------------------------------

def test_shared_samples_both_layouts(shared_data, tmp_path):
  ds = _create(_config(shared_data / "rps", size=32, batch=64, eval_batch=16, classes=3),
               tmp_path)
  assert ds.class_names == ["paper", "rock", "scissors"]
  assert ds.num_examples == {"train": 180, "validation": 33}
  assert ds.steps_per_epoch == 3
  val = list(ds.eval_batches("validation"))
  assert len(val) == 3 and sum(b["mask"].sum() for b in val) == 33
  labels = np.concatenate([b["label"][b["mask"]] for b in val])
  want = [ds.class_names.index(re.match("[a-z]+", os.path.basename(p)).group(0))
          for p in ds.split_paths("validation")]
  assert labels.tolist() == want
  cd = _create(_config(shared_data / "catsdogs", size=32, batch=128, classes=1, holdout=50,
                       val_fraction=0.25), tmp_path / "cd")
  assert cd.class_names == ["cat", "dog"]
  assert cd.num_examples == {"holdout": 50, "validation": 63, "train": 187}  # 62.5 rounds up
  batch = next(cd.train_batches(0))
  assert batch["image"].shape == (128, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool


def _folder(tmp_path, counts=None, **kw):
  fac.class_folders(tmp_path / "data", counts or {"cat": 6, "dog": 5}, **kw)
  return tmp_path / "data"


def test_eval_counts_every_example_once_padded_and_masked(tmp_path):
  ds = _create(_config(_folder(tmp_path), eval_batch=4), None)
  batches = list(ds.eval_batches("train"))
  assert len(batches) == ds.eval_steps("train") == 3
  assert [b["mask"].sum() for b in batches] == [4, 4, 3]
  last = batches[-1]
  assert not last["image"][~last["mask"]].any() and last["label"][~last["mask"]].tolist() == [0]
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  want, _, _ = ip.load_images(ds.split_paths("train"), 16)
  np.testing.assert_array_equal(images, want)  # fixed file order
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert labels.tolist() == ds.split_labels("train").tolist() == [0] * 6 + [1] * 5


def test_train_order_is_deterministic_per_epoch_and_resumable(tmp_path):
  data = _folder(tmp_path, {"a": 7, "b": 6})
  ds = _create(_config(data, batch=4), tmp_path / "w")
  first = [b for b in ds.train_batches(2)]
  assert len(first) == ds.steps_per_epoch == 4
  assert all(b["image"].shape == (4, 16, 16, 3) for b in first)
  assert [b["mask"].sum() for b in first] == [4, 4, 4, 1]
  # a fresh process resuming at epoch 2 sees exactly the same batches
  again = [b for b in _create(_config(data, batch=4), tmp_path / "w").train_batches(2)]
  for a, b in zip(first, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = [b for b in ds.train_batches(3)]
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
  # each example once per epoch, in the advertised order
  ref = ds.eval_batches("train")
  all_images = np.concatenate([b["image"][b["mask"]] for b in ref])
  seen = np.concatenate([b["image"][b["mask"]] for b in first])
  np.testing.assert_array_equal(seen, all_images[ds.train_order(2)])


@pytest.mark.parametrize("cache", [True, False])
def test_processes_yield_slices_of_the_global_batch(tmp_path, cache):
  data = _folder(tmp_path, {"a": 6, "b": 5})
  one = list(_create(_config(data, batch=4, eval_batch=4, cache=cache)).train_batches(1))
  parts = [list(_create(_config(data, batch=4, eval_batch=4, cache=cache), process_index=p,
                        process_count=2).train_batches(1)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(one) == 3
  for s, whole in enumerate(one):
    for k in whole:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][s][k], parts[1][s][k]]), whole[k])
  evals = [list(_create(_config(data, eval_batch=4), process_index=p, process_count=2)
                .eval_batches("train")) for p in range(2)]
  assert sum(b["mask"].sum() for e in evals for b in e) == 11
  with pytest.raises(DataError, match="batch_size=4 .* processes \\(3\\)"):
    _create(_config(data, batch=4, eval_batch=6), process_index=0, process_count=3)


@pytest.mark.parametrize("decoder", ["pil", "tf"])
def test_uncached_stream_equals_cache_and_survives_tf_refusals(tmp_path, monkeypatch, decoder):
  data = _folder(tmp_path, {"a": 5, "b": 5}, untidy=True)
  fac.write_image(data / "a" / "a_bmp.bmp")
  cached = list(_create(_config(data, batch=4)).train_batches(0))  # PIL, cached
  streamed = _create(_config(data, batch=4, cache=False, decoder=decoder))
  for a, b in zip(cached, streamed.train_batches(0)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Every file to tf.io's decoder: it refuses the BMP, and PIL decodes it, the same pixels.
  by_pil = []
  pil_load_resize = tf_decode.pil_load_resize
  monkeypatch.setattr(tf_decode, "pil_load_resize",
                      lambda path, *a: by_pil.append(path) or pil_load_resize(path, *a))
  for ds in (streamed, _create(_config(data, batch=4, decoder=decoder))):
    ds._splits["train"].codes[:] = 0  # pylint: disable=protected-access
    for a, b in zip(cached, ds.train_batches(0)):
      np.testing.assert_array_equal(a["image"], b["image"])
  assert any(p.endswith("a_bmp.bmp") for p in by_pil) == (decoder == "tf")


def test_broken_files_are_skipped_and_training_goes_on(tmp_path):
  data = _folder(tmp_path, {"cat": 3, "dog": 3})
  fac.broken_files(data / "dog", prefix="dog")
  ds = _create(_config(data, batch=4), tmp_path / "w")
  assert ds.num_examples == {"train": 6} and len(ds.skipped) == 4
  assert sum(b["mask"].sum() for b in ds.train_batches(0)) == 6
  report = json.loads((tmp_path / "w" / "data_report.json").read_text())
  assert report["num_skipped"] == 4 and report["counts"]["train"] == {"cat": 3, "dog": 3}
  assert {os.path.basename(s["path"]) for s in report["skipped"]} == {
      f"dog.broken_{k}.jpg" for k in fac.BROKEN_KINDS}


def test_config_errors_name_the_key(tmp_path):
  data = _folder(tmp_path)
  with pytest.raises(DataError, match="config.head.num_classes=3 .* 2 classes"):
    _create(_config(data, classes=3))
  with pytest.raises(DataError, match="config.data.resize_method='hamming'"):
    _create(_config(data, resize_method="hamming"))
  with pytest.raises(DataError, match=str(tmp_path / "nope")):
    _create(_config(tmp_path / "nope"))


def test_eval_dataset_for_another_folder(tmp_path):
  fac.flat_folder(tmp_path / "cats_only", {"cat": 3})
  ds = ip.create_eval_dataset(_config(), tmp_path / "cats_only", ["cat", "dog"],
                              process_index=0, process_count=1)
  assert ds.num_examples == {"eval": 3}
  assert [b["label"][b["mask"]].tolist() for b in ds.eval_batches("eval")] == [[0, 0, 0]]
  with pytest.raises(DataError, match="fox"):
    fac.flat_folder(tmp_path / "fox", {"fox": 1})
    ip.create_eval_dataset(_config(), tmp_path / "fox", ["cat", "dog"], process_index=0,
                           process_count=1)


def test_benchmark_entry_point(tmp_path):
  from rpsflax.benchmark import pipeline
  data = _folder(tmp_path, {"a": 4, "b": 4})
  ds = pipeline.folder_datasets(data, image_size=16, batch_size=4)
  ds.prepare()
  assert ds.steps_per_epoch == 2 and sum(b["mask"].sum() for b in ds.train_batches(0)) == 8
  ds = pipeline.folder_datasets(data, image_size=16, batch_size=4, cache=False)
  assert sum(b["mask"].sum() for b in ds.train_batches(0)) == 8


# -- TFDS ----------------------------------------------------------------------------------------

def test_tfds_mock_reading(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  with tfds.testing.mock_data(num_examples=10):
    ds = _create(_config("", size=24, batch=4, classes=3, tfds_name="rock_paper_scissors",
                         tfds_data_dir=str(tmp_path / "tfds")), tmp_path / "w")
    assert ds.class_names == ["paper", "rock", "scissors"]  # TFDS order is rock, paper, ...
    assert ds.num_examples == {"train": 10, "validation": 10}  # 'test' is the validation split
    batch = next(ds.train_batches(0))
    assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].any()
    assert (tmp_path / "w" / "splits" / "train.txt").read_text().startswith(
        "tfds:rock_paper_scissors/train/0\t")
    raw = [int(ex["label"]) for ex in tfds.builder("rock_paper_scissors").as_dataset(
        split="train", shuffle_files=False).as_numpy_iterator()]
    assert ds.split_labels("train").tolist() == [[1, 0, 2][r] for r in raw]  # rock=1, paper=0
    cd = _create(_config("", size=24, batch=4, classes=1, tfds_name="cats_vs_dogs", holdout=2,
                         val_fraction=0.25), tmp_path / "w2")
    assert cd.num_examples == {"holdout": 2, "validation": 2, "train": 6}
    again = _create(_config("", size=24, batch=4, classes=1, tfds_name="cats_vs_dogs",
                            holdout=2, val_fraction=0.25), tmp_path / "w2")
    assert again.split_paths("holdout") == cd.split_paths("holdout")
    assert again.report["splits_reused"]


def test_tfds_offline_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  def offline(*a, **k):
    raise ConnectionError("Failed to establish a new connection: network is unreachable")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  with pytest.raises(DataError) as e:
    _create(_config("", classes=3, tfds_name="rock_paper_scissors",
                    tfds_data_dir=str(tmp_path / "empty")), tmp_path / "w")
  msg = str(e.value)
  assert "'rock_paper_scissors'" in msg and "--config.data.dir=" in msg
  assert "ConnectionError" in msg and "DIR/train/<class>" in msg
  assert not (tmp_path / "w").exists()
