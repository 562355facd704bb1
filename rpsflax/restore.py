"""A trained workdir, loaded back: its checkpoint as a TrainState and RunMeta (`restore_state`,
for evaluation) and its model as a probabilities function (`load_for_inference`, for prediction)."""

import pathlib
from typing import Optional

from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from rpsflax import checkpoint as ckpt_lib
from rpsflax import errors, models, report, sharding, steps
from rpsflax.run_meta import RunMeta


def restore_state(config, workdir, which: str = ckpt_lib.BEST, mesh: Optional[Mesh] = None,
                  model=None) -> tuple[steps.TrainState, RunMeta]:
  """(state, meta) of a workdir's best checkpoint (or latest; best falls back to latest).

  meta (a RunMeta) holds class_names, epoch, step, history and which checkpoint it came from.
  Arrays are replicated on `mesh` (default: all devices), whatever mesh wrote them.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  model = models.build_model(config) if model is None else model
  target = steps.abstract_train_state(config, model, sharding.replicated(mesh))
  order = [which] + ([ckpt_lib.LATEST] if which == ckpt_lib.BEST else [])
  for name in order:
    if ckpt_lib.has_checkpoint(workdir, name):
      with ckpt_lib.Checkpoints(workdir, read_only=True) as ckpts:  # a live run's own
        restored = ckpts.restore(target, which=name)              # saves stay untouched
      if restored is not None:
        state, meta = restored
        return state, RunMeta.from_json(meta, checkpoint=name)
  raise errors.CheckpointError(
      f"no checkpoint in {pathlib.Path(workdir) / 'checkpoints'}: train first with "
      f"python -m rpsflax.main --config=... --workdir={workdir}")


def load_for_inference(workdir, config=None, which: str = ckpt_lib.BEST):
  """(config, model, params, class_names, predict_fn, meta) of a trained workdir, for
  rpsflax.predict.

  config defaults to the workdir's config.json. predict_fn(params, uint8 images) -> [B, C]
  probabilities; pad batches to a fixed size (see `pad_batch`) to avoid recompiles. meta (a
  RunMeta) says which checkpoint was read (best falls back to latest), its epoch and step.
  """
  if config is None:
    config = report.read_config(workdir)
  model = models.build_model(config)
  state, meta = restore_state(config, workdir, which, model=model)
  return (config, model, state.params, list(meta.class_names),
          steps.make_predict_fn(config, model, state.batch_stats), meta)


def check_init_from(config) -> None:
  """ConfigError unless config.init_from is '' or a workdir holding a checkpoint (seconds, before
  any data is read)."""
  src = config.init_from
  if src and not (ckpt_lib.has_checkpoint(src, ckpt_lib.BEST)
                  or ckpt_lib.has_checkpoint(src, ckpt_lib.LATEST)):
    raise errors.ConfigError(
        f"config.init_from={src!r}: no checkpoint in {pathlib.Path(src) / 'checkpoints'}. Give "
        "the --workdir of a trained run of the same model, or set --config.init_from=''")


def warm_start_variables(src, variables: dict, mesh: Mesh) -> dict:
  """`variables` ({'params', 'batch_stats'} of this run) replaced by those of the best
  checkpoint of workdir `src` (config.init_from). The source run's config.json builds its state
  (its optimizer and trainable set may differ); its parameter tree must be this run's, leaf for
  leaf and shape for shape."""
  src_config = report.read_config(src)
  state, meta = restore_state(src_config, src, ckpt_lib.BEST, mesh)
  found = {"params": state.params, "batch_stats": state.batch_stats or {}}
  want = {k: variables.get(k) or {} for k in found}
  mismatch = [f"{'/'.join(str(p) for p in path)}: {a} there, {b} here"
              for path, a, b in _shape_differences(found, want)]
  if mismatch:
    raise errors.ConfigError(
        f"config.init_from={src!r} holds another model ({src_config.model.name} with head "
        f"{src_config.head.to_dict()}): {len(mismatch)} parameters differ ({'; '.join(mismatch[:3])}"
        f"{'; ...' if len(mismatch) > 3 else ''}). Use a run of this config's model and head.")
  logging.info("init_from: parameters of %s (%s checkpoint, epoch %s)", src, meta.checkpoint,
               meta.epoch)
  return found


def _shape_differences(a, b):
  fa, fb = (traverse_util.flatten_dict(t) for t in (a, b))
  for path in sorted(set(fa) | set(fb), key=str):
    sa = tuple(fa[path].shape) if path in fa else "missing"
    sb = tuple(fb[path].shape) if path in fb else "missing"
    if sa != sb:
      yield path, sa, sb
