"""Training: one run of a config in a workdir, epoch by epoch, resumable at any step.

`train_and_evaluate` checks the config once, reads the data, restores the latest checkpoint (or
starts from the configured weights), trains with the steps of `rpsflax.steps` (or, with a frozen
backbone and `config.cached_features`, the head alone on features from `rpsflax.features`),
evaluates every epoch (`rpsflax.evaluation`), checkpoints, and writes the reports.

- Determinism: the data order is a function of (seed, epoch) (input pipeline) and every random
  number of step s comes from fold_in(train_rng, s), so a run resumed at any step replays exactly.
- Only process 0 writes logs, TensorBoard events, history and reports; every process takes part
  in checkpointing (Orbax coordinates).
"""

import copy
import dataclasses
import itertools
import math
import os
import pathlib
import signal
import time
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh
from tqdm import tqdm

from rpsflax import checkpoint as ckpt_lib
from rpsflax import (config_check, data_files, errors, evaluation, features, input_pipeline,
                     interrupts, models, optim, report, resident, restore, run_meta, sharding,
                     steps, timing, weights, workdir_lock)
from rpsflax.errors import NonFiniteError
from rpsflax.run_meta import RunMeta


@dataclasses.dataclass(frozen=True)
class Preflight:
  """What `preflight` found, handed on so that a run lists its data folder and resolves its
  weights once."""
  weights: str                    # config.weights resolved: a Keras file or converted folder
                                  # ('imagenet': the release, downloaded), or '' for none (a
                                  # warm start too)
  listings: Optional[dict] = None  # config.data.dir's split folders; None for TFDS


def resolve_weights(config) -> str:
  """config.weights as a file or converted folder ('' for none), 'imagenet' meaning
  config.model's release: `weights.check_spec`, which raises WeightsError with the fix.
  '' under config.init_from: a warm start replaces every parameter, so the weights are neither
  downloaded nor read."""
  if config.init_from:
    return ""
  return weights.check_spec(config.weights, weights.imagenet_release(config))


def preflight(config, mesh) -> Preflight:
  """The checks that need more than the config's own values, once, in seconds, before any model
  is built or data decoded: cached-feature settings, the batch for `mesh`, the weights (an
  'imagenet' download, a file, a converted folder) and a local data folder's listing. When the
  weights are missing and the folder is too, one message says both, so an offline user fixes
  the command once."""
  features.check_settings(config)  # cached features need a frozen backbone (no-op when disabled)
  sharding.check_batch_sizes(config, mesh)
  restore.check_init_from(config)  # a warm start's source run exists
  listings, listing_error = None, None
  if config.data.dir:  # a listing only (no decoding): missing, empty or mismatched folders fail here
    try:
      listings = data_files.find_split_folders(os.path.abspath(config.data.dir))
      data_files.check_listings(listings)
    except errors.DataError as e:
      listing_error = e
  try:
    source = resolve_weights(config)
  except errors.WeightsError as weights_error:
    if listing_error is not None:
      raise errors.WeightsError(f"{weights_error}\nAlso: {listing_error}") from weights_error
    raise
  if listing_error is not None:
    raise listing_error
  return Preflight(weights=source, listings=listings)


def initial_state(config, model, init_rng, mesh, weights_source: str) -> steps.TrainState:
  """A fresh TrainState: random parameters with the weights at `weights_source`
  (`resolve_weights`) over them, or config.init_from's trained ones (a warm start)."""
  v = steps.init_variables(config, model, init_rng)
  if config.init_from:  # a trained run's backbone and head (a warm start)
    v = restore.warm_start_variables(config.init_from, v, mesh)
  else:
    v = weights.load_variables_for_model(weights_source, v, models.keras_layer_map(config))
  return jax.device_put(steps.create_train_state(config, model, params=v["params"],
                                                 batch_stats=v.get("batch_stats")),
                        sharding.replicated(mesh))


