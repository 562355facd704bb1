"""A trained workdir, loaded back: its checkpoint as a TrainState and RunMeta (`restore_state`,
for evaluation) and its model as a probabilities function (`load_for_inference`, for prediction)."""

import pathlib
from typing import Optional

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
  """(config, model, params, class_names, predict_fn) of a trained workdir, for rpsflax.predict.

  config defaults to the workdir's config.json. predict_fn(params, uint8 images) -> [B, C]
  probabilities; pad batches to a fixed size (see `pad_batch`) to avoid recompiles.
  """
  if config is None:
    config = report.read_config(workdir)
  model = models.build_model(config)
  state, meta = restore_state(config, workdir, which, model=model)
  return (config, model, state.params, list(meta.class_names),
          steps.make_predict_fn(config, model, state.batch_stats))
