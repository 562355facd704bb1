"""The input-pipeline figures on a real folder: decode once, cached and uncached epochs, and
decoding's scaling with workers (`decode_scaling`, also called by the device check).

Nothing here needs TensorFlow: without it the pipeline decodes with PIL
(rpsflax/decode_pool.py) and the scaling figure skips the 'tf' decoder.
"""

import os
import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np

from rpsflax import config_base, data_files, decode_pool, pil_decode, tf_decode
from rpsflax.benchmark import environment
from rpsflax.errors import DataError

DECODERS = ("pil", "pil_threads", "tf")


def worker_counts(cpus: Optional[int] = None) -> tuple[int, ...]:
  """1, 2, 4, ... up to the host's CPUs, and the CPU count itself: the default worker list."""
  cpus = cpus or os.cpu_count() or 1
  counts = [1]
  while counts[-1] * 2 <= cpus:
    counts.append(counts[-1] * 2)
  return tuple(counts) if counts[-1] == cpus else (*counts, cpus)


def _input_pipeline():
  """rpsflax.input_pipeline, imported on demand: it imports JAX, which decode_scaling need not
  pay."""
  from rpsflax import input_pipeline  # noqa: PLC0415
  return input_pipeline


def decode_scaling(paths: Sequence[str], image_size, resize_method: str = "nearest",
                   workers: Sequence[int] = (1, 2, 4, 8, 16),
                   decoders: Sequence[str] = DECODERS, *, repeats: int = 1,
                   max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS,
                   log: Callable[[str], None] = lambda s: None) -> dict:
  """Images/s decoding `paths` to `image_size` (int or (h, w)) with each worker count.

  decoders:
    'pil'          what a run does (config.data.decoder='pil'; rpsflax/decode_pool.py): one worker
                   decodes in-process, 2+ in worker processes, the workers' start included;
    'pil_threads'  PIL in threads alone (the fallback where processes cannot start);
    'tf'           tf.data's map with num_parallel_calls = workers (skipped, with the reason,
                   where TensorFlow does not import).
  Worker counts above os.cpu_count() are not run: they are listed under 'above_host_cpus'.
  Every row decodes every path into a uint8 array, after one untimed read of the files (the
  page cache warm for all rows); with `repeats` > 1 the rows run round-robin and each figure
  is its median. Returns a JSON-ready dict:
    images_per_sec, speedup (vs. 1 worker), load_average (the 1-minute load when each row
    started, median): {decoder: {str(workers): value}}; num_images, image_size,
    resize_method, host_cpus, workers (run), above_host_cpus, modes ({decoder: how its
    workers run}), skipped ({decoder: reason}).
  """
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  paths = np.asarray([os.fspath(p) for p in paths], dtype=object)
  cpus = os.cpu_count() or 1
  run = sorted({int(w) for w in workers if 0 < int(w) <= cpus})
  above = sorted({int(w) for w in workers if int(w) > cpus})
  unknown = [d for d in decoders if d not in DECODERS]
  if unknown:
    raise ValueError(f"decoders {unknown}: use some of {DECODERS}")
  skipped, codes = {}, None
  wanted = list(decoders)
  if "tf" in wanted:
    why = environment.tensorflow_missing()
    if why:
      skipped["tf"] = why
      wanted.remove("tf")
    else:  # the decoder of each file (tf.io or PIL), read once, untimed
      infos, bad = data_files.scan_images(list(paths), max_pixels=max_pixels)
      if bad:
        raise DataError(f"{len(bad)} unreadable images, e.g. {bad[0][0]}: {bad[0][1]}; "
                        "time readable ones")
      codes = tf_decode.decoder_codes([infos[p] for p in paths])
  for p in paths:  # the page cache warm: every row reads from memory
    with open(p, "rb") as f:
      f.read()

  def decode(decoder: str, w: int, out: np.ndarray) -> list:
    if decoder == "tf":
      return tf_decode.decode_files(paths, codes, size, resize_method, w, out,
                                    progress_min=len(paths) + 1, max_pixels=max_pixels)
    return decode_pool.decode_files(paths, size, resize_method, w, out, max_pixels=max_pixels,
                                    processes=decoder == "pil" and w > 1, fallback=False,
                                    progress_min=len(paths) + 1)  # no progress bar

  out = np.zeros((len(paths), *size, 3), np.uint8)
  seconds = {d: {w: [] for w in run} for d in wanted}
  loads = {d: {w: [] for w in run} for d in wanted}
  for _ in range(max(1, int(repeats))):
    for d in list(seconds):
      for w in run:
        loads[d][w].append(os.getloadavg()[0])
        t0 = time.perf_counter()
        try:
          failed = decode(d, w, out)
        except decode_pool.PoolFailed as e:  # a run would decode in threads: say so, go on
          skipped[d] = f"worker processes failed ({e}); runs decode in threads instead"
          del seconds[d], loads[d]
          break
        seconds[d][w].append(time.perf_counter() - t0)
        if failed:
          raise DataError(f"{paths[failed[0][0]]}: {failed[0][1]}; time readable images")
        log(f"decode scaling: {d}, {w} workers: {len(paths) / seconds[d][w][-1]:,.0f} img/s "
            f"(load average {loads[d][w][-1]:.2f})")
  rate = {d: {str(w): len(paths) / statistics.median(s) for w, s in by_w.items()}
          for d, by_w in seconds.items()}
  return {
      "num_images": len(paths), "image_size": list(size), "resize_method": resize_method,
      "host_cpus": cpus, "workers": run, "above_host_cpus": above, "repeats": max(1, int(repeats)),
      "images_per_sec": rate,
      "speedup": {d: {w: r / by_w[str(run[0])] for w, r in by_w.items()}
                  for d, by_w in rate.items()} if run and run[0] == 1 else {},
      "load_average": {d: {str(w): statistics.median(v) for w, v in by_w.items()}
                       for d, by_w in loads.items()},
      "modes": {d: _mode(d) for d in seconds},
      "skipped": skipped,
  }


