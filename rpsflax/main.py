r"""Train or evaluate one config; everything a run produces lands in its workdir.

Train (and evaluate on the validation split at the end); re-running the same command resumes:

  python -m rpsflax.main --config=configs/rps.py --workdir=runs/rps \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop

Evaluate a trained workdir (its config.json and best checkpoint) on a split or another folder:

  python -m rpsflax.main --mode=evaluate --workdir=runs/catsdogs --split=holdout
  python -m rpsflax.main --mode=evaluate --workdir=runs/rps --data_dir=/path/to/rps-test-set

Every config key, its value and its meaning: --config=configs/rps.py --show_config.
The best checkpoint (highest validation accuracy) is what the training run's final evaluation,
--mode=evaluate and rpsflax.predict use; each names it (epoch, step) in its last log line, which
also lists the files written. --verbosity=1 shows the libraries' own start-up lines.

Mistakes a user can fix (bad config value, missing data or weights) end with one message naming
the key or path and the flag that fixes it, and exit status 2; real bugs keep their traceback.
A NaN/inf loss exits with status 3 and SIGINT/SIGTERM with 130/143 (a checkpoint saved first);
either way the checkpoints already written are kept and the same command resumes.
"""

import pathlib
import re
import time
from typing import Optional

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rpsflax import cli, config_check, report  # cli first: TensorFlow's environment, before any import
from rpsflax.errors import RunError

FLAGS = flags.FLAGS


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
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "--mode=evaluate: which checkpoint (best: the highest validation accuracy, as "
                    "the training run's final evaluation and rpsflax.predict use).")
  flags.DEFINE_bool("show_config", False, "Print every config key with its value (the recipe's, "
                    "with --config.KEY overrides) and its meaning, then exit.")


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
    cli.fail(f"{message}\n{config_check.SHOW_CONFIG_HINT}")
  cli.fail(f"{message}\nSee python -m rpsflax.main --help for the flags.")


def main(argv):
  cli.setup_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.show_config:
    if FLAGS.config is None:
      cli.fail("--show_config needs --config=RECIPE, e.g. --config=configs/rps.py")
    print(config_check.describe(FLAGS.config))
    return
  if not FLAGS.workdir:
    cli.fail("--workdir is required: the folder of the run (created if missing), e.g. "
             "--workdir=runs/rps")
  workdir = pathlib.Path(FLAGS.workdir).expanduser()
  start = time.time()
  recipe = config_flags.get_config_filename(FLAGS["config"]) if FLAGS.config is not None else None
  logging.info("rpsflax %s: config %s, workdir %s", FLAGS.mode,
               recipe or f"{workdir / 'config.json'}", workdir)
  # JAX, TensorFlow and the training code load only now: a mistake in the flags is reported
  # in a second. (Nothing touches a device before train/evaluate start jax.distributed.)
  from rpsflax import evaluation, timing, train  # noqa: PLC0415

  with cli.exit_on_errors(workdir):
    if FLAGS.mode == "train":
      if FLAGS.config is None:
        raise RunError("--config is required to train, e.g. --config=configs/rps.py")
      if FLAGS.data_dir or FLAGS["split"].present or FLAGS["checkpoint"].present:
        raise RunError("--split, --data_dir and --checkpoint belong to --mode=evaluate; to train "
                       "on a folder use --config.data.dir=FOLDER")
      metrics = train.train_and_evaluate(FLAGS.config, workdir,
                                         started=timing.process_start_time())
    else:
      metrics = evaluation.evaluate(FLAGS.config, workdir, FLAGS.split, FLAGS.data_dir,
                                    FLAGS.checkpoint)
  # The last lines: accuracy, the checkpoint used, where eval.json and the figures are.
  logging.info("%s", report.run_summary(FLAGS.mode, time.time() - start, metrics))


if __name__ == "__main__":
  define_flags()
  cli.exit_on_help(sys.argv, __doc__)
  app.run(main, flags_parser=parse_flags)
