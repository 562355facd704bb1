"""The project's exceptions: one base for everything a user can fix, caught by both CLIs.

Every error a user can act on (a config key, a data folder, a weights file, a checkpoint, how the
command was called) derives from `UserError`, so `main` and `predict` print its message once, with
no traceback, and exit 2. Errors that mean a run stopped on purpose with its checkpoints kept
(a NaN/inf loss) are `StoppedError`s (exit 3). This module imports nothing, so any module may
raise these without import cycles.
"""


class UserError(Exception):
  """Something the user can fix; the message names the file or config key and the fix."""


class ConfigError(UserError, ValueError):
  """A config key is missing, misspelt, of the wrong type or out of range."""


class DataError(UserError, ValueError):
  """A data folder, file list or TFDS name cannot be used as asked."""


class WeightsError(UserError, ValueError):
  """A weights file is missing, of an unknown layout, or does not fit the model."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint is missing or cannot be restored into this config."""


class RunError(UserError, ValueError):
  """A mistake in how the command was called (missing workdir, config, checkpoint)."""


class PredictError(UserError, ValueError):
  """Bad input to `rpsflax.predict` (no image files, an unknown class name)."""


class ExportError(UserError, ValueError):
  """`rpsflax.export` cannot write the artifact asked for (flag, output path, or a model the
  format cannot express)."""


class StoppedError(Exception):
  """Training stopped on purpose with its last good checkpoints kept."""


class NonFiniteError(StoppedError, FloatingPointError):
  """The training loss became NaN or infinite; the last finite checkpoints are kept."""


class WriteError(UserError, OSError):
  """A file of the run cannot be written (disk full, quota, permissions): nothing before it lost."""
