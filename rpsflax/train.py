"""Training and evaluation: TrainState, pure jit-compiled steps, and the epoch loop.

- `make_train_step` / `make_eval_step` build pure functions of (state, batch[, rng]); they run
  augmentation and preprocessing on device and return metrics as on-device sums.
- Freezing is free: the step splits the parameters by label (`rpsflax.optim`) and differentiates
  only the trainable ones; frozen ones are closed over as constants (so a frozen backbone costs
  one forward pass) and carried into the new state untouched (bit-identical).
- Sharding: a 1-D `Mesh` over all devices with axis 'data'; batches are sharded on their first
  axis, the state is replicated, and `jit` inserts the cross-device reductions.
- Determinism: the data order is a function of (seed, epoch) (input pipeline) and every random
  number of step s comes from fold_in(train_rng, s), so a run resumed at any step replays exactly.
- Only process 0 writes logs, TensorBoard events, history and reports; every process takes part
  in checkpointing (Orbax coordinates).
"""

import itertools
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Iterable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from rpsflax import checkpoint as ckpt_lib
from rpsflax import config_check, errors, models, optim, preprocess
from rpsflax.errors import NonFiniteError
from rpsflax.sharding import (BATCH_KEYS, DATA_AXIS, check_batch_sizes, data_sharding,  # noqa: F401
                              make_mesh, pad_batch, prefetch_to_mesh, replicated, shard_batch)

_NO_STEP = np.iinfo(np.int32).max  # "no non-finite step seen" in the min-accumulated metric



class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT/SIGTERM during training: a checkpoint of the current step was saved first."""

  def __init__(self, message: str, signum: int = signal.SIGINT):
    super().__init__(message)
    self.signum = int(signum)  # main exits with 128 + signum, as a shell reports a signal


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. The optimizer itself is rebuilt from the config
  (`optim.create_optimizer`), so a checkpoint is plain arrays."""
  step: jax.Array          # int32 scalar: number of optimizer steps taken
  params: Any              # the model's 'params' collection
  opt_state: Any           # optax.multi_transform state (no entries for frozen params)


# ---------------------------------------------------------------------------------------------
# State

_jitted_inits: dict = {}


def init_params(config, model, rng) -> dict:
  """Random initial parameters for `config.data.image_size` inputs.

  jit-compiled (op-by-op init of VGG16 is slower on a CPU), and cached per model so that a
  process that builds the same model twice compiles once.
  """
  size = config.data.image_size
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  key = repr(model)
  if key not in _jitted_inits:
    _jitted_inits[key] = jax.jit(lambda rng, x: model.init(rng, x, train=False)["params"])
  return _jitted_inits[key](rng, x)


