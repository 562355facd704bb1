r"""Label image files or folders with a trained workdir.

  python -m rpsflax.predict --workdir=runs/rps photo1.png hands/
  python -m rpsflax.predict --workdir=runs/rps --output=preds.csv --grid=preds.png hands/
  python -m rpsflax.predict --workdir=runs/catsdogs --submission=submission.csv test1/

The model is the workdir's config.json and its best checkpoint (the highest validation accuracy:
the one the training run's final evaluation and --mode=evaluate use; --checkpoint=latest for the
last epoch's), named in the log and in --output=*.json. Images are read and resized exactly
as in training (the input pipeline's `load_images`) and preprocessed by the same jit-compiled
function; each line printed is `file<TAB>label<TAB>probability`. --submission writes Kaggle's
`id,label` (id: the numeric file stem, label: the probability of the positive class, 'dog' for
cats vs dogs), sorted by id. Unreadable files are reported and skipped. The last log line sums
up: the checkpoint, the accuracy where folder or file names give the classes, the files written.
"""

import sys

from absl import app, flags, logging

from rpsflax import cli  # first: TensorFlow's environment, before anything imports it

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a program, so importing this module has no side effects."""
  flags.DEFINE_string("workdir", None, "A trained run's workdir (config.json + checkpoints/).")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to use (best: "
                    "the highest validation accuracy, as training's final evaluation).")
  flags.DEFINE_integer("batch_size", 32, "Images per forward pass (padded, so one compilation).")
  flags.DEFINE_string("output", "", "Write predictions to this .csv or .json file.")
  flags.DEFINE_string("grid", "", "Draw a grid of images with their predicted labels to this .png.")
  flags.DEFINE_integer("grid_max", 32, "At most this many images in --grid.")
  flags.DEFINE_string("submission", "", "Write a Kaggle submission CSV (id,label) to this file.")
  flags.DEFINE_string("positive_class", "", "Class whose probability --submission writes "
                      "(default: 'dog' when the model has it, else the second of two classes).")
  flags.DEFINE_bool("quiet", False, "Do not print one line per image.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("name at least one image file or folder: "
                         "python -m rpsflax.predict --workdir=W PATH...")
  cli.setup_logging()
  logging.info("rpsflax predict: workdir %s, %s", FLAGS.workdir, " ".join(paths))
  from rpsflax import prediction  # noqa: PLC0415  (JAX and TensorFlow load after the flags parse)

  with cli.exit_on_errors():
    prediction.run(FLAGS.workdir, paths, which=FLAGS.checkpoint, batch_size=FLAGS.batch_size,
                   output=FLAGS.output, grid=FLAGS.grid, grid_max=FLAGS.grid_max,
                   submission=FLAGS.submission, positive=FLAGS.positive_class, quiet=FLAGS.quiet)


if __name__ == "__main__":
  define_flags()
  cli.exit_on_help(sys.argv, __doc__)
  app.run(main)
