"""Decoding that scales with cores (issue 21, item 4): worker processes and PIL's own resize give
the pixels of Keras' `load_img`, the files a worker cannot read are named as in threads, and
processes that cannot start or die leave the rest to threads. Speed is the benchmark's
(`decode_scaling`), never asserted here.

Tiny images, a few dozen files: the whole module takes a few seconds (worker start-up included).
"""

import json
import sys

import numpy as np
import pytest
from absl import logging as absl_logging
from PIL import Image

import data_factory
from rpsflax import decode_pool, errors, pil_decode, pil_image
from rpsflax.benchmark import cli as bench_cli
from rpsflax.benchmark import pipeline, table

SIZES = [(32, 32), (61, 50)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Every mode the data factory writes (RGBA, L, P, LA, I;16, CMYK, GIF, BMP, ...) and one
  broken file of each kind, shuffled together."""
  root = tmp_path_factory.mktemp("decode")
  paths = data_factory.class_folders(root / "ok", {"a": 13, "b": 13}, untidy=True)
  paths += list(data_factory.broken_files(root / "broken"))
  order = np.random.default_rng(0).permutation(len(paths))
  return np.asarray([str(paths[i]) for i in order], dtype=object)


def gathered(path, size) -> np.ndarray:
  """The pixels as this project decoded them before item 4: the full image as an array, then
  NumPy's gather of PIL's nearest rows and columns (tests/test_no_tensorflow.py holds that to the
  tf.data decoder, tests/test_decode_keras.py that one to Keras)."""
  with open(path, "rb") as f:
    return data_factory.nearest_gather(pil_decode.rgb(f.read()), size)


def unreadable(paths) -> set:
  return {i for i, p in enumerate(paths) if "broken" in p}


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_processes_and_threads_give_the_same_pixels_as_before(files, size):
  """Every row in its place, bit for bit, and the same (index, reason) for unreadable files."""
  by_threads = np.full((len(files), *size, 3), 7, np.uint8)
  by_processes = np.full_like(by_threads, 9)
  failed_t = decode_pool.decode_files(files, size, "nearest", 2, by_threads, processes=False)
  failed_p = decode_pool.decode_files(files, size, "nearest", 2, by_processes, processes=True)
  assert {i for i, _ in failed_p} == unreadable(files)
  assert failed_p == failed_t and all(r.startswith("cannot decode: ") for _, r in failed_p)
  for i, path in enumerate(files):
    if i not in unreadable(files):
      want = gathered(path, size)
      np.testing.assert_array_equal(by_threads[i], want, err_msg=path)
      np.testing.assert_array_equal(by_processes[i], want, err_msg=path)


def test_pil_resize_is_the_gather_on_real_shapes():
  """pil_image.load_image lets PIL resize (with the GIL released); the gather it replaces reads the
  same rows and columns, shown on 2-D images of the sizes real data has (500x375 JPEGs to
  150 and 224, RPS' 300x300 to 224 and 32, up-sampling too)."""
  rng = np.random.default_rng(1)
  for h, w in [(375, 500), (300, 300), (333, 499), (7, 5), (150, 150)]:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for size in [(150, 150), (224, 224), (32, 32), (480, 640), (h, w)]:
      by_pil = np.asarray(pil_image.resize_image(Image.fromarray(image), size, "nearest"))
      np.testing.assert_array_equal(by_pil, data_factory.nearest_gather(image, size),
                                    err_msg=f"{(h, w)} -> {size}")


def test_decoding_matches_keras_load_img(files):
  """The processes' pixels are Keras' own (16-bit PNGs aside: README, Data)."""
  keras_utils = pytest.importorskip("keras.utils")
  size = (24, 40)
  out = np.zeros((len(files), *size, 3), np.uint8)
  decode_pool.decode_files(files, size, "nearest", 2, out, processes=True)
  compared = 0
  for i, path in enumerate(files):
    if i in unreadable(files) or Image.open(path).mode == "I;16":
      continue
    img = keras_utils.load_img(path, target_size=size, interpolation="nearest")
    np.testing.assert_array_equal(out[i], keras_utils.img_to_array(img).astype(np.uint8),
                                  err_msg=path)
    compared += 1
  assert compared >= 20


def test_smooth_methods_are_pils_filters(files):
  """PIL's own filters (Keras-exact); in processes for one of them (the same function runs)."""
  path = next(p for p in files if p.endswith(".png") and "broken" not in p)
  for method in ("bilinear", "bicubic", "area", "lanczos"):
    with Image.open(path) as im:
      want = np.asarray(im.convert("RGB").resize((40, 24), pil_image.PIL_FILTERS[method]))
    out = np.zeros((1, 24, 40, 3), np.uint8)
    assert not decode_pool.decode_files(np.asarray([path], dtype=object), (24, 40), method, 2,
                                        out, processes=method == "area")
    np.testing.assert_array_equal(out[0], want, err_msg=method)


def _warnings(monkeypatch) -> list:
  said = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: said.append(msg % a))
  return said


def test_processes_that_cannot_start_leave_it_to_threads(files, monkeypatch):
  said = _warnings(monkeypatch)
  monkeypatch.setattr(decode_pool, "worker_command", lambda spec: ["/nonexistent/python"])
  size = (24, 40)
  out = np.zeros((len(files), *size, 3), np.uint8)
  failed = decode_pool.decode_files(files, size, "nearest", 2, out, processes=True)
  assert {i for i, _ in failed} == unreadable(files)
  for i in set(range(len(files))) - unreadable(files):
    np.testing.assert_array_equal(out[i], gathered(files[i], size))
  assert len(said) == 1 and "cannot start a decoding process" in said[0]
  with pytest.raises(decode_pool.PoolFailed, match="cannot start"):
    decode_pool.decode_files(files, size, "nearest", 2, out, processes=True, fallback=False)


# A worker that answers three images, then dies as an out-of-memory kill would.
_DIES = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
         "from rpsflax import decode_worker, pil_image; load, n = pil_image.load_image, [0]\n"
         "def dying(*a):\n"
         "  n[0] += 1\n"
         "  if n[0] > 3: os._exit(9)\n"
         "  return load(*a)\n"
         "pil_image.load_image = dying; decode_worker.main(sys.argv[2])")


