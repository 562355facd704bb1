"""Listing, layouts, readability, seeded splits and split files (no TensorFlow)."""

import json
import os
import shutil

import numpy as np
import pytest

from rpsflax import data_files as df
from rpsflax.errors import DataError
from tests import data_factory as fac


def _prep(root, workdir=None, **kw):
  kw.setdefault("val_fraction", 0.0)
  return df.prepare_folder(root, workdir, **kw)


# -- layouts -------------------------------------------------------------------------------------

def test_class_layout_lists_sorted_and_ignores_hidden_and_other_files(tmp_path):
  fac.class_folders(tmp_path, {"dog": 2, "cat": 2})
  fac.write_image(tmp_path / "cat" / "nested" / "deep.PNG")       # recursive, any case
  (tmp_path / "cat" / ".hidden.png").write_bytes(b"x")            # hidden: ignored
  (tmp_path / "dog" / "notes.txt").write_text("not an image")      # other extension
  fac.write_image(tmp_path / ".ipynb_checkpoints" / "x.png")       # hidden folder
  listing = df.list_folder(tmp_path)
  assert listing.layout == "classes"
  assert listing.class_names == ["cat", "dog"]
  names = [os.path.relpath(f, tmp_path) for f in listing.files]
  assert names == ["cat/cat_0.png", "cat/cat_1.png", "cat/nested/deep.PNG",
                   "dog/dog_0.png", "dog/dog_1.png"]
  assert listing.classes == ["cat"] * 3 + ["dog"] * 2


def test_flat_layout_labels_from_leading_letters(tmp_path):
  for name in ["cat.12.jpg", "dog.3.JPG", "paper3.png", "rock-hires1.png", "scissors_x.bmp",
               "123.jpg"]:
    fac.write_image(tmp_path / name)
  listing = df.list_folder(tmp_path)
  assert listing.layout == "flat"
  got = dict(zip((os.path.basename(f) for f in listing.files), listing.classes))
  assert got == {"cat.12.jpg": "cat", "dog.3.JPG": "dog", "paper3.png": "paper",
                 "rock-hires1.png": "rock", "scissors_x.bmp": "scissors"}
  assert [os.path.basename(f) for f in listing.ignored] == ["123.jpg"]
  assert df.class_from_filename("rock-hires1.png") == "rock"
  assert df.class_from_filename("7.jpg") is None


def test_split_folder_discovery(tmp_path):
  # DIR/train (classes) + DIR/valid (flat) + Kaggle's unlabelled DIR/test
  fac.class_folders(tmp_path / "a" / "train", {"cat": 2, "dog": 2})
  fac.flat_folder(tmp_path / "a" / "valid", {"cat": 1, "dog": 1})
  fac.write_image(tmp_path / "a" / "test" / "1.jpg")
  found = df.find_split_folders(tmp_path / "a")
  assert sorted(found) == ["train", "validation"]
  assert (found["train"].layout, found["validation"].layout) == ("classes", "flat")
  # a labelled test folder is the validation split when there is no other ...
  fac.flat_folder(tmp_path / "b" / "Train", {"cat": 2, "dog": 2})
  fac.class_folders(tmp_path / "b" / "test", {"cat": 1, "dog": 1})
  assert sorted(df.find_split_folders(tmp_path / "b")) == ["train", "validation"]
  # ... and its own split beside a validation folder
  fac.class_folders(tmp_path / "b" / "val", {"cat": 1, "dog": 1})
  assert sorted(df.find_split_folders(tmp_path / "b")) == ["test", "train", "validation"]
  # DIR itself flat (Kaggle train) or with class folders directly
  fac.flat_folder(tmp_path / "c", {"cat": 2, "dog": 2})
  assert df.find_split_folders(tmp_path / "c")["train"].layout == "flat"
  fac.class_folders(tmp_path / "d", {"Cat": 2, "Dog": 2})
  assert df.find_split_folders(tmp_path / "d")["train"].class_names == ["Cat", "Dog"]


def test_class_order_is_alphabetical(tmp_path):
  fac.class_folders(tmp_path, {"scissors": 1, "rock": 1, "paper": 1})
  data = _prep(tmp_path)
  assert data.class_names == ["paper", "rock", "scissors"]
  paths, labels = data.splits["train"]
  assert [os.path.basename(os.path.dirname(p)) for p in paths] == ["paper", "rock", "scissors"]
  assert labels.tolist() == [0, 1, 2]


