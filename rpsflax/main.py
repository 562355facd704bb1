r"""Train or evaluate one config; everything a run produces lands in its workdir.

Train (and evaluate on the validation split at the end); re-running the same command resumes:

  python -m rpsflax.main --config=configs/rps.py --workdir=runs/rps \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop

Evaluate a trained workdir (its config.json and best checkpoint) on a split or another folder:

  python -m rpsflax.main --mode=evaluate --workdir=runs/catsdogs --split=holdout
  python -m rpsflax.main --mode=evaluate --workdir=runs/rps --data_dir=/path/to/rps-test-set

Mistakes a user can fix (bad config value, missing data or weights) end with one message naming
the key or path and the flag that fixes it, and exit status 2; real bugs keep their traceback.
A NaN/inf loss exits with status 3 and SIGINT/SIGTERM with 130/143 (a checkpoint saved first);
either way the checkpoints already written are kept and the same command resumes.
"""

from rpsflax import cli  # first: sets TensorFlow's environment before anything imports it

import pathlib  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import Optional  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rpsflax import config_check, report  # noqa: E402
from rpsflax import errors, workdir_lock  # noqa: E402
from rpsflax.errors import RunError  # noqa: E402

FLAGS = flags.FLAGS

def init_distributed(config) -> None:
  """jax.distributed.initialize when config.distributed.initialize or RPSFLAX_DISTRIBUTED=1 asks
  for it (see rpsflax.sharding); before anything touches a device."""
  from rpsflax import sharding  # noqa: PLC0415

  if sharding.initialize_distributed(config) and not sharding.is_chief():
    logging.set_verbosity(logging.WARNING)  # progress and INFO lines from process 0 only


def is_chief() -> bool:
  import jax  # noqa: PLC0415

  return jax.process_index() == 0


def save_config(config, workdir: pathlib.Path) -> None:
  """Write config.json for a new workdir; for an existing one say what changed (the training
  core rewrites it once the data has been read, so a run that fails keeps the old one)."""
  path = workdir / report.CONFIG_FILE
  if path.exists():
    import json  # noqa: PLC0415

    changes = report.config_changes(json.loads(path.read_text()), report.config_to_dict(config))
    if changes:
      logging.warning("The config differs from the one %s was started with:\n  %s", workdir,
                      "\n  ".join(changes))
    return  # rewritten by the training core once the data has been read: a failure keeps it
  report.write_config(workdir, config)


def preflight(config, workdir: pathlib.Path) -> None:
  """Fail in seconds, before any model is built or data decoded, when data or weights are missing.

  The training core resolves the weights (an 'imagenet' download, a file, a converted folder) and
  lists a local data folder. When the weights are missing and the folder is too, one message
  says both, so an offline user fixes the command once.
  """
  from rpsflax import data_files  # noqa: PLC0415  (imports no TensorFlow)
  from rpsflax import train as train_lib  # noqa: PLC0415

  try:
    train_lib.preflight(config, workdir)
  except errors.WeightsError as weights_error:
    if config.data.dir:
      try:
        data_files.find_split_folders(config.data.dir)
      except errors.DataError as data_error:
        raise errors.WeightsError(f"{weights_error}\nAlso: {data_error}") from weights_error
    raise


def train(config, workdir: pathlib.Path) -> dict:
  config_check.check_config(config)
  init_distributed(config)
  preflight(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  from rpsflax import train as train_lib  # noqa: PLC0415

  with workdir_lock.hold(workdir, enabled=is_chief()):  # one training run per workdir
    if is_chief():
      save_config(config, workdir)
    return train_lib.train_and_evaluate(config, workdir)


def evaluate(config, workdir: pathlib.Path, split: str, data_dir: str) -> dict:
  """Evaluate with the config the workdir was trained with (its config.json), which built the
  checkpoint; --config is used only for a workdir without one."""
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
  init_distributed(launch)  # None: only RPSFLAX_DISTRIBUTED=1 starts it
  from rpsflax import train as train_lib  # noqa: PLC0415

  return train_lib.evaluate(config, workdir, split=split, data_dir=data_dir or None)


def summary(metrics) -> str:
  if not isinstance(metrics, dict):
    return str(metrics)
  keys = ("split", "accuracy", "loss", "num_examples")
  parts = [f"{k}={metrics[k]:.4f}" if isinstance(metrics.get(k), float) else f"{k}={metrics[k]}"
           for k in keys if metrics.get(k) is not None]
  return " ".join(parts) or str(metrics)


def define_flags() -> None:
  """The command's flags; defined when run as a program, so importing this module has no side effects."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, reports (created if missing).")
  config_flags.DEFINE_config_file(
      "config", None, "Recipe file, e.g. configs/rps.py; override fields with --config.KEY=VALUE. "
      "Optional with --mode=evaluate (the workdir's config.json is used).", lock_config=True)
  flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                    "train: train (resuming from the latest checkpoint) then evaluate; "
                    "evaluate: evaluate the best checkpoint of a trained workdir only.")
  flags.DEFINE_enum("split", "validation", ["validation", "holdout", "train"],
                    "--mode=evaluate: which split of the run's data to evaluate.")
  flags.DEFINE_string("data_dir", "", "--mode=evaluate: evaluate on this folder of class subfolders "
                      "(or Kaggle-style names) instead of a split of the run's data.")
  flags.mark_flag_as_required("workdir")


def _unknown_override(arg: str) -> Optional[str]:
  """For an argument --config.KEY[=VALUE] whose KEY is no config field: a line naming it."""
  m = re.match(r"--?(?:no)?config\.([A-Za-z0-9_.]+)(?:=|$)", arg)
  problem = config_check.unknown_key(m.group(1)) if m else None
  if not problem:
    return None
  flag = f"--config.{m.group(1)}"
  return f"--{problem}" if problem.startswith(flag[2:] + ":") else f"{flag}: {problem}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with mistakes in flags (a --config.KEY that does not exist, a value of the
  wrong type, a recipe file that fails to load) reported in one line instead of a traceback."""
  try:
    args = FLAGS(argv)
    if FLAGS["config"].value is not None:
      FLAGS.config.get("seed")  # a recipe that failed to load raises OSError on first use
    return args
  except flags.Error as e:
    message = str(e)
  except (KeyError, AttributeError, TypeError, ValueError, OSError) as e:  # from config loading
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  unknown = [u for u in map(_unknown_override, argv[1:]) if u]
  if unknown:  # config_flags' own message for a typo is a KeyError repr; name the key instead
    message = "; ".join(unknown)
  cli.fail(f"{message}\nSee python -m rpsflax.main --helpfull for the flags.")


def main(argv):
  cli.setup_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = pathlib.Path(FLAGS.workdir).expanduser()
  start = time.time()
  with cli.exit_on_errors(workdir):
    if FLAGS.mode == "train":
      if FLAGS.config is None:
        raise RunError("--config is required to train, e.g. --config=configs/rps.py")
      if FLAGS.data_dir or FLAGS["split"].present:
        raise RunError("--split and --data_dir belong to --mode=evaluate; to train on a folder use "
                       "--config.data.dir=FOLDER")
      metrics = train(FLAGS.config, workdir)
    else:
      metrics = evaluate(FLAGS.config, workdir, FLAGS.split, FLAGS.data_dir)
  logging.info("%s done in %.0fs: %s", FLAGS.mode, time.time() - start, summary(metrics))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
