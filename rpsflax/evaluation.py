"""Evaluation: metric sums over batches (`evaluate_batches`, also run by the training loop each
epoch) and `--mode=evaluate` of a trained workdir on a split of its data or another folder."""

import itertools
import pathlib
from typing import Callable, Iterable, Optional

import numpy as np
import jax
from absl import logging
from jax.sharding import Mesh

from rpsflax import checkpoint as ckpt_lib
from rpsflax import config_check, data_files, errors, input_pipeline, models, report, restore
from rpsflax import run_meta, sharding, steps
from rpsflax.errors import RunError


def evaluate_batches(eval_step: Callable, state, batches: Iterable[dict], mesh: Mesh,
                     classes: int) -> dict:
  """Run eval_step over every batch; one device->host transfer at the end.

  Returns loss, accuracy, num_examples and the confusion matrix (NumPy [C, C], C = `classes`:
  `steps.Steps.classes`, what the step's matrix has when there is no batch).
  """
  acc = None
  for batch in sharding.prefetch_to_mesh(batches, mesh, pad=True):
    acc = steps.accumulate(acc, eval_step(state, batch))
  if acc is None:
    sums = {"loss_sum": 0.0, "correct": 0, "count": 0,
            "confusion": np.zeros((classes, classes), np.int64)}
  else:
    sums = jax.device_get(acc)
  out = steps.summarize(sums)
  out["confusion"] = np.asarray(sums["confusion"], np.int64)
  return out


def evaluate_checkpoint(config, workdir, split: str = "validation", data_dir: Optional[str] = None,
             which: str = ckpt_lib.BEST) -> dict:
  """Evaluate a trained workdir's best (else latest) checkpoint on a split of its data or a folder.

  Writes eval.json and confusion_matrix.png into workdir/eval/<split> (or eval/folder-<name> for
  a folder), beside, never over, the training run's own eval.json, and returns the same numbers
  (see `train_and_evaluate`).
  """
  workdir = pathlib.Path(workdir)
  mesh = sharding.make_mesh()
  sharding.check_batch_sizes(config, mesh)
  model = models.build_model(config)
  state, meta = restore.restore_state(config, workdir, which, mesh, model=model)
  class_names = list(meta.class_names)
  extra = {"checkpoint": meta.checkpoint_record()}
  if data_dir:
    # Every labelled image under the folder: the folder itself, or each of its split folders
    # (train/, validation/, test/) when it is laid out like a data set. Labels index the
    # model's classes by name, so a folder may hold a subset of them.
    listings = list(data_files.find_split_folders(data_dir).values())
    folders = [l.path for l in listings]
    sets = [input_pipeline.create_eval_dataset(config, l.path, class_names, listing=l)
            for l in listings]
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
  logging.info("evaluating %s on %s", run_meta.describe_checkpoint(extra["checkpoint"]), split_name)
  run_steps = steps.compile_steps(config, model, mesh)
  evaluation = evaluate_batches(run_steps.eval, state, batches, mesh, run_steps.classes)
  record = report.EvalRecord.from_evaluation(evaluation, class_names, split_name, **extra)
  outputs = {}
  if sharding.is_chief():
    outputs = report.write_eval_report(workdir / "eval" / name, record)
  return {**record.to_json(), "outputs": {k: str(v) for k, v in outputs.items()}}


def evaluate(config, workdir, split: str = "validation", data_dir: Optional[str] = None,
             which: str = ckpt_lib.BEST) -> dict:
  """`--mode=evaluate`: the workdir's best (else latest) checkpoint on a split or a folder.

  Uses the config the workdir was trained with (its config.json), which built the checkpoint;
  `config` is used only for a workdir without one, and for how to start jax.distributed.
  """
  workdir = pathlib.Path(workdir)
  launch = config  # how this launch starts jax.distributed: --config's, never config.json's
  if not workdir.is_dir():
    raise RunError(f"--workdir={workdir} does not exist: train first (--mode=train)")
  if (workdir / report.CONFIG_FILE).is_file():
    if config is not None:
      logging.info("--mode=evaluate uses %s (the config the checkpoint was trained with); "
                   "--config is ignored but for config.distributed", workdir / report.CONFIG_FILE)
    config = report.read_config(workdir)
  elif config is None:
    raise RunError(f"{workdir / report.CONFIG_FILE} not found: is {workdir} the --workdir of a "
                   "training run? Pass --config=... as well, or train first.")
  config_check.check_config(config)
  sharding.initialize_distributed(launch)  # None: only RPSFLAX_DISTRIBUTED=1 starts it
  return evaluate_checkpoint(config, workdir, split, data_dir or None, which)