def test_shared_samples(shared_data, tmp_path):
  rps = _prep(shared_data / "rps", tmp_path / "w1")
  assert rps.class_names == ["paper", "rock", "scissors"]
  assert rps.report["layouts"] == {"train": "classes", "validation": "flat"}
  assert rps.report["num_examples"] == {"train": 180, "validation": 33}
  assert rps.report["counts"]["train"] == {"paper": 60, "rock": 60, "scissors": 60}
  assert sum(rps.report["counts"]["validation"].values()) == 33
  paths, labels = rps.splits["validation"]
  for p, l in zip(paths, labels):  # e.g. rock-hires1.png -> rock
    assert os.path.basename(p).startswith(rps.class_names[l])
  cd = _prep(shared_data / "catsdogs", tmp_path / "w2", holdout=20, val_fraction=0.25)
  assert cd.class_names == ["cat", "dog"]
  assert cd.report["layouts"] == {"train": "flat"}
  assert cd.report["num_examples"] == {"holdout": 20, "validation": 70, "train": 210}
  assert not cd.skipped


# -- readability ---------------------------------------------------------------------------------

def test_untidy_images_are_readable_and_routed(tmp_path):
  paths = fac.class_folders(tmp_path, {"a": 12, "b": 12}, untidy=True)
  infos, skipped = df.scan_images([str(p) for p in paths])
  assert not skipped and len(infos) == 24
  modes = {(i.format, i.mode, i.decoder) for i in infos.values()}
  assert ("JPEG", "CMYK", "pil") in modes and ("PNG", "I;16", "png") in modes
  assert ("JPEG", "L", "jpeg") in modes and ("GIF", "P", "pil") in modes
  assert ("BMP", "RGB", "pil") in modes and ("PNG", "RGBA", "png") in modes


def test_unreadable_files_get_reasons(tmp_path):
  broken = fac.broken_files(tmp_path)
  broken[fac.write_broken(tmp_path / "cat.trunc.png", "truncated")] = "truncated"
  infos, skipped = df.scan_images([str(p) for p in broken])
  assert not infos
  reasons = {os.path.basename(p): r for p, r in skipped}
  assert reasons["cat.broken_zero.jpg"] == "empty file (0 bytes)"
  assert "not an image" in reasons["cat.broken_text.jpg"]
  assert "truncated" in reasons["cat.broken_truncated.jpg"].lower()
  assert "cannot decode" in reasons["cat.broken_corrupt.jpg"]
  assert "cannot decode" in reasons["cat.trunc.png"]


def test_broken_files_are_skipped_reported_and_run_goes_on(tmp_path):
  fac.class_folders(tmp_path / "data", {"cat": 3, "dog": 3})
  broken = fac.broken_files(tmp_path / "data" / "cat")
  data = _prep(tmp_path / "data", tmp_path / "w")
  assert data.report["num_examples"] == {"train": 6}
  assert sorted(p for p, _ in data.skipped) == sorted(str(p) for p in broken)
  report = json.loads((tmp_path / "w" / df.REPORT_FILE).read_text())
  assert report["num_skipped"] == 4
  assert {os.path.basename(s["path"]) for s in report["skipped"]} == {
      f"cat.broken_{k}.jpg" for k in fac.BROKEN_KINDS}
  assert all(s["reason"] for s in report["skipped"])
  assert report["counts"]["train"] == {"cat": 3, "dog": 3}


# -- errors --------------------------------------------------------------------------------------

def _error(fn, *a, **kw) -> str:
  with pytest.raises(DataError) as e:
    fn(*a, **kw)
  return str(e.value)


def test_error_missing_folder(tmp_path):
  msg = _error(_prep, tmp_path / "nope")
  assert str(tmp_path / "nope") in msg and "--config.data.dir" in msg


def test_error_empty_folder(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "readme.txt").write_text("x")
  msg = _error(_prep, tmp_path)
  assert str(tmp_path / "train") in msg and "no image files" in msg