def test_a_worker_that_dies_leaves_the_rest_to_threads(files, monkeypatch):
  said = _warnings(monkeypatch)
  monkeypatch.setattr(decode_pool, "worker_command", lambda spec: [
      sys.executable, "-c", _DIES, decode_pool.PACKAGE_ROOT, json.dumps(spec)])
  size = (32, 32)
  out = np.zeros((len(files), *size, 3), np.uint8)
  failed = decode_pool.decode_files(files, size, "nearest", 2, out, processes=True)
  assert {i for i, _ in failed} == unreadable(files) and failed == sorted(failed)
  for i in set(range(len(files))) - unreadable(files):
    np.testing.assert_array_equal(out[i], gathered(files[i], size))
  assert len(said) == 1 and "exit status 9" in said[0], said


def test_few_images_or_one_worker_decode_in_threads(files, monkeypatch):
  """Below PROCESS_MIN_IMAGES (or with one worker) no process is started: with a worker
  command that cannot start, nothing is logged."""
  said = _warnings(monkeypatch)
  monkeypatch.setattr(decode_pool, "worker_command", lambda spec: ["/nonexistent/python"])
  out = np.zeros((len(files), 8, 8, 3), np.uint8)
  assert len(files) < decode_pool.PROCESS_MIN_IMAGES
  decode_pool.decode_files(files, (8, 8), "nearest", 2, out)
  decode_pool.decode_files(files, (8, 8), "nearest", 1, out, processes=None)
  assert not said