def create_train_state(config, model, rng=None, params=None) -> TrainState:
  """A fresh TrainState; `params` (e.g. with loaded weights) or random ones from `rng`."""
  if params is None:
    if rng is None:
      raise ValueError("create_train_state: pass rng or params")
    params = init_params(config, model, rng)
  tx = optim.create_optimizer(config, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(config, model, sharding=None) -> TrainState:
  """Shapes and dtypes of `create_train_state` (nothing computed): a checkpoint restore target."""
  abstract = jax.eval_shape(lambda rng: create_train_state(config, model, rng),
                            jax.random.PRNGKey(0))
  return ckpt_lib.abstract_like(abstract, sharding) if sharding is not None else abstract


# ---------------------------------------------------------------------------------------------
# Loss and metrics

def per_example_loss(logits, labels, num_classes: int):
  """(loss [B], predicted class [B]): softmax cross-entropy, or sigmoid BCE for num_classes == 1.

  Computed from logits (Keras computes from probabilities, clipped at 1e-7; the same loss
  wherever that clip does not bite, and stable where it would).
  """
  labels = labels.astype(jnp.int32)
  if num_classes == 1:
    z = logits[:, 0]
    loss = optax.sigmoid_binary_cross_entropy(z, labels.astype(jnp.float32))
    pred = (z > 0).astype(jnp.int32)  # sigmoid(z) > 0.5, Keras' binary accuracy threshold
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return loss, pred


def num_outputs(config) -> int:
  """Rows/columns of the confusion matrix: 2 for a sigmoid head."""
  return max(2, int(config.head.num_classes))


def prepare_images(config, images, rng=None):
  """uint8 batch -> the model's input: augmentation (when rng is given and enabled), then the
  config's preprocessing, in the compute dtype. Shared by the steps, cached features and the
  benchmark so all three see exactly the same input."""
  dtype = models.compute_dtype(config)
  if rng is not None and config.augment.enabled:
    from rpsflax import augment  # noqa: PLC0415

    images = augment.augment_batch(rng, images, config.augment)
  return preprocess.get_preprocessor(config.preprocess)(images, dtype=dtype)


def make_train_step(config, model, *, on_features: bool = False) -> Callable:
  """train_step(state, batch, rng) -> (state, metrics), pure; jit it (see `jit_train_step`).

  `rng` is the run's training key; the step folds in state.step, so it is the same every call.
  metrics: loss_sum (float32), correct, count (int32, real examples only), nonfinite (1 when the
  loss or gradient norm is NaN/inf) and first_nonfinite_step.
  on_features=True: batch['image'] holds cached backbone features (rpsflax.features) and only
  the head runs (no augmentation, no preprocessing).
  """
  config = config.copy_and_resolve_references()  # read at trace time: later edits must not leak in
  num_classes = int(config.head.num_classes)

  def train_step(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(step_rng)
    x = batch["image"] if on_features else prepare_images(config, batch["image"], aug_rng)
    labels = batch["label"]
    mask = batch["mask"]
    maskf = mask.astype(jnp.float32)

    # Labels and optimizer are pure functions of (config, param structure): built at trace time.
    label_tree = optim.param_labels(state.params, config)
    tx = optim.create_optimizer(config, state.params)
    trainable, frozen = optim.split_by_label(state.params, label_tree)

    def loss_fn(trainable_params):
      params = optim.merge(trainable_params, frozen)
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_rng},
                           method="classify" if on_features else None)
      loss, pred = per_example_loss(logits, labels, num_classes)
      loss_sum = jnp.sum(loss * maskf)
      count = jnp.sum(maskf)
      return loss_sum / jnp.maximum(count, 1.0), (loss_sum, pred)

    (loss, (loss_sum, pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)

    # multi_transform wants the full tree; the zeros for frozen leaves feed set_to_zero and are
    # dead code after it, so XLA drops them.
    zeros = {k: jnp.zeros_like(v) for k, v in frozen.items()}
    updates, opt_state = tx.update(optim.merge(grads, zeros), state.opt_state, state.params)
    flat_updates = traverse_util.flatten_dict(updates)
    new_trainable = {k: (v + flat_updates[k]).astype(v.dtype) for k, v in trainable.items()}
    new_params = optim.merge(new_trainable, frozen)  # frozen leaves: the very same arrays

    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    metrics = {
        "loss_sum": loss_sum,
        "correct": jnp.sum((pred == labels.astype(jnp.int32)) & mask).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "nonfinite": (~finite).astype(jnp.int32),
        "first_nonfinite_step": jnp.where(finite, _NO_STEP, state.step).astype(jnp.int32),
    }
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(config, model, *, on_features: bool = False) -> Callable:
  """eval_step(state, batch) -> metrics: loss_sum, correct, count and confusion [C, C] (true, pred).

  `state` is anything with `.params` (a TrainState, or a restored one without optimizer state).
  on_features=True: batch['image'] holds cached backbone features; only the head runs.
  """
  config = config.copy_and_resolve_references()
  num_classes = int(config.head.num_classes)
  c = num_outputs(config)

  def eval_step(state, batch):
    x = batch["image"] if on_features else prepare_images(config, batch["image"])
    logits = model.apply({"params": state.params}, x, train=False,
                         method="classify" if on_features else None)
    labels = batch["label"].astype(jnp.int32)
    mask = batch["mask"]
    loss, pred = per_example_loss(logits, labels, num_classes)
    true_1h = jax.nn.one_hot(labels, c, dtype=jnp.int32) * mask[:, None].astype(jnp.int32)
    pred_1h = jax.nn.one_hot(pred, c, dtype=jnp.int32)
    return {
        "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0)),
        "correct": jnp.sum((pred == labels) & mask).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "confusion": jnp.einsum("bi,bj->ij", true_1h, pred_1h),
    }

  return eval_step


def make_predict_fn(config, model) -> Callable:
  """predict(params, images uint8 [B,H,W,3]) -> probabilities [B, C] over the class names.

  A sigmoid head gives [1 - p, p] so column i is always class i.
  """
  config = config.copy_and_resolve_references()

  def predict(params, images):
    logits = model.apply({"params": params}, prepare_images(config, images), train=False)
    if config.head.num_classes == 1:
      p = jax.nn.sigmoid(logits[:, 0])
      return jnp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  return jax.jit(predict)


def _combine(acc, new):
  """Accumulate step metrics on device: sums, and min for first_* keys."""
  if acc is None:
    return new
  return {k: (jnp.minimum(acc[k], v) if k.startswith("first_") else acc[k] + v)
          for k, v in new.items()}


_accumulate = jax.jit(_combine)


def summarize(sums: dict) -> dict:
  """Host-side means from metric sums: loss, accuracy, num_examples."""
  count = int(sums["count"])
  return {"loss": float(sums["loss_sum"]) / count if count else float("nan"),
          "accuracy": float(sums["correct"]) / count if count else float("nan"),
          "num_examples": count}


# ---------------------------------------------------------------------------------------------
# Sharding (the mesh helpers live in rpsflax.sharding; re-exported here for callers)

def jit_train_step(config, model, mesh: Mesh) -> Callable:
  """The jit-compiled train step: state replicated and donated, batch sharded on 'data'."""
  return jax.jit(make_train_step(config, model),
                 in_shardings=(replicated(mesh), data_sharding(mesh), replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,))


def jit_eval_step(config, model, mesh: Mesh) -> Callable:
  return jax.jit(make_eval_step(config, model),
                 in_shardings=(replicated(mesh), data_sharding(mesh)),
                 out_shardings=replicated(mesh))


# The fields a step's computation depends on: runs in one process (resume, evaluate after
# training, tests) that agree on them reuse the compiled steps instead of compiling again.
_STEP_FIELDS = ("model", "head", "augment", "optim", "preprocess", "trainable", "lr_groups")


def step_key(config, mesh: Mesh) -> str:
  """A cache key for compiled steps: the config fields that change the program, and the mesh."""
  import json  # noqa: PLC0415

  fields = {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
            for k in _STEP_FIELDS}
  return json.dumps([fields, [d.id for d in mesh.devices.flat], list(mesh.axis_names)],
                    sort_keys=True, default=str)


_compiled_steps: dict = {}


def compiled_steps(config, mesh: Mesh) -> tuple[Callable, Callable]:
  """(train_step, eval_step), jit-compiled for `mesh`, cached per step-relevant config."""
  key = step_key(config, mesh)
  if key not in _compiled_steps:
    model = models.build_model(config)
    _compiled_steps[key] = (jit_train_step(config, model, mesh), jit_eval_step(config, model, mesh))
  return _compiled_steps[key]


# ---------------------------------------------------------------------------------------------
# Loops

def evaluate_batches(eval_step: Callable, state, batches: Iterable[dict], mesh: Mesh,
                     config) -> dict:
  """Run eval_step over every batch; one device->host transfer at the end.

  Returns loss, accuracy, num_examples and the confusion matrix (NumPy [C, C]).
  """
  acc = None
  for batch in prefetch_to_mesh(batches, mesh, pad=True):
    acc = _accumulate(acc, eval_step(state, batch))
  if acc is None:
    c = num_outputs(config)
    sums = {"loss_sum": 0.0, "correct": 0, "count": 0, "confusion": np.zeros((c, c), np.int64)}
  else:
    sums = jax.device_get(acc)
  out = summarize(sums)
  out["confusion"] = np.asarray(sums["confusion"], np.int64)
  return out


class _StopRequest:
  """SIGINT/SIGTERM -> a flag the loop checks between steps (main thread only)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:  # a second signal: stop at once
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)

  def requested(self, sync: bool = True) -> bool:
    """Whether to stop now. Several processes must stop at the same step, or one would wait in a
    collective of the next step while another saves: they agree (any signal stops all), and only at
    points every process reaches together (`sync`), so the per-step check costs nothing there."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not sync:
      return False
    from jax.experimental import multihost_utils  # noqa: PLC0415
    signum = int(np.max(multihost_utils.process_allgather(np.int32(self.signum or 0))))
    if signum and self.signum is None:
      self.signum = signum
    return signum != 0


def _is_chief() -> bool:
  return jax.process_index() == 0


def _check_finite(host: dict, epoch: int, ckpt_dir) -> None:
  if int(host["nonfinite"]):
    step = int(host["first_nonfinite_step"]) + 1  # counted from 1, as TensorBoard and signals do
    raise NonFiniteError(
        f"the training loss or gradient became NaN/inf at step {step} "
        f"(epoch {epoch}); stopped without saving it. The last good checkpoints in {ckpt_dir} are "
        "kept. Lower config.optim.learning_rate, or check the data.")


def train_epoch(state, batches: Iterable[dict], train_step: Callable, rng, mesh: Mesh, config, *,
                epoch: int, start: int = 0, partial: Optional[dict] = None,
                stop: Optional[_StopRequest] = None, writer=None, ckpt_dir="") -> tuple:
  """Train on the batches of one epoch (skipping the first `start`, already done before a resume).

  `partial` holds the metric sums of those skipped steps (from the checkpoint), so the epoch's
  numbers equal an uninterrupted run's. Returns (state, sums, stopped_at_batch or None).
  """
  from tqdm import tqdm  # noqa: PLC0415

  steps = int(getattr(batches, "steps", 0)) or None
  acc = None if partial is None else jax.tree.map(jnp.asarray, _typed_sums(partial))
  log_every = max(1, int(config.log_every_steps))
  bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch}/{config.num_epochs}", unit="step",
             disable=not _is_chief(), leave=False, dynamic_ncols=True)
  last_logged = None
  i = start
  try:
    for i, batch in enumerate(prefetch_to_mesh(itertools.islice(iter(batches), start, None), mesh),
                              start=start + 1):
      state, metrics = train_step(state, batch, rng)
      acc = _accumulate(acc, metrics)
      bar.update(1)
      if i % log_every == 0:
        host = jax.device_get(acc)
        _check_finite(host, epoch, ckpt_dir)
        s = summarize(host)
        bar.set_postfix(loss=f"{s['loss']:.4f}", accuracy=f"{s['accuracy']:.4f}")
        if writer is not None:
          interval = _interval(host, last_logged)
          writer.add_scalar("train/loss", interval["loss"], int(state.step))
          writer.add_scalar("train/accuracy", interval["accuracy"], int(state.step))
        last_logged = host
      if (stop is not None and (steps is None or i < steps)
          and stop.requested(sync=i % log_every == 0)):
        _check_finite(jax.device_get(acc), epoch, ckpt_dir)  # never checkpoint a NaN state
        return state, acc, i  # mid-epoch; at the last batch the epoch finishes normally
  finally:
    bar.close()
  if acc is None:
    raise ValueError("the training split yielded no batch: check config.data.dir")
  host = jax.device_get(acc)
  _check_finite(host, epoch, ckpt_dir)
  return state, host, None