def test_error_class_folder_without_readable_image(tmp_path):
  fac.class_folders(tmp_path, {"cat": 2, "dog": 2})
  for f in (tmp_path / "dog").iterdir():
    f.unlink()
  fac.broken_files(tmp_path / "dog", prefix="dog")
  msg = _error(_prep, tmp_path)
  assert str(tmp_path / "dog") in msg and "unreadable" in msg
  (tmp_path / "bird").mkdir()  # an empty class folder
  shutil.rmtree(tmp_path / "dog")
  msg = _error(_prep, tmp_path)
  assert str(tmp_path / "bird") in msg and "no image files" in msg


def test_error_flat_class_all_unreadable(tmp_path):
  fac.flat_folder(tmp_path, {"dog": 3})
  fac.broken_files(tmp_path, prefix="cat")
  msg = _error(_prep, tmp_path)
  assert "'cat'" in msg and str(tmp_path) in msg


def test_error_validation_classes_differ(tmp_path):
  fac.class_folders(tmp_path / "train", {"cat": 2, "dog": 2})
  fac.class_folders(tmp_path / "validation", {"cat": 1, "fox": 1})
  msg = _error(_prep, tmp_path)
  assert str(tmp_path / "validation") in msg and "fox" in msg


def test_error_single_class_and_unlabelled(tmp_path):
  fac.class_folders(tmp_path / "one", {"cat": 2})
  assert "one class" in _error(_prep, tmp_path / "one")
  fac.write_image(tmp_path / "kaggle_test" / "1.jpg")
  msg = _error(_prep, tmp_path / "kaggle_test")
  assert "unlabelled" in msg and str(tmp_path / "kaggle_test") in msg


# -- splits --------------------------------------------------------------------------------------

def test_catsdogs_recipe_split_sizes_disjoint_reproducible():
  labels = np.repeat(np.arange(2, dtype=np.int32), 12500)
  a = df.draw_splits(labels, seed=0, holdout=1000, val_fraction=0.25, has_validation=False)
  assert {k: len(v) for k, v in a.items()} == {"holdout": 1000, "validation": 6000,
                                               "train": 18000}
  assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(25000))
  assert np.bincount(labels[a["holdout"]]).tolist() == [500, 500]  # stratified
  b = df.draw_splits(labels, seed=0, holdout=1000, val_fraction=0.25, has_validation=False)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  c = df.draw_splits(labels, seed=1, holdout=1000, val_fraction=0.25, has_validation=False)
  assert not np.array_equal(a["holdout"], c["holdout"])
  d = df.draw_splits(labels, seed=0, holdout=0, val_fraction=0.2, has_validation=True)
  assert list(d) == ["train"] and len(d["train"]) == 25000


def test_stratified_choice_exact_count_with_odd_classes():
  labels = np.asarray([0] * 7 + [1] * 5 + [2] * 1)
  for k in range(1, 13):
    got = df.stratified_choice(labels, k, df.seeded_rng(3))
    assert len(got) == k == len(set(got.tolist()))


def test_splits_written_reused_and_checked(tmp_path):
  data_dir, work = tmp_path / "data", tmp_path / "work"
  fac.flat_folder(data_dir, {"cat": 10, "dog": 10})
  first = _prep(data_dir, work, seed=5, holdout=4, val_fraction=0.25)
  sizes = {k: len(v[0]) for k, v in first.splits.items()}
  assert sizes == {"holdout": 4, "validation": 4, "train": 12}
  for name in sizes:
    lines = (work / "splits" / f"{name}.txt").read_text().splitlines()
    assert len(lines) == sizes[name]
    path, label = lines[0].split("\t")
    assert os.path.isfile(path) and int(label) in (0, 1)
  held = set(first.splits["holdout"][0])
  assert not held & (set(first.splits["train"][0]) | set(first.splits["validation"][0]))
  # a new image appears: the reused splits do not take it, the holdout stays put
  fac.write_image(data_dir / "cat.new.jpg")
  again = _prep(data_dir, work, seed=5, holdout=4, val_fraction=0.25)
  assert again.report["splits_reused"] and again.report["not_in_splits"] == 1
  for k in sizes:
    assert again.splits[k][0] == first.splits[k][0]
    assert np.array_equal(again.splits[k][1], first.splits[k][1])
  # a different seed (or holdout) on the same workdir is refused, naming the key
  assert "config.seed=6" in _error(_prep, data_dir, work, seed=6, holdout=4, val_fraction=0.25)
  assert "config.data.holdout=3" in _error(_prep, data_dir, work, seed=5, holdout=3,
                                           val_fraction=0.25)
  # a listed file is gone: a clear error naming the split file
  os.remove(first.splits["train"][0][0])
  msg = _error(_prep, data_dir, work, seed=5, holdout=4, val_fraction=0.25)
  assert str(work / "splits" / "train.txt") in msg and first.splits["train"][0][0] in msg


