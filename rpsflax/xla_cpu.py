"""XLA:CPU flags the project sets, picked by what the CPU is, merged into the user's XLA_FLAGS
before the backend starts.

jaxlib 0.10 hands convolutions and reductions on the CPU to YNNPACK. On the two models' layers
YNNPACK's convolutions ran slower than XLA's Eigen path on AVX2 (forward and, worse, backward)
and its reductions slow the max-pool; dots stay with YNNPACK, where they are fast. The figures,
per layer and per ISA, are in docs/performance_cpu.md; `scripts/profile_convs.py` and
`python -m rpsflax.benchmark --compare-flags` measure them again on any CPU.

- Per ISA (rpsflax/cpuinfo.py reads it from /proc/cpuinfo at import): FLAGS_BY_ISA names each
  ISA's flags and what they rest on. AVX2 and AVX-512 (with AVX512-BF16 and AMX) have been
  profiled; both came to the same choice.
- Only `--xla_cpu_*` flags: read by the CPU backend alone, so a GPU or TPU run is unchanged.
- Merged, never replacing: a flag the user already put in XLA_FLAGS wins, the rest is kept.
- Off with RPSFLAX_XLA_CPU_FLAGS=0 (then XLA_FLAGS is left exactly as the user set it).
- XLA reads XLA_FLAGS once, when the first backend starts: `import rpsflax` (any module of it)
  applies them, so they hold for the CLIs and for code that imports rpsflax before computing.
"""

import os
from typing import Optional

from rpsflax import cpuinfo

OPT_OUT_ENV = "RPSFLAX_XLA_CPU_FLAGS"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Convolutions and reductions on XLA's Eigen path, dots on YNNPACK.
EIGEN_CONVOLUTIONS = {YNN_FLAG: "-individual_convolution,-reduce"}

# ISA (cpuinfo.ISAS) -> (flag name -> value, what the choice rests on).
FLAGS_BY_ISA = {
    "avx512_bf16": (EIGEN_CONVOLUTIONS, "measured on AVX-512 + AVX512-BF16 + AMX (Xeon): Eigen "
                                        "faster than YNNPACK and than conv as patches + dot on "
                                        "every fp32 layer, forward and gradient; YNNPACK's "
                                        "reductions made the CNN's train step 2.4x slower"),
    "avx512": (EIGEN_CONVOLUTIONS, "not profiled without AVX512-BF16: avx512_bf16's choice"),
    "avx2": (EIGEN_CONVOLUTIONS, "measured on AVX2 (Zen 3 EPYC): Eigen 3-13x faster than "
                                 "YNNPACK per layer, and than conv as patches + dot"),
    "x86": (EIGEN_CONVOLUTIONS, "not profiled: AVX2's choice"),
    "other": (EIGEN_CONVOLUTIONS, "not profiled: AVX2's choice"),
}
# Every flag any ISA sets: what `without_cpu_flags` removes.
ALL_FLAG_NAMES = frozenset(name for flags, _ in FLAGS_BY_ISA.values() for name in flags)


def enabled(environ=os.environ) -> bool:
  return environ.get(OPT_OUT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def detected_isa() -> str:
  return cpuinfo.flags_only().isa


def cpu_flags(isa: Optional[str] = None) -> dict:
  """{flag name: value} this project sets on a CPU of `isa` (default: this CPU's)."""
  return dict(FLAGS_BY_ISA[isa or detected_isa()][0])


def merged_xla_flags(user_flags: str, flags: Optional[dict] = None) -> str:
  """`user_flags` plus each of `flags` (default: this CPU's) the user did not set themselves
  (by flag name)."""
  flags = cpu_flags() if flags is None else flags
  user_names = {f.split("=", 1)[0] for f in user_flags.split()}
  extra = [f"{name}={value}" for name, value in flags.items() if name not in user_names]
  return " ".join([user_flags.strip(), *extra]).strip()


def without_cpu_flags(xla_flags: str, names=ALL_FLAG_NAMES) -> str:
  """`xla_flags` less any flag this project may set (by name): XLA's defaults for those, the
  rest kept."""
  return " ".join(f for f in xla_flags.split() if f.split("=", 1)[0] not in names)


def apply(environ=os.environ, isa: Optional[str] = None) -> str:
  """Merge the flags of `isa` (default: this CPU's) into environ['XLA_FLAGS'] unless opted out;
  returns the resulting value."""
  if enabled(environ):
    environ["XLA_FLAGS"] = merged_xla_flags(environ.get("XLA_FLAGS", ""), cpu_flags(isa))
  return environ.get("XLA_FLAGS", "")


def describe(environ=os.environ) -> dict:
  """What was chosen for this CPU, for a benchmark's JSON."""
  isa = detected_isa()
  flags, basis = FLAGS_BY_ISA[isa]
  return {"isa": isa, "enabled": enabled(environ),
          "flags": [f"{k}={v}" for k, v in flags.items()] if enabled(environ) else [],
          "basis": basis}