def _interval(now: dict, before: Optional[dict]) -> dict:
  if before is None:
    return summarize(now)
  return summarize({k: now[k] - before[k] for k in ("loss_sum", "correct", "count")})


def _typed_sums(sums: dict) -> dict:
  """JSON metric sums back to the dtypes the step returns (float32 loss, int32 counts)."""
  return {k: (np.float32(v) if k == "loss_sum" else np.int32(v)) for k, v in sums.items()}


def _plain_sums(sums) -> dict:
  host = jax.device_get(sums)
  return {k: (float(v) if k == "loss_sum" else int(v)) for k, v in host.items()}


# ---------------------------------------------------------------------------------------------
# The run

def _tb_writer(workdir: pathlib.Path):
  if not _is_chief():
    return None
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  except ImportError:
    logging.warning("tensorboardX is not installed: no TensorBoard events")
    return None
  return SummaryWriter(str(workdir / "tensorboard"))


def _write_reports(workdir, history, evaluation, class_names, split, extra) -> dict:
  """eval.json, curves.png, confusion_matrix.png, history.json: the one place report is called."""
  eval_metrics = {"split": split, "accuracy": evaluation["accuracy"], "loss": evaluation["loss"],
                  "num_examples": evaluation["num_examples"], **extra}
  if _is_chief():
    from rpsflax import report  # noqa: PLC0415

    report.write_training_report(workdir, history, evaluation["confusion"], class_names,
                                 eval_metrics, split=split)
  return eval_metrics