def test_reused_splits_follow_a_moved_data_folder(tmp_path):
  fac.flat_folder(tmp_path / "old", {"cat": 4, "dog": 4})
  first = _prep(tmp_path / "old", tmp_path / "w", holdout=2)
  shutil.move(tmp_path / "old", tmp_path / "new")
  again = _prep(tmp_path / "new", tmp_path / "w", holdout=2)
  assert again.report["splits_reused"]
  assert [p.replace("/new/", "/old/") for p in again.splits["holdout"][0]] == \
      first.splits["holdout"][0]


def test_no_write_without_workdir_or_on_other_processes(tmp_path):
  fac.flat_folder(tmp_path / "d", {"cat": 2, "dog": 2})
  _prep(tmp_path / "d", None)
  _prep(tmp_path / "d", tmp_path / "w", write=False)
  assert not (tmp_path / "w").exists()


# -- batching ------------------------------------------------------------------------------------

def test_batch_index_matrix_pads_and_slices_per_process():
  order = np.random.default_rng(0).permutation(10)
  one = df.batch_index_matrix(order, 4)
  assert one.shape == (3, 4) and one[-1].tolist()[2:] == [-1, -1]
  assert sorted(one[one >= 0].tolist()) == list(range(10))
  parts = [df.batch_index_matrix(order, 4, p, 2) for p in range(2)]
  assert all(p.shape == (3, 2) for p in parts)
  assert np.array_equal(np.concatenate(parts, axis=1), one)
  with pytest.raises(DataError, match="divide"):
    df.batch_index_matrix(order, 5, 0, 2)


def test_epoch_order_is_a_function_of_seed_and_epoch():
  assert np.array_equal(df.epoch_order(0, 3, 50), df.epoch_order(0, 3, 50))
  assert not np.array_equal(df.epoch_order(0, 3, 50), df.epoch_order(0, 4, 50))
  assert not np.array_equal(df.epoch_order(0, 3, 50), df.epoch_order(1, 3, 50))
  assert sorted(df.epoch_order(0, 3, 50).tolist()) == list(range(50))


def test_list_images_files_and_folders(tmp_path):
  fac.flat_folder(tmp_path / "f", {"b": 2, "a": 1})
  fac.write_image(tmp_path / "f" / "sub" / "z.gif")
  (tmp_path / "f" / "x.txt").write_text("x")
  single = fac.write_image(tmp_path / "one.png")
  got = df.list_images([tmp_path / "f", single, tmp_path / "f" / "a.0.jpg"])
  assert [os.path.relpath(p, tmp_path) for p in got] == [
      "f/a.0.jpg", "f/b.0.jpg", "f/b.1.jpg", "f/sub/z.gif", "one.png"]
  assert str(tmp_path / "missing") in _error(df.list_images, tmp_path / "missing")


def test_meta_json_marks_a_complete_split_set(tmp_path):
  fac.flat_folder(tmp_path / "d", {"cat": 4, "dog": 4})
  first = _prep(tmp_path / "d", tmp_path / "w", holdout=2)
  meta = json.loads((tmp_path / "w" / "splits" / "meta.json").read_text())
  assert meta["splits"] == ["holdout", "train"] and meta["class_names"] == ["cat", "dog"]
  (tmp_path / "w" / "splits" / "holdout.txt").unlink()
  assert "holdout.txt" in _error(_prep, tmp_path / "d", tmp_path / "w", holdout=2)
  (tmp_path / "w" / "splits" / "meta.json").unlink()  # an interrupted write: drawn again
  again = _prep(tmp_path / "d", tmp_path / "w", holdout=2)
  assert not again.report["splits_reused"]
  assert again.splits["holdout"][0] == first.splits["holdout"][0]