def test_decode_scaling_reports_every_decoder_and_worker_count(files):
  good = [p for i, p in enumerate(files) if i not in unreadable(files)]
  cpus = pipeline.os.cpu_count()
  r = pipeline.decode_scaling(good, 16, workers=(1, 2, cpus + 1), repeats=1)
  json.dumps(r)  # JSON-ready
  run = [w for w in (1, 2) if w <= cpus]
  assert r["workers"] == run and r["above_host_cpus"] == [cpus + 1]
  assert r["num_images"] == len(good) and r["image_size"] == [16, 16]
  measured = {"pil", "pil_threads"} | ({"tf"} if "tf" not in r["skipped"] else set())
  assert set(r["images_per_sec"]) == measured == set(r["load_average"]) == set(r["modes"])
  for d in measured:
    assert list(r["images_per_sec"][d]) == [str(w) for w in run]
    assert all(v > 0 for v in r["images_per_sec"][d].values())
    assert r["speedup"][d]["1"] == 1.0
  text = "\n".join(table.decode_scaling_lines(r))
  assert "pil_threads" in text and f"{cpus + 1}" in text
  with pytest.raises(errors.DataError, match="broken"):
    pipeline.decode_scaling(files, 16, workers=(1,), decoders=("pil",))


def test_the_tf_row_times_tf_data(files, monkeypatch):
  """decode_scaling's 'tf' row decodes with tf.data (tf_decode), not with the PIL workers that
  runs use by default (config.data.decoder='pil')."""
  if pipeline.environment.tensorflow_missing():
    pytest.skip("TensorFlow is not installed here: no tf row")
  good = [p for i, p in enumerate(files) if i not in unreadable(files)]

  def no_pil(*args, **kwargs):
    raise AssertionError("the tf row decoded with PIL's decode_pool")
  monkeypatch.setattr(decode_pool, "decode_files", no_pil)
  r = pipeline.decode_scaling(good, 16, workers=(1,), decoders=("tf",))
  assert r["skipped"] == {} and r["images_per_sec"]["tf"]["1"] > 0


def test_worker_list_flag():
  assert bench_cli.decode_workers([]) == []
  assert bench_cli.decode_workers(["1", "2", "8"]) == [1, 2, 8]
  assert bench_cli.decode_workers(["auto"]) == list(pipeline.worker_counts())
  assert pipeline.worker_counts(16) == (1, 2, 4, 8, 16)
  assert pipeline.worker_counts(12) == (1, 2, 4, 8, 12)
  for bad in (["0"], ["two"]):
    with pytest.raises(bench_cli.flags.Error, match="--decode_workers"):
      bench_cli.decode_workers(bad)


def test_a_stray_print_in_a_worker_does_not_corrupt_the_pixels(files, monkeypatch):
  """The worker's stdout is the pixel stream's copy; its fd 1 goes to stderr."""
  noisy = ("import sys; sys.path.insert(0, sys.argv[1]); from rpsflax import decode_worker, "
           "pil_image; load = pil_image.load_image\n"
           "def chatty(*a):\n"
           "  print('hello from a worker' * 50, flush=True)\n"
           "  return load(*a)\n"
           "pil_image.load_image = chatty; decode_worker.main(sys.argv[2])")
  monkeypatch.setattr(decode_pool, "worker_command", lambda spec: [
      sys.executable, "-c", noisy, decode_pool.PACKAGE_ROOT, json.dumps(spec)])
  out = np.zeros((len(files), 8, 8, 3), np.uint8)
  decode_pool.decode_files(files, (8, 8), "nearest", 2, out, processes=True, fallback=False)
  i = next(i for i in range(len(files)) if i not in unreadable(files))
  np.testing.assert_array_equal(out[i], gathered(files[i], (8, 8)))


def test_a_sixteen_bit_png_keeps_the_high_byte_in_processes(tmp_path):
  grey = np.asarray(Image.fromarray(data_factory.image_array((20, 30), 3)).convert("L"),
                    np.uint16)
  path = tmp_path / "g16.png"
  Image.fromarray(grey * 257 + 3).save(path)
  out = np.zeros((1, 20, 30, 3), np.uint8)
  assert not decode_pool.decode_files(np.asarray([str(path)], dtype=object), (20, 30),
                                      "nearest", 2, out, processes=True)
  np.testing.assert_array_equal(out[0], np.repeat(grey.astype(np.uint8)[..., None], 3, -1))
