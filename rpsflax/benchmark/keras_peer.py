"""Keras 3 as a peer of the JAX figures: the config's Keras spec, and the worker process
(rpsflax/benchmark/keras_worker.py) seen from here, one timed round per `round()` call.

In a subprocess: started before JAX takes the accelerator, and TensorFlow's memory is freed
when it ends.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from flax import traverse_util

from rpsflax import models, optim, preprocess, xla_cpu
from rpsflax.benchmark import timing

KERAS_BACKENDS = ("tensorflow", "jax")  # the tutorials' Keras, and the peer a JAX user would pick


def keras_spec(config) -> dict:
  """What the Keras worker needs (rpsflax.keras_models.classifier): the model, which layers
  train (a layer trains if any of its weights does; patterns are matched on kernel/bias paths),
  whether BatchNorm runs in training mode, the optimizer, as JSON. The Keras application and
  preprocessing mode come from the backbone's registry entry."""
  alpha = float(config.model.alpha)
  spec = models.get_spec(config.model.name)
  backbone = spec.layer_names(False, alpha)
  head = [f"hidden_{i}" for i in range(len(config.head.hidden))] + ["predictions"]
  tree = {"backbone": {n: {"kernel": 0, "bias": 0} for n in backbone},
          "head": {n: {"kernel": 0, "bias": 0} for n in head}}
  labels = traverse_util.flatten_dict(optim.param_labels(tree, config))
  trainable = {}
  for (part, layer, _), label in labels.items():
    trainable[layer] = trainable.get(layer, False) or label != optim.FROZEN
  return {"model": config.model.name, "keras_application": spec.keras_application,
          "keras_kwargs": spec.keras_kwargs(alpha), "dtype": config.model.dtype, "alpha": alpha,
          "bn_trainable": bool(config.model.bn_trainable),
          "image_size": int(config.data.image_size),
          "preprocess": preprocess.PREPROCESS_MODES[config.preprocess],
          "head": config.head.to_dict(), "optim": config.optim.to_dict(),
          "lr_groups": [list(g) for g in config.lr_groups], "backbone": backbone,
          "trainable": trainable}


class KerasPeer:
  """Keras 3 timing the same model in a worker process, one timed round per `round()` call, so
  its rounds interleave with the JAX figures' (see timing.interleaved): load on a shared machine
  then hits both alike, and speed-ups are medians of per-round ratios.

  backend='jax' runs Keras on JAX with XLA's default flags (what a user of Keras on JAX gets;
  this project's XLA:CPU flags are switched off in that worker). The worker is started before
  JAX takes the accelerator; `close()` returns its details (compile time, versions, devices).
  """

  def __init__(self, config, host_batch: dict, *, steps: int, warmup: int,
               min_seconds: float = timing.MIN_SECONDS, backend: str = "tensorflow"):
    self.backend = backend
    self.tmp = tempfile.TemporaryDirectory(prefix="rpsflax_keras_")
    tmp = self.tmp.name
    np.savez(os.path.join(tmp, "batch.npz"), image=host_batch["image"],
             label=host_batch["label"])
    spec = {"config": keras_spec(config), "batch": os.path.join(tmp, "batch.npz"),
            "steps": steps, "warmup": warmup, "min_seconds": min_seconds}
    with open(os.path.join(tmp, "spec.json"), "w") as f:
      json.dump(spec, f)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # forced host devices are for JAX only
    env["KERAS_BACKEND"] = backend
    env[xla_cpu.OPT_OUT_ENV] = "0"  # Keras on JAX as its users run it: XLA's default flags
    self.stderr = open(os.path.join(tmp, "stderr.txt"), "w+")
    self.proc = subprocess.Popen([sys.executable, "-m", "rpsflax.benchmark.keras_worker",
                                  os.path.join(tmp, "spec.json")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
    self.ready = self._reply()  # built, compiled and warmed up

  def _reply(self) -> dict:
    for line in self.proc.stdout:  # protocol lines start with '@@'; anything else is noise
      if line.startswith("@@"):
        return json.loads(line[2:])
    self.stderr.seek(0)
    raise RuntimeError(f"Keras ({self.backend}) worker failed ({self.proc.wait()}): "
                       f"{self.stderr.read()[-2000:]}")

  def _send(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._reply()

  def round(self) -> dict:
    """One timed run of each Keras figure: {'train': img/s, 'forward': img/s}."""
    return self._send("round")

  def close(self) -> dict:
    try:
      return {**self.ready, **self._send("done")}
    finally:
      self.proc.wait(timeout=60)
      self.stderr.close()
      self.tmp.cleanup()