def _eval_result(evaluation: dict, class_names, split: str, **extra) -> dict:
  """What train_and_evaluate / evaluate return: eval.json's fields plus the confusion matrix."""
  cm = np.asarray(evaluation["confusion"])
  rows = cm.sum(axis=1)
  per_class = {name: (float(cm[i, i] / rows[i]) if rows[i] else None)
               for i, name in enumerate(class_names)}
  return {"split": split, "accuracy": evaluation["accuracy"], "loss": evaluation["loss"],
          "num_examples": evaluation["num_examples"], "per_class_accuracy": per_class,
          "confusion_matrix": cm.tolist(), "class_names": list(class_names), **extra}


def _class_names_for_head(config, class_names) -> None:
  n = len(class_names)
  k = int(config.head.num_classes)
  if (k == 1 and n != 2) or (k > 1 and k != n):
    need = "1 (sigmoid) or 2" if n == 2 else str(n)
    raise errors.ConfigError(
        f"config.head.num_classes={k} does not fit the data's {n} classes {list(class_names)}: "
        f"set --config.head.num_classes={need}")


def _final_split(datasets) -> str:
  if datasets.num_examples.get("holdout", 0):
    return "holdout"
  return "validation" if datasets.num_examples.get("validation", 0) else "train"


def preflight(config, workdir) -> None:
  """Checks that take seconds and catch missing data or weights before any work (called by main)."""
  from rpsflax import features  # noqa: PLC0415

  config_check.check_config(config)
  features.check_config(config)
  mesh = make_mesh()
  check_batch_sizes(config, mesh)
  from rpsflax import weights  # noqa: PLC0415

  weights.check_spec(config.weights)
  if config.data.dir:  # a listing only (no decoding): missing, empty or mismatched folders fail here
    from rpsflax import data_files  # noqa: PLC0415

    data_files.check_listings(data_files.find_split_folders(config.data.dir))