def train_and_evaluate(config, workdir, *, started: Optional[float] = None) -> dict:
  """Train `config` in `workdir` (resuming from its latest checkpoint), then evaluate.

  Returns the final evaluation (eval.json's fields: split, accuracy, loss, num_examples,
  per_class_accuracy, plus confusion_matrix, class_names, epoch, timing). A run that already
  finished is not retrained: its eval.json is returned (or recomputed from the checkpoint if
  missing). One training run per workdir: a second one stops at once naming the first
  (`workdir_lock`). `started`: when the process began (the CLI passes it), so the run's time
  breakdown (`timing`) includes start-up and imports.
  """
  timer = timing.RunTimer(started)
  with timer.active():
    workdir = pathlib.Path(workdir)
    with timer.phase("checks"):
      config_check.check_config(config)  # keys and values, before jax.distributed reads them
    with timer.phase("startup"):  # the device backend starts here
      sharding.initialize_distributed(config)
      mesh = sharding.make_mesh()
    with timer.phase("checks"):
      checked = preflight(config, mesh)
      check_starting_point(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock.hold(workdir, enabled=sharding.is_chief()):
      return run(config, workdir, mesh, checked, timer)


def run(config, workdir: pathlib.Path, mesh, checked: Preflight,
        timer: Optional[timing.RunTimer] = None) -> dict:
  """The run itself, checked (`preflight`) and holding the workdir's lock
  (`train_and_evaluate`)."""
  timer = timing.RunTimer() if timer is None else timer
  with timer.phase("data"):
    datasets = input_pipeline.create_datasets(config, workdir, listings=checked.listings)
    class_names = list(datasets.class_names)
  config = with_num_classes(config, class_names)
  steps_per_epoch = int(datasets.steps_per_epoch)
  total_steps = steps_per_epoch * int(config.num_epochs)
  final_split = _final_split(datasets)  # what the end of the run evaluates

  model = models.build_model(config)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  repl = sharding.replicated(mesh)
  abstract = steps.abstract_train_state(config, model, repl)
  # Frozen parameters are written once per workdir, not in every checkpoint.
  ckpts = ckpt_lib.Checkpoints(workdir, frozen=optim.frozen_paths(abstract.params, config))
  writer = None
  try:
    with timer.phase("weights"):
      def fresh():  # the state a new run starts from (also what rebuilds a lost frozen store)
        return initial_state(config, model, init_rng, mesh, checked.weights)

      # A damaged newest checkpoint is set aside (renamed, never deleted) for the one before it;
      # a lost frozen store is rebuilt from the configured weights when they hold the same.
      restored = ckpts.restore_for_resume(abstract, frozen_from=fresh)
      if restored is None:
        state, meta = fresh(), RunMeta()
      else:
        state, meta = restored[0], RunMeta.from_json(restored[1])
        if meta.steps_per_epoch not in (None, steps_per_epoch):
          raise errors.CheckpointError(
              f"the data changed since {ckpts.directory} was written: {meta.steps_per_epoch} "
              f"steps per epoch then, {steps_per_epoch} now. Use a fresh --workdir, or the same "
              "data and config.batch_size.")
        logging.info("Resuming %s from step %d (epoch %d done).", workdir, meta.step, meta.epoch)
    if sharding.is_chief():  # once the data and the checkpoint have been read: a run that
      report.write_config(workdir, config)  # fails on either keeps the config.json it names
    meta.steps_per_epoch, meta.class_names = steps_per_epoch, class_names
    step = meta.step

    if step >= total_steps and meta.partial is None:
      eval_path = workdir / "eval.json"
      if eval_path.exists() and meta.history and len(meta.history) >= int(config.num_epochs):
        logging.info("%s already finished %d epochs: not retraining.", workdir, len(meta.history))
        return {**report.read_json(eval_path), "outputs": report.training_outputs(workdir)}

    ckpts.write_frozen(state)  # written during epoch 1 (once per workdir), not at its first save
    on_features = features.enabled(config)  # the head trains on cached backbone features
    if on_features:
      with timer.phase("feature_cache"):
        datasets = features.feature_datasets(config, workdir, datasets, state, mesh, model)
    run_steps = steps.compile_steps(config, model, mesh, on_features=on_features)
    # The splits on the devices, epochs as a few jitted calls (rpsflax.resident), where they fit.
    on_device = resident.load(run_steps, datasets, mesh, config.data.device_cache)
    if on_device is None and datasets.cache and not run_steps.on_features:
      with timer.phase("decoding"):  # now, rather than inside epoch 1 and the first evaluation
        datasets.prepare(resident.used_splits(datasets))

    def evaluate_on(state, split: str) -> dict:
      with timer.phase("evaluation"):
        if on_device is not None:
          return on_device.evaluate_split(state, split)
        return evaluation.evaluate_batches(run_steps.eval, state, datasets.eval_batches(split),
                                           mesh, run_steps.classes)

    writer = _tb_writer(workdir)
    last_eval = None
    every = max(1, int(config.log_every_steps))
    with interrupts.StopRequest() as stop:
      loop = EpochLoop(config, mesh, run_steps.train, train_rng, stop, writer, ckpts.directory)
      while step < total_steps:
        epoch = step // steps_per_epoch + 1
        partial = meta.partial or {}
        t0 = time.time() - float(partial.get("seconds", 0.0))
        if on_device is not None:
          feed = on_device.train_feed(epoch - 1, train_rng, every)
        else:
          feed = HostFeed(loop, datasets.train_batches(epoch - 1), steps_per_epoch)
        with timer.phase("steps"):
          state, sums, stopped = train_epoch(loop, state, feed, epoch=epoch,
                                             start=step % steps_per_epoch,
                                             partial=partial.get("sums"))
        step = meta.step = int(state.step)
        if stopped is not None:
          meta.partial = {"sums": _plain_sums(sums), "seconds": time.time() - t0}
          with timer.phase("checkpoints"):
            ckpts.save(state, meta.to_json(), which=ckpt_lib.LATEST)
            ckpts.wait()
          raise interrupts.TrainingInterrupted(
              f"stopped by {signal.Signals(stop.signum).name} at step {step} (epoch {epoch}); "
              f"saved a checkpoint in {ckpts.directory}. Run the same command again to resume.",
              stop.signum)
        train = steps.summarize(sums)
        if datasets.num_examples.get("validation", 0):
          last_eval = evaluate_on(state, "validation")
          val_loss, val_acc = last_eval["loss"], last_eval["accuracy"]
        else:
          last_eval, val_loss, val_acc = None, None, None
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "val_loss": val_loss, "val_accuracy": val_acc,
               "seconds": round(time.time() - t0, 3)}
        meta.history.append(row)
        score = val_acc if val_acc is not None else train["accuracy"]
        # strictly better, as Keras' save_best_only
        is_best = meta.best_val_accuracy is None or score > meta.best_val_accuracy
        if is_best:
          meta.best_val_accuracy = score
        meta.epoch, meta.val_accuracy, meta.partial = epoch, val_acc, None
        with timer.phase("checkpoints"):
          # Best first: if the process dies between the two, the replayed epoch re-saves latest.
          if is_best:
            ckpts.save(state, meta.to_json(), which=ckpt_lib.BEST)
          ckpts.save(state, meta.to_json(), which=ckpt_lib.LATEST)
        with timer.phase("reports"):
          _log_epoch(row, writer)
          if sharding.is_chief():
            report.write_history(workdir, meta.history)
        if step < total_steps and stop.requested():
          with timer.phase("checkpoints"):
            ckpts.wait()
          raise interrupts.TrainingInterrupted(
              f"stopped by {signal.Signals(stop.signum).name} after epoch {epoch}; its checkpoint "
              f"is in {ckpts.directory}. Run the same command again to resume.", stop.signum)
    with timer.phase("checkpoints"):
      ckpts.wait()  # a failed save (disk full) stops before eval.json says the run finished
      # The final evaluation is of the best checkpoint, as --mode=evaluate and predict use.
      final_state, used = _best_checkpoint(ckpts, abstract, state, meta)
    if sharding.is_chief():
      logging.info("final evaluation: %s on %s", run_meta.describe_checkpoint(used), final_split)
    if final_split == "validation" and last_eval is not None and final_state is state:
      result = last_eval
    else:
      result = evaluate_on(final_state, final_split)
    extra = {"checkpoint": used, "epochs_trained": len(meta.history)}
    extra["timing"] = timer.summary()  # up to eval.json; the log line below adds the reports
    record = report.EvalRecord.from_evaluation(result, class_names, final_split, **extra)
    with timer.phase("reports"):
      if sharding.is_chief():
        report.write_training_report(workdir, meta.history, record)
    if sharding.is_chief():
      logging.info("time: %s", timing.format_line(timer.summary()))
    return {**record.to_json(),
            "outputs": report.training_outputs(workdir) if sharding.is_chief() else {}}
  finally:
    if writer is not None:
      writer.close()
    ckpts.close()  # waits for pending saves


