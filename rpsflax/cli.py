"""What both command-line entry points (`rpsflax.main`, `rpsflax.predict`) share.

Importing it first thing sets TensorFlow's environment (before anything can import TensorFlow);
`setup_logging` keeps Orbax's INFO lines out of the log; `exit_on_errors` turns the errors a user
can fix into one message and a documented exit status, while real bugs keep their traceback.
"""

import os

# Quiet TensorFlow's C++ logging (--verbosity=1 brings it back, unless the user set the level).
# The input pipeline hides the GPUs from TensorFlow on import
# (tf.config.set_visible_devices([], 'GPU')) so JAX keeps the memory; should TensorFlow start
# before that (Keras downloading weights), it grows instead of grabbing.
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import contextlib  # noqa: E402
import logging as std_logging  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from absl import logging  # noqa: E402

from rpsflax import errors, quiet  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3  # the loss became NaN/inf; interrupted runs exit 128 + signal (130, 143)


# Orbax warns six times that the read-only managers of evaluate/predict (checkpoint.py) are
# read-only: the setting they were asked for, nothing to act on.
_ORBAX_READ_ONLY = ("read_only=True, setting", "Given directory is read only")


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every save and restore at INFO, drowning the training log; keep its warnings
  (but the read-only ones). JAX's INFO lines on the backends it tried ("Unable to initialize
  backend 'tpu'" on every machine without one) go too; its warnings stay."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.name.startswith("jax._src.xla_bridge"):
      return record.levelno >= std_logging.WARNING
    if "/orbax/" not in record.pathname:
      return True
    # A failed background save is logged with its traceback by each Orbax thread, then raised to
    # the caller, which reports it once (e.g. a full disk): keep Orbax's line, not its traceback.
    record.exc_info, record.exc_text = None, None
    if any(s in record.getMessage() for s in _ORBAX_READ_ONLY):
      return False
    return record.levelno >= std_logging.WARNING


def _closed_loop_noise(unraisable) -> bool:
  e = unraisable.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return True
  # The sibling reads of a failed restore, never awaited once the first one failed: each reports
  # the same damage again ("Exception ignored in: <coroutine ...>") at exit.
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and "/orbax/" in code.co_filename


def setup_logging() -> None:
  """Drop Orbax's INFO lines from absl's log (the commands call it; libraries leave logs alone).

  Also drop the 'Event loop is closed' tracebacks of a failed Orbax restore (a damaged weights
  folder or checkpoint): the reads still in flight when the first one fails report, one by one,
  that the loop which awaited them is gone, burying the one error message that says what to do.

  With --verbosity=1 (absl's flag; -v 1) nothing is dropped: TensorFlow's C++ start-up lines
  (rpsflax.quiet), Orbax's and JAX's INFO lines all come back.
  """
  if logging.get_verbosity() >= 1:
    os.environ[quiet.VERBOSE_ENV] = "1"
    if _USER_TF_LOG_LEVEL is None:
      os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # read when TensorFlow is imported, after this
  else:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
      handler.addFilter(_QuietOrbax())
  previous = sys.unraisablehook
  if getattr(previous, "_rpsflax_quiet", False):
    return

  def hook(unraisable):
    if not _closed_loop_noise(unraisable):
      previous(unraisable)
  hook._rpsflax_quiet = True
  sys.unraisablehook = hook


HELP_ARGS = ("--help", "-h", "--helpshort", "-?", "--helpfull")


def exit_on_help(argv, doc: str) -> None:
  """--help: the command's docstring and its own flags on stdout, exit 0 (absl's --help exits 1
  and lists the flags under the module's file name); --helpfull adds every library's flags."""
  asked = [a for a in argv[1:] if a in HELP_ARGS]
  if not asked:
    return
  from absl import flags  # noqa: PLC0415

  if "--helpfull" in asked:
    listed = flags.FLAGS.get_help()
  else:
    listed = flags.FLAGS.main_module_help().strip().split("\n", 1)[-1]  # less the file's name
  print(f"{doc.strip()}\n\nflags:\n{listed}")
  sys.exit(0)


def fail(message: str) -> None:
  """One line on stderr and exit 2: for mistakes found before any work starts."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def exit_on_errors(workdir=None):
  """UserError: its message, exit 2. NaN/inf loss: exit 3. SIGINT/SIGTERM: exit 128 + signal.

  Either way the checkpoints already written are kept and the same command resumes.
  """
  try:
    yield
  except errors.UserError as e:
    fail(str(e))
  except KeyboardInterrupt as e:
    # train.TrainingInterrupted (SIGINT/SIGTERM: a checkpoint was saved, the message says where),
    # or Ctrl-C outside the training loop (nothing since the last checkpoint was saved).
    where = pathlib.Path(workdir) / "checkpoints" if workdir else "the workdir"
    message = str(e) or f"checkpoints already in {where} are kept. Run the same command again."
    print(f"interrupted: {message}", file=sys.stderr, flush=True)
    sys.exit(128 + getattr(e, "signum", signal.SIGINT))
  except errors.StoppedError as e:  # NaN/inf loss: the last good checkpoints are kept
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_NONFINITE)