def train_and_evaluate(config, workdir) -> dict:
  """Train `config` in `workdir` (resuming from its latest checkpoint), then evaluate.

  Returns the final evaluation (eval.json's fields: split, accuracy, loss, num_examples,
  per_class_accuracy, plus confusion_matrix, class_names, epoch). A run that already finished
  is not retrained: its eval.json is returned (or recomputed from the checkpoint if missing).
  """
  from rpsflax import features, input_pipeline, report, weights  # noqa: PLC0415

  config_check.check_config(config)
  features.check_config(config)  # cached features need a frozen backbone (no-op when disabled)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh()
  check_batch_sizes(config, mesh)
  if _is_chief() and not (workdir / report.CONFIG_FILE).exists():
    report.write_config(workdir, config)

  datasets = input_pipeline.create_datasets(config, workdir)
  class_names = list(datasets.class_names)
  _class_names_for_head(config, class_names)
  if _is_chief():  # an existing run's config.json changes only once the data has been read
    report.write_config(workdir, config)
  steps_per_epoch = int(datasets.steps_per_epoch)
  total_steps = steps_per_epoch * int(config.num_epochs)

  model = models.build_model(config)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  repl = replicated(mesh)
  ckpts = ckpt_lib.Checkpoints(workdir)
  writer = None
  try:
    target = abstract_train_state(config, model, repl)
    restored = ckpts.restore_for_resume(target)  # a damaged newest one: set aside, the one before
    if restored is None:
      params = init_params(config, model, init_rng)
      params = weights.load_for_model(config.weights, params, models.keras_layer_map(config))
      state = jax.device_put(create_train_state(config, model, params=params), repl)
      meta = {"epoch": 0, "step": 0, "history": [], "best_val_accuracy": None, "partial": None}
    else:
      state, meta = restored
      if meta.get("steps_per_epoch") not in (None, steps_per_epoch):
        raise errors.CheckpointError(
            f"the data changed since {ckpts.directory} was written: {meta['steps_per_epoch']} steps "
            f"per epoch then, {steps_per_epoch} now. Use a fresh --workdir, or the same data and "
            "config.batch_size.")
      logging.info("Resuming %s from step %d (epoch %d done).", workdir, meta["step"], meta["epoch"])
    history = list(meta.get("history") or [])
    best = meta.get("best_val_accuracy")
    step = int(meta["step"])
    final_split = _final_split(datasets)

    if step >= total_steps and meta.get("partial") is None:
      eval_path = workdir / "eval.json"
      if eval_path.exists() and history and len(history) >= int(config.num_epochs):
        logging.info("%s already finished %d epochs: not retraining.", workdir, len(history))
        return report_json(eval_path)

    if features.enabled(config):  # the head trains on cached backbone features (rpsflax.features)
      datasets, (train_step, eval_step) = features.prepare(config, workdir, datasets, state, mesh)
    else:
      train_step, eval_step = compiled_steps(config, mesh)
    writer = _tb_writer(workdir)
    last_eval = None
    with _StopRequest() as stop:
      while step < total_steps:
        epoch = step // steps_per_epoch + 1
        start = step % steps_per_epoch
        t0 = time.time() - float((meta.get("partial") or {}).get("seconds", 0.0))
        batches = _Sized(datasets.train_batches(epoch - 1), steps_per_epoch)
        partial_sums = (meta.get("partial") or {}).get("sums")
        state, sums, stopped = train_epoch(
            state, batches, train_step, train_rng, mesh, config, epoch=epoch, start=start,
            partial=partial_sums, stop=stop, writer=writer, ckpt_dir=ckpts.directory)
        step = int(state.step)
        if stopped is not None:
          meta = {**meta, "step": step, "steps_per_epoch": steps_per_epoch,
                  "class_names": class_names,
                  "partial": {"sums": _plain_sums(sums), "seconds": time.time() - t0}}
          ckpts.save(state, meta, which=ckpt_lib.LATEST)
          ckpts.wait()
          raise TrainingInterrupted(
              f"stopped by {signal.Signals(stop.signum).name} at step {step} (epoch {epoch}); "
              f"saved a checkpoint in {ckpts.directory}. Run the same command again to resume.",
              stop.signum)
        train = summarize(sums)
        if datasets.num_examples.get("validation", 0):
          last_eval = evaluate_batches(eval_step, state, datasets.eval_batches("validation"), mesh,
                                       config)
          val_loss, val_acc = last_eval["loss"], last_eval["accuracy"]
        else:
          last_eval, val_loss, val_acc = None, None, None
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "val_loss": val_loss, "val_accuracy": val_acc,
               "seconds": round(time.time() - t0, 3)}
        history.append(row)
        score = val_acc if val_acc is not None else train["accuracy"]
        is_best = best is None or score > best  # strictly better, as Keras' save_best_only
        if is_best:
          best = score
        meta = {"epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                "history": history, "best_val_accuracy": best, "val_accuracy": val_acc,
                "class_names": class_names, "partial": None}
        # Best first: if the process dies between the two, the replayed epoch re-saves latest.
        if is_best:
          ckpts.save(state, meta, which=ckpt_lib.BEST)
        ckpts.save(state, meta, which=ckpt_lib.LATEST)
        _log_epoch(row, writer)
        if _is_chief():
          report.write_history(workdir, history)
        if step < total_steps and stop.requested():
          ckpts.wait()
          raise TrainingInterrupted(
              f"stopped by {signal.Signals(stop.signum).name} after epoch {epoch}; its checkpoint "
              f"is in {ckpts.directory}. Run the same command again to resume.", stop.signum)
    if final_split == "validation" and last_eval is not None:
      evaluation = last_eval
    else:
      evaluation = evaluate_batches(eval_step, state, datasets.eval_batches(final_split), mesh,
                                    config)
    extra = {"epoch": len(history), "step": step, "checkpoint": "latest (final parameters)"}
    ckpts.wait()  # a failed save (disk full) stops before eval.json says the run finished
    _write_reports(workdir, history, evaluation, class_names, final_split, extra)
    return _eval_result(evaluation, class_names, final_split, **extra)
  finally:
    if writer is not None:
      writer.close()
    ckpts.close()  # waits for pending saves


