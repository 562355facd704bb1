"""The input-pipeline figures (TensorFlow) on a real folder: decode once, cached and uncached
epochs."""

import statistics
import time


def bench_pipeline(config, data_dir: str, *, repeats: int, epochs: int = 2) -> dict:
  """Decode-once, cached-epoch and uncached-epoch images/s on a real folder (train split)."""
  # Here, not at the top: input_pipeline imports TensorFlow, and the benchmark runs without it
  # (the caller checks environment.tensorflow_missing() first).
  from rpsflax import input_pipeline  # noqa: PLC0415

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
    ds = input_pipeline.folder_datasets(data_dir, cache=True, **kw)
    n = ds.num_examples["train"]
    t0 = time.perf_counter()
    ds.prepare(["train"])
    decode.append(n / (time.perf_counter() - t0))
    cached.append(statistics.median(epoch_rate(ds, e) for e in range(epochs)))
    del ds
  ds = input_pipeline.folder_datasets(data_dir, cache=False, **kw)
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
