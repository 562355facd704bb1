"""XLA:CPU flags the project sets, merged into the user's XLA_FLAGS before the backend starts.

jaxlib 0.10 hands convolutions and reductions on the CPU to YNNPACK. On the two models' layers
YNNPACK's convolutions ran 3-13x slower than XLA's Eigen path (forward and, worse, backward) and
its reductions slow the max-pool; dots stay with YNNPACK, where they are fast. The figures are in
BENCHMARKS.md ("XLA:CPU flags"); `python -m rpsflax.benchmark --compare-flags` measures them again.

- Only `--xla_cpu_*` flags: read by the CPU backend alone, so a GPU or TPU run is unchanged.
- Merged, never replacing: a flag the user already put in XLA_FLAGS wins, the rest is kept.
- Off with RPSFLAX_XLA_CPU_FLAGS=0 (then XLA_FLAGS is left exactly as the user set it).
- XLA reads XLA_FLAGS once, when the first backend starts: `import rpsflax` (any module of it)
  applies them, so they hold for the CLIs and for code that imports rpsflax before computing.
"""

import os

OPT_OUT_ENV = "RPSFLAX_XLA_CPU_FLAGS"
# flag name -> value.
CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-reduce"}


def enabled(environ=os.environ) -> bool:
  return environ.get(OPT_OUT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def merged_xla_flags(user_flags: str, flags: dict = CPU_FLAGS) -> str:
  """`user_flags` plus each of `flags` the user did not set themselves (by flag name)."""
  user_names = {f.split("=", 1)[0] for f in user_flags.split()}
  extra = [f"{name}={value}" for name, value in flags.items() if name not in user_names]
  return " ".join([user_flags.strip(), *extra]).strip()


def without_cpu_flags(xla_flags: str, flags: dict = CPU_FLAGS) -> str:
  """`xla_flags` less any of `flags` (by name): XLA's defaults for those, the rest kept."""
  return " ".join(f for f in xla_flags.split() if f.split("=", 1)[0] not in flags)


def apply(environ=os.environ) -> str:
  """Merge CPU_FLAGS into environ['XLA_FLAGS'] unless opted out; returns the resulting value."""
  if enabled(environ):
    environ["XLA_FLAGS"] = merged_xla_flags(environ.get("XLA_FLAGS", ""))
  return environ.get("XLA_FLAGS", "")