# ---------------------------------------------------------------------------------------------
# One epoch

def _check_finite(host: dict, epoch: int, ckpt_dir) -> None:
  if int(host["nonfinite"]):
    step = int(host["first_nonfinite_step"]) + 1  # counted from 1, as TensorBoard and signals do
    raise NonFiniteError(
        f"the training loss or gradient became NaN/inf at step {step} "
        f"(epoch {epoch}); stopped without saving it. The last good checkpoints in {ckpt_dir} are "
        "kept. Lower config.optim.learning_rate, or check the data.")


@dataclasses.dataclass(frozen=True)
class EpochLoop:
  """What every epoch of a run shares: the compiled step and where it runs."""
  config: Any
  mesh: Mesh
  train_step: Callable                  # steps.Steps.train
  rng: jax.Array                        # the run's training key (the step folds in its number)
  stop: Optional[interrupts.StopRequest] = None
  writer: Any = None                    # TensorBoard (process 0), or None
  ckpt_dir: Any = ""                    # named in the NaN/inf message


class HostFeed:
  """One epoch's batches from the host, one jitted step per call: the path for data that is not
  device-resident (rpsflax.resident.Feed is the other, with the same interface)."""

  def __init__(self, loop: EpochLoop, batches: Iterable[dict], steps_per_epoch: int):
    self._loop, self._batches, self.steps = loop, batches, steps_per_epoch
    self._it = None

  def chunk_ends(self, start: int) -> list[int]:
    return list(range(start + 1, self.steps + 1))  # every step: a signal stops at the next one

  def run(self, state, acc, start: int, stop: int):
    if self._it is None:  # the first call says where the epoch resumes
      self._it = sharding.prefetch_to_mesh(itertools.islice(iter(self._batches), start, None),
                                           self._loop.mesh)
    for _ in range(start, stop):
      batch = next(self._it, None)
      if batch is None:
        raise ValueError(f"the training split yielded fewer than {self.steps} batches: check "
                         "config.data.dir")
      state, metrics = self._loop.train_step(state, batch, self._loop.rng)
      acc = steps.accumulate(acc, metrics)
    return state, acc


