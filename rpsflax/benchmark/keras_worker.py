"""The Keras worker process: `python -m rpsflax.benchmark.keras_worker SPEC.json`, started by
keras_peer.KerasPeer with KERAS_BACKEND set.

It builds, compiles and warms up the Keras model of the spec (rpsflax.keras_models), then times
one round per 'round' line on stdin (replies are '@@' + JSON lines on stdout) until 'done'.
No JAX here unless Keras runs on it: this process must not take the accelerator for JAX.
"""

import json
import sys
import time

import numpy as np

from rpsflax import keras_models
from rpsflax.benchmark import timing


def main(spec_path: str) -> None:
  with open(spec_path) as f:
    spec = json.load(f)
  import keras  # noqa: PLC0415 (here, not at the top: KERAS_BACKEND decides what it imports)

  on_tf = keras.backend.backend() == "tensorflow"
  if on_tf:
    import tensorflow as tf  # noqa: PLC0415  (only when Keras runs on it)

    for gpu in tf.config.list_physical_devices("GPU"):
      tf.config.experimental.set_memory_growth(gpu, True)
  cfg = spec["config"]
  if cfg["dtype"] == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  elif cfg["dtype"] == "float16":
    keras.mixed_precision.set_global_policy("mixed_float16")
  model, base = keras_models.classifier(cfg)
  data = np.load(spec["batch"])
  x = keras_models.preprocess(cfg["preprocess"], data["image"])
  y = data["label"].astype(np.float32 if cfg["head"]["num_classes"] == 1 else np.int32)
  if on_tf:  # held as tensors, as a tf.data pipeline would hand them over
    x, y = tf.constant(x), tf.constant(y)
  else:
    import jax  # noqa: PLC0415  (Keras runs on JAX in this worker)

    x, y = jax.device_put(x), jax.device_put(y)
  b = len(data["label"])

  def reply(obj):
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()

  t0 = time.perf_counter()
  model.train_on_batch(x, y)  # builds and compiles the train function
  base.predict_on_batch(x)
  compile_s = time.perf_counter() - t0
  calls = {"train": lambda: model.train_on_batch(x, y), "forward": lambda: base.predict_on_batch(x)}
  per_call = {}
  for name, call in calls.items():
    per_call[name] = float("inf")
    for _ in range(spec["warmup"]):
      t = time.perf_counter()
      np.asarray(call())
      per_call[name] = time.perf_counter() - t
  reply({"keras_compile_seconds": compile_s})
  for line in sys.stdin:
    if line.strip() != "round":
      break
    rates = {}
    for name, call in calls.items():
      if per_call[name] < timing.SETTLE_MAX_SECONDS:  # the JAX figures' rule, alike for both:
        np.asarray(call())  # one untimed call after the other process's work, unless too dear
      # Keras returns host values: converting one means the step has finished.
      rates[name] = timing.time_once(call, spec["steps"], b, spec["min_seconds"],
                                     block=np.asarray)
    reply(rates)
  reply({"keras_jit_compile": bool(model.jit_compile),
         "keras_trainable_weights": len(model.trainable_weights),
         "keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
         "tensorflow_version": tf.__version__ if on_tf else None,
         "keras_devices": ([d.name for d in tf.config.list_logical_devices()] if on_tf
                           else [str(d) for d in jax.devices()])})


if __name__ == "__main__":
  main(sys.argv[1])