class _Sized:
  """An iterable with a known number of steps (for the progress bar)."""

  def __init__(self, iterable, steps: int):
    self._iterable, self.steps = iterable, steps

  def __iter__(self):
    return iter(self._iterable)


def report_json(path) -> dict:
  import json  # noqa: PLC0415

  return json.loads(pathlib.Path(path).read_text())


def _log_epoch(row: dict, writer) -> None:
  if not _is_chief():
    return
  fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
  logging.info("epoch %d: loss %s accuracy %s val_loss %s val_accuracy %s (%.1fs)", row["epoch"],
               fmt(row["train_loss"]), fmt(row["train_accuracy"]), fmt(row["val_loss"]),
               fmt(row["val_accuracy"]), row["seconds"])
  if writer is not None:
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      if row[key] is not None:
        writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    writer.add_scalar("epoch/seconds", row["seconds"], row["epoch"])
    writer.flush()


# ---------------------------------------------------------------------------------------------
# Restoring a trained workdir (evaluate, predict)

def restore_state(config, workdir, which: str = ckpt_lib.BEST, mesh: Optional[Mesh] = None,
                  model=None) -> tuple[TrainState, dict]:
  """(state, meta) of a workdir's best checkpoint (or latest; best falls back to latest).

  meta holds class_names, epoch, step, history and val_accuracy. Arrays are replicated on `mesh`
  (default: all devices), whatever mesh wrote them.
  """
  mesh = make_mesh() if mesh is None else mesh
  model = models.build_model(config) if model is None else model
  target = abstract_train_state(config, model, replicated(mesh))
  order = [which] + ([ckpt_lib.LATEST] if which == ckpt_lib.BEST else [])
  for name in order:
    if ckpt_lib.has_checkpoint(workdir, name):
      with ckpt_lib.Checkpoints(workdir, read_only=True) as ckpts:  # a live run's own
        restored = ckpts.restore(target, which=name)              # saves stay untouched
      if restored is not None:
        state, meta = restored
        return state, {**meta, "checkpoint": name}
  raise errors.CheckpointError(
      f"no checkpoint in {pathlib.Path(workdir) / 'checkpoints'}: train first with "
      f"python -m rpsflax.main --config=... --workdir={workdir}")


