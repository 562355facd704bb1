"""The trained workdir an export starts from: its config, model, variables, class names, which
checkpoint (epoch, step) and the probabilities function `rpsflax.predict` uses.

Loaded once through `restore.restore_state` and `steps.make_predict_fn`, the two calls
`restore.load_for_inference` makes, kept apart here because an export also needs the run's
metadata (epoch, step) and the BatchNorm statistics themselves, not only closed over.
"""

import dataclasses
import pathlib
from typing import Any, Callable

from rpsflax import checkpoint as ckpt_lib
from rpsflax import errors, models, report, restore, steps
from rpsflax.run_meta import RunMeta


@dataclasses.dataclass
class Source:
  workdir: pathlib.Path
  config: Any              # the workdir's config.json, as a ConfigDict
  model: Any               # the Flax Classifier
  params: dict
  batch_stats: dict        # {} for models without BatchNorm
  meta: RunMeta            # epoch, step, class names, which checkpoint
  predict_fn: Callable     # predict_fn(params, uint8 [B, H, W, 3]) -> [B, C], as rpsflax.predict

  @property
  def class_names(self) -> list[str]:
    return list(self.meta.class_names)

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def variables(self) -> dict:
    return steps.model_variables(self.params, self.batch_stats)

  def probabilities(self, images):
    """[N, C] float32 probabilities, exactly as `rpsflax.predict` computes them."""
    return self.predict_fn(self.params, images)


def check_workdir(workdir, which: str) -> pathlib.Path:
  """ExportError naming --workdir unless it holds config.json and a checkpoint (no JAX work)."""
  workdir = pathlib.Path(workdir).expanduser()
  if not (workdir / report.CONFIG_FILE).is_file():
    raise errors.ExportError(f"--workdir={workdir}: no {report.CONFIG_FILE}, so not a training "
                             "run's workdir (train one with python -m rpsflax.main)")
  names = [which] + ([ckpt_lib.LATEST] if which == ckpt_lib.BEST else [])
  if not any(ckpt_lib.has_checkpoint(workdir, n) for n in names):
    raise errors.ExportError(f"--workdir={workdir}: no {which} checkpoint in "
                             f"{workdir / 'checkpoints'}: train first with python -m rpsflax.main "
                             f"--config=... --workdir={workdir}")
  return workdir


def load(workdir, which: str = ckpt_lib.BEST) -> Source:
  workdir = check_workdir(workdir, which)
  config = report.read_config(workdir)
  model = models.build_model(config)
  try:
    state, meta = restore.restore_state(config, workdir, which, model=model)
  except errors.CheckpointError as e:
    raise errors.ExportError(f"--workdir={workdir}: {e}") from e
  stats = state.batch_stats or {}
  return Source(workdir=workdir.resolve(), config=config, model=model, params=state.params,
                batch_stats=stats, meta=meta,
                predict_fn=steps.make_predict_fn(config, model, stats))
