"""What a checkpoint records about its run besides the arrays: the JSON beside the TrainState."""

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class RunMeta:
  """Progress of a training run, saved with every checkpoint and restored on resume.

  `partial` is set only for a checkpoint taken mid-epoch (SIGINT/SIGTERM): the metric sums and
  seconds of the epoch's steps already done, so the resumed epoch reports what an unbroken one
  would. `checkpoint` says which checkpoint ('best' or 'latest') it was restored from; not saved.
  """
  epoch: int = 0                          # epochs finished
  step: int = 0                           # optimizer steps taken
  steps_per_epoch: Optional[int] = None   # of the data it was trained on (resume checks it)
  history: list = dataclasses.field(default_factory=list)  # history.json's rows so far
  best_val_accuracy: Optional[float] = None
  val_accuracy: Optional[float] = None
  class_names: list = dataclasses.field(default_factory=list)
  partial: Optional[dict] = None          # {"sums": {...}, "seconds": s} mid-epoch, else None
  checkpoint: str = ""

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    del out["checkpoint"]
    return out

  @classmethod
  def from_json(cls, meta: dict, checkpoint: str = "") -> "RunMeta":
    """From a checkpoint's JSON; keys this version does not know are ignored."""
    names = {f.name for f in dataclasses.fields(cls)} - {"checkpoint"}
    known: dict[str, Any] = {k: v for k, v in meta.items() if k in names}
    known["history"] = list(known.get("history") or [])
    known["class_names"] = list(known.get("class_names") or [])
    return cls(**known, checkpoint=checkpoint)

  def checkpoint_record(self) -> dict:
    """Which checkpoint this is, for eval.json and predictions ('checkpoint'): which, epoch, step
    and its folder. Training's final evaluation, --mode=evaluate and predict all record it."""
    return checkpoint_record(self.checkpoint, self.epoch, self.step)


def checkpoint_record(which: str, epoch: int, step: int) -> dict:
  """The folder is relative to the workdir: the same run in two workdirs records the same."""
  return {"which": which, "epoch": int(epoch), "step": int(step),
          "path": f"checkpoints/{which}/{int(step)}"}


def describe_checkpoint(record: dict) -> str:
  """'the best checkpoint (epoch 2, step 10)': how every command's log names what it used."""
  return f"the {record['which']} checkpoint (epoch {record['epoch']}, step {record['step']})"