def load_for_inference(workdir, config=None, which: str = ckpt_lib.BEST):
  """(config, model, params, class_names, predict_fn) of a trained workdir, for rpsflax.predict.

  config defaults to the workdir's config.json. predict_fn(params, uint8 images) -> [B, C]
  probabilities; pad batches to a fixed size (see `pad_batch`) to avoid recompiles.
  """
  if config is None:
    from rpsflax import report  # noqa: PLC0415

    config = report.read_config(workdir)
  model = models.build_model(config)
  state, meta = restore_state(config, workdir, which, model=model)
  return config, model, state.params, list(meta["class_names"]), make_predict_fn(config, model)


def evaluate(config, workdir, split: str = "validation", data_dir: Optional[str] = None,
             which: str = ckpt_lib.BEST) -> dict:
  """Evaluate a trained workdir's best (else latest) checkpoint on a split of its data or a folder.

  Writes eval.json and confusion_matrix.png into workdir/eval/<split> (or eval/folder-<name> for
  a folder), beside, never over, the training run's own eval.json, and returns the same numbers
  (see `train_and_evaluate`).
  """
  from rpsflax import data_files, input_pipeline, report  # noqa: PLC0415

  config_check.check_config(config)
  workdir = pathlib.Path(workdir)
  mesh = make_mesh()
  check_batch_sizes(config, mesh)
  model = models.build_model(config)
  state, meta = restore_state(config, workdir, which, mesh, model=model)
  class_names = list(meta["class_names"])
  extra = {"epoch": meta.get("epoch"), "step": meta.get("step"), "checkpoint": meta["checkpoint"]}
  if data_dir:
    # Every labelled image under the folder: the folder itself, or each of its split folders
    # (train/, validation/, test/) when it is laid out like a data set. Labels index the
    # model's classes by name, so a folder may hold a subset of them.
    folders = [f.path for f in data_files.find_split_folders(data_dir).values()]
    sets = [input_pipeline.create_eval_dataset(config, f, class_names) for f in folders]
    batches = itertools.chain.from_iterable(d.eval_batches("eval") for d in sets)
    split_name = str(data_dir)
    name = f"folder-{pathlib.Path(data_dir).resolve().name}"
    extra["folders"] = folders
  else:
    datasets = input_pipeline.create_datasets(config, workdir, write=False)  # reads the splits
    if not datasets.num_examples.get(split, 0):
      raise errors.DataError(f"split {split!r} has no examples in this run's data (it has "
                       f"{ {k: v for k, v in datasets.num_examples.items() if v} }); "
                       "pick another --split")
    batches, name, split_name = datasets.eval_batches(split), split, split
  evaluation = evaluate_batches(compiled_steps(config, mesh)[1], state, batches, mesh, config)
  if _is_chief():
    report.write_eval_report(workdir / "eval" / name, evaluation["confusion"], class_names,
                             {"loss": evaluation["loss"], **extra}, split=split_name)
  return _eval_result(evaluation, class_names, split_name, **extra)