def train_epoch(loop: EpochLoop, state, feed, *, epoch: int, start: int = 0,
                partial: Optional[dict] = None) -> tuple:
  """Train the steps of one epoch that `feed` runs (a `HostFeed` or a `resident.Feed`), from step
  `start` (the ones before were done before a resume).

  `partial` holds the metric sums of those skipped steps (from the checkpoint), so the epoch's
  numbers equal an uninterrupted run's. The feed runs the epoch in calls that end at
  `feed.chunk_ends` (every step, or every log_every_steps on the devices); between calls the
  progress bar moves, and at multiples of config.log_every_steps the sums are read for the NaN
  check and TensorBoard one call late, so the next call is already running; a SIGINT/SIGTERM
  stops at the end of a call. Returns (state, sums, stopped_at_step or None).
  """
  total = feed.steps
  if start >= total:
    raise ValueError("the training split yielded no batch: check config.data.dir")
  acc = None if partial is None else jax.tree.map(jnp.asarray, _typed_sums(partial))
  log_every = max(1, int(loop.config.log_every_steps))
  first_step = int(state.step) - start  # the global step of the epoch's step 0
  bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}/{loop.config.num_epochs}", unit="step",
             disable=not sharding.is_chief(), leave=False, dynamic_ncols=True)
  logged = {"last": None}

  def log(i, sums):
    host = jax.device_get(sums)
    _check_finite(host, epoch, loop.ckpt_dir)
    s = steps.summarize(host)
    bar.set_postfix(loss=f"{s['loss']:.4f}", accuracy=f"{s['accuracy']:.4f}")
    if loop.writer is not None:
      interval = _interval(host, logged["last"])
      loop.writer.add_scalar("train/loss", interval["loss"], first_step + i)
      loop.writer.add_scalar("train/accuracy", interval["accuracy"], first_step + i)
    logged["last"] = host

  pending = None  # (step, sums) to log once the next call is under way
  i = start
  try:
    for end in feed.chunk_ends(start):
      state, acc = feed.run(state, acc, i, end)
      bar.update(end - i)
      i = end
      if pending is not None:
        log(*pending)
        pending = None
      if i % log_every == 0:
        pending = (i, acc)
      if (loop.stop is not None and i < total
          and loop.stop.requested(sync=i % log_every == 0)):
        if pending is not None:
          log(*pending)
        _check_finite(jax.device_get(acc), epoch, loop.ckpt_dir)  # never checkpoint a NaN state
        return state, acc, i  # mid-epoch; at the last batch the epoch finishes normally
    if pending is not None:
      log(*pending)
  finally:
    bar.close()
  host = jax.device_get(acc)
  _check_finite(host, epoch, loop.ckpt_dir)
  return state, host, None


