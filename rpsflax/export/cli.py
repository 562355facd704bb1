r"""Export a trained workdir (docs/export.md).

  python -m rpsflax.export --workdir=runs/rps --format=stablehlo --output=rps.stablehlo
  python -m rpsflax.export --workdir=runs/rps --format=keras --output=rps.keras
  python -m rpsflax.export --workdir=runs/rps --format=onnx --output=rps.onnx
  python -m rpsflax.export --workdir=runs/rps --format=savedmodel --output=rps_savedmodel/1

Each writes the artifact and PATH.manifest.json beside it (class names, input, preprocessing,
source checkpoint, parity against rpsflax.predict measured at export time). Nothing is written
when the artifact and rpsflax.predict disagree by more than --max_diff.
"""

from absl import app, flags

from rpsflax import cli  # first: TensorFlow's environment, before anything imports it
from rpsflax.export import FORMATS  # a dict: imports nothing heavy

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a program, so importing this module has no side effects. --format and
  --checkpoint are checked by the exporter, so a bad value is one line and exit 2."""
  flags.DEFINE_string("workdir", None, "A trained run's workdir (config.json + checkpoints/).")
  flags.DEFINE_string("format", None, "stablehlo | keras | onnx | savedmodel.")
  flags.DEFINE_string("output", None, "The file (a folder for savedmodel) to write; must not exist.")
  flags.DEFINE_string("checkpoint", "best", "best | latest (best falls back to latest).")
  flags.DEFINE_list("images", [], "Image files or folders for the parity check (default: the "
                    "workdir's data folder, else a seeded synthetic batch).")
  flags.DEFINE_integer("parity_images", 16, "At most this many images for the parity check.")
  flags.DEFINE_float("max_diff", None, "Refuse to write when any probability differs from "
                     "rpsflax.predict's by more than this (default: the format's bound, 1e-5 "
                     "for stablehlo, 1e-3 for TensorFlow's kernels, 2e-3 for ONNX Runtime).")
  flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "stablehlo: platforms to lower for.")
  for name in ("workdir", "format", "output"):
    flags.mark_flag_as_required(name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: use --images=a.png,b.png")
  cli.setup_logging()
  if FLAGS.format not in FORMATS:  # one line, before JAX or TensorFlow load
    cli.fail(f"--format={FLAGS.format!r}: use one of {', '.join(FORMATS)}")
  with cli.exit_on_errors():
    from rpsflax.export import exporter  # noqa: PLC0415  (JAX loads after the flags parse)

    exporter.export(FLAGS.workdir, FLAGS.format, FLAGS.output, which=FLAGS.checkpoint,
                    images=FLAGS.images, count=FLAGS.parity_images, max_diff=FLAGS.max_diff,
                    options={"platforms": FLAGS.platforms})


def run() -> None:
  define_flags()
  app.run(main)
