"""`python -m rpsflax.benchmark`: flags, one run of the suite, the table or one JSON object.

Flags may be spelled with dashes (--compare-keras) or underscores (absl's --compare_keras).
--help lists this program's flags (exit 0); --helpfull adds every library's.
"""

import json
import sys

from absl import flags, logging
from ml_collections import config_flags

from rpsflax import errors, models
from rpsflax.benchmark import pipeline, suite, table
from rpsflax.benchmark.timing import BUDGET_SECONDS, MAX_ROUNDS, MIN_ROUNDS, MIN_SECONDS


def normalize_argv(argv: list[str]) -> list[str]:
  """--compare-keras -> --compare_keras (absl flag names use underscores)."""
  out = []
  for a in argv:
    if a.startswith("--") and not a.startswith("--config"):
      name, eq, value = a[2:].partition("=")
      a = "--" + name.replace("-", "_") + eq + value
    out.append(a)
  return out


def decode_workers(values: list[str]) -> list[int]:
  """--decode_workers -> worker counts ([] when not given; 'auto' -> 1, 2, 4, ... CPUs)."""
  if values == ["auto"]:
    return list(pipeline.worker_counts())
  try:
    counts = [int(v) for v in values]
  except ValueError:
    counts = [0]
  if any(c < 1 for c in counts):
    raise flags.Error(f"--decode_workers={','.join(values)}: give positive worker counts "
                      "(1,2,4) or 'auto'")
  return counts


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Recipe, e.g. configs/rps.py "
                                  "(override fields with --config.KEY=VALUE).", lock_config=True)
  flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's batch_size).")
  flags.DEFINE_integer("image_size", 0, "Image side (0: the config's data.image_size).")
  flags.DEFINE_integer("steps", 1, "Steps per timed run (each run also lasts >= --min_seconds).")
  flags.DEFINE_integer("repeats", 0, "Round-robin rounds; figures are their median. 0: as many "
                       f"as fit in --seconds (at least {MIN_ROUNDS}, at most {MAX_ROUNDS}).")
  flags.DEFINE_float("seconds", BUDGET_SECONDS, "Time budget of the timed rounds with "
                     "--repeats=0, for the JAX figures and for each Keras peer.")
  flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation.")
  flags.DEFINE_float("min_seconds", MIN_SECONDS, "A timed run repeats its --steps calls until it "
                     "lasted this long (0: exactly --steps calls).")
  flags.DEFINE_enum("dtype", "", ["", *models.DTYPES],
                    "Compute dtype ('' = the config's model.dtype); params stay float32.")
  flags.DEFINE_string("data_dir", "", "A real image folder for the input-pipeline figures.")
  flags.DEFINE_integer("pipeline_repeats", 3, "Repeats of the input-pipeline measurements.")
  flags.DEFINE_list("decode_workers", [], "With --data_dir: images/s decoding its images with "
                    "each of these worker counts (e.g. 1,2,4,8,16; 'auto': 1, 2, 4, ... up to "
                    "the host's CPUs), for PIL (processes and threads) and tf.data.")
  flags.DEFINE_bool("compare_keras", False, "Also time the same model in Keras 3 on TensorFlow "
                    "and on JAX, each in a worker process (--compare-keras).")
  flags.DEFINE_bool("compare_flags", False, "Also time the JAX steps with XLA's default CPU flags "
                    "(RPSFLAX_XLA_CPU_FLAGS=0) in a subprocess (--compare-flags).")
  flags.DEFINE_bool("finetune", True, "Also time the step with everything trainable.")
  flags.DEFINE_bool("scaling", True, "With several devices, time 1, 2, 4, ..., N of them.")
  flags.DEFINE_string("weights", "", "config.weights to load ('' = random He-normal init).")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.DEFINE_string("out", "", "Also write the JSON object to this file.")
  flags.DEFINE_enum("bf16_row", "auto", list(suite.BF16_ROW), "With --compare-keras on a CPU: "
                    "also time the train step in bfloat16 beside Keras' mixed_bfloat16 policy "
                    "(auto: where the CPU has AVX512-BF16).")


USAGE = """Throughput of a config on this machine: jit train/eval steps, the backbone forward,
the input pipeline, and the same model in Keras, in one run.

  python -m rpsflax.benchmark --config=configs/rps.py [--compare-keras] [--json]

What each figure means: `pydoc rpsflax.benchmark`, docs/performance_cpu.md and BENCHMARKS.md.
"""


def help_text(full: bool = False) -> str:
  """USAGE and this program's flags (with `full`, every defined flag, absl's --helpfull)."""
  FLAGS = flags.FLAGS  # noqa: N806
  own = FLAGS.module_help(__name__).strip().split("\n", 1)[-1]  # less absl's module name
  return USAGE + "\nflags:\n" + (FLAGS.get_help() if full else own)


def main(argv=None) -> int:
  argv = normalize_argv(list(sys.argv if argv is None else argv))
  define_flags()
  FLAGS = flags.FLAGS  # noqa: N806
  help_asked = [a for a in argv[1:] if a in ("--help", "-h", "--helpshort", "-?", "--helpfull")]
  if help_asked:
    print(help_text(full="--helpfull" in help_asked))
    return 0
  try:
    FLAGS(argv)
    if FLAGS.config is None:
      raise flags.Error("--config is required, e.g. --config=configs/rps.py")
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  log = (lambda s: print(s, file=sys.stderr, flush=True)) if FLAGS.json else (
      lambda s: print(s, flush=True))

  try:
    result = suite.run(
        FLAGS.config, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
        dtype=FLAGS.dtype, steps=FLAGS.steps, repeats=FLAGS.repeats, warmup=FLAGS.warmup,
        data_dir=FLAGS.data_dir, compare_keras=FLAGS.compare_keras, finetune=FLAGS.finetune,
        scaling=FLAGS.scaling, weights=FLAGS.weights,
        config_name=FLAGS["config"].config_filename if hasattr(
            FLAGS["config"], "config_filename") else "",
        pipeline_repeats=FLAGS.pipeline_repeats, min_seconds=FLAGS.min_seconds,
        decode_workers=decode_workers(FLAGS.decode_workers),
        budget_seconds=FLAGS.seconds,
        compare_flags_argv=argv[1:] if FLAGS.compare_flags else None,
        bf16_row=FLAGS.bf16_row, log=log)
  except (errors.UserError, flags.Error) as e:  # a bad key, folder or --decode_workers
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=1, default=lambda x: x.item())  # NumPy scalars -> Python
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  print(text if FLAGS.json else table.format_table(json.loads(text)), flush=True)
  return 0