def _interval(now: dict, before: Optional[dict]) -> dict:
  if before is None:
    return steps.summarize(now)
  return steps.summarize({k: now[k] - before[k] for k in ("loss_sum", "correct", "count")})


def _typed_sums(sums: dict) -> dict:
  """JSON metric sums back to the dtypes the step returns (float32 loss, int32 counts)."""
  return {k: (np.float32(v) if k == "loss_sum" else np.int32(v)) for k, v in sums.items()}


def _plain_sums(sums) -> dict:
  host = jax.device_get(sums)
  return {k: (float(v) if k == "loss_sum" else int(v)) for k, v in host.items()}


def _tb_writer(workdir: pathlib.Path):
  if not sharding.is_chief():
    return None
  try:  # optional: training goes on without TensorBoard events
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  except ImportError:
    logging.warning("tensorboardX is not installed: no TensorBoard events")
    return None
  return SummaryWriter(str(workdir / "tensorboard"))


def _best_checkpoint(ckpts, abstract, state, meta: RunMeta) -> tuple[Any, dict]:
  """(state, checkpoint record) of the run's best checkpoint: `state` itself when the last epoch
  was the best, else the best one read back. Saves must be finished (ckpts.wait())."""
  best = ckpts.restore_meta(which=ckpt_lib.BEST)
  if best is None or int(best["step"]) == int(state.step):  # (no best: a run of no epoch)
    which = ckpt_lib.BEST if best is not None else ckpt_lib.LATEST
    return state, run_meta.checkpoint_record(which, meta.epoch, int(state.step))
  best_state, saved = ckpts.restore(abstract, which=ckpt_lib.BEST)
  return best_state, RunMeta.from_json(saved, checkpoint=ckpt_lib.BEST).checkpoint_record()


def _final_split(datasets) -> str:
  if datasets.num_examples.get("holdout", 0):
    return "holdout"
  return "validation" if datasets.num_examples.get("validation", 0) else "train"


def _log_epoch(row: dict, writer) -> None:
  if not sharding.is_chief():
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


# What a fresh run starts from; a resumed run reads its checkpoint instead and never these
# (under init_from, `weights` is not read even by a fresh run: `resolve_weights`).
STARTING_POINT_KEYS = ("weights", "init_from")


def check_starting_point(config, workdir: pathlib.Path) -> None:
  """CheckpointError when `workdir` holds a checkpoint of a run started from other weights (or
  another config.init_from): resuming would silently ignore the new value and record it as if
  used. Same value, or a workdir without a checkpoint: nothing to say."""
  path = workdir / report.CONFIG_FILE
  if not (path.exists() and ckpt_lib.has_checkpoint(workdir, ckpt_lib.LATEST)):
    return
  saved = report.read_config(workdir)  # over the base: an older run's missing key reads its default
  keys = ("init_from",) if config.init_from else STARTING_POINT_KEYS
  changed = [f"config.{k}={config[k]!r} (it was started with {saved[k]!r})"
             for k in keys if str(saved[k]) != str(config[k])]
  if changed:
    raise errors.CheckpointError(
        f"{workdir} holds a run that resumes from its checkpoint, so {'; '.join(changed)} would "
        "never be read. Pass the value it was started with, or a fresh --workdir to start from "
        "the new one.")


def with_num_classes(config, class_names):
  """`config` itself, or when config.head.num_classes is None (the head follows the data) a copy
  with one output per class found: what config.json records and the model is built with."""
  if config.head.num_classes is not None:
    return config
  config = copy.deepcopy(config)
  config.head.num_classes = len(class_names)
  logging.info("config.head.num_classes=%d: one output per class found (%s)", len(class_names),
               ", ".join(class_names))
  return config