def _mode(decoder: str) -> str:
  return {"pil": f"1 worker in-process, 2+ in worker processes ({decode_pool.__name__})",
          "pil_threads": f"threads ({pil_decode.__name__})",
          "tf": "tf.data map(num_parallel_calls=workers)"}[decoder]


def folder_datasets(data_dir, image_size=224, batch_size=32, *, cache: bool = True,
                    seed: int = 0, resize_method: str = "nearest", val_fraction: float = 0.0,
                    num_parallel_calls: int = -1):
  """A folder's input_pipeline.Datasets, checked and split, nothing decoded or written yet:
  time `ds.prepare()` (decode-once cache) and `ds.train_batches(epoch)` separately."""
  c = config_base.get_config()
  c.seed, c.batch_size, c.eval_batch_size = seed, batch_size, batch_size
  c.data.dir, c.data.image_size, c.data.cache = os.fspath(data_dir), image_size, cache
  c.data.resize_method, c.data.val_fraction = resize_method, val_fraction
  c.data.num_parallel_calls = num_parallel_calls
  return _input_pipeline().create_datasets(c, None, process_index=0, process_count=1,
                                           check_head=False)


def bench_pipeline(config, data_dir: str, *, repeats: int, epochs: int = 2) -> dict:
  """Decode-once, cached-epoch and uncached-epoch images/s on a real folder (train split)."""
  kw = dict(image_size=config.data.image_size, batch_size=int(config.batch_size),
            resize_method=config.data.resize_method,
            num_parallel_calls=config.data.num_parallel_calls)

  def epoch_rate(ds, epoch):
    t0, n = time.perf_counter(), 0
    for batch in ds.train_batches(epoch):
      n += int(batch["mask"].sum())
    return n / (time.perf_counter() - t0)

  decode, cached, uncached, n = [], [], [], 0
  for r in range(repeats):
    ds = folder_datasets(data_dir, cache=True, **kw)
    n = ds.num_examples["train"]
    t0 = time.perf_counter()
    ds.prepare(["train"])
    decode.append(n / (time.perf_counter() - t0))
    cached.append(statistics.median(epoch_rate(ds, e) for e in range(epochs)))
    del ds
  ds = folder_datasets(data_dir, cache=False, **kw)
  for r in range(repeats):
    uncached.append(epoch_rate(ds, r))
  out = {"decode_images_per_sec": statistics.median(decode),
         "cached_epoch_images_per_sec": statistics.median(cached),
         "uncached_epoch_images_per_sec": statistics.median(uncached),
         "pipeline_num_images": n,
         "samples": {"decode": decode, "cached_epoch": cached, "uncached_epoch": uncached}}
  out["pipeline_images_per_sec"] = (out["cached_epoch_images_per_sec"] if config.data.cache
                                    else out["uncached_epoch_images_per_sec"])
  return out
