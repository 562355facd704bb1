"""What this CPU is: model, vector ISA, cores and clock, read from /proc/cpuinfo (and lscpu for
the maximum clock). No JAX here: `import rpsflax` reads it before any backend starts.

The ISA names the project picks XLA:CPU flags by (rpsflax/xla_cpu.py) and counts a theoretical
peak from (rpsflax/benchmark/peak.py):
  avx512_bf16  AVX-512 Foundation and the AVX512-BF16 dot product (bf16 at twice fp32's rate)
  avx512       AVX-512 Foundation
  avx2         AVX2 and FMA (256-bit fused multiply-add)
  x86          an x86-64 CPU with less than that
  other        not x86-64, or nothing could be read
"""

import dataclasses
import functools
import os
import platform
import re
import shutil
import subprocess
from typing import Optional

ISAS = ("avx512_bf16", "avx512", "avx2", "x86", "other")
# The /proc/cpuinfo flags worth recording in a benchmark's JSON (the rest say nothing about speed).
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  model_name: str
  machine: str           # platform.machine(): 'x86_64', 'aarch64', ...
  vendor: str            # 'AuthenticAMD', 'GenuineIntel', '' when unknown
  family: Optional[int]  # cpuid family (AMD 25 = Zen 3/4, 26 = Zen 5)
  flags: frozenset
  threads_per_core: int  # 'siblings' / 'cpu cores' of the first package: 2 with SMT
  mhz: Optional[float]   # the maximum clock where lscpu gives it, else /proc/cpuinfo's current
  mhz_source: str

  @property
  def isa(self) -> str:
    return isa_of(self.flags, self.machine)

  @property
  def vector_flags(self) -> list[str]:
    return [f for f in VECTOR_FLAGS if f in self.flags]


def isa_of(flags, machine: str = "x86_64") -> str:
  """The ISA name (see ISAS) of a `machine` with these /proc/cpuinfo `flags`."""
  flags = set(flags)
  if "avx512f" in flags:
    return "avx512_bf16" if "avx512_bf16" in flags else "avx512"
  if {"avx2", "fma"} <= flags:
    return "avx2"
  return "x86" if machine.lower() in ("x86_64", "amd64") else "other"


def parse_cpuinfo(text: str, lscpu_max_mhz: Optional[float] = None,
                  machine: str = platform.machine()) -> CpuInfo:
  """CpuInfo from the text of /proc/cpuinfo (its first processor block says it all)."""
  fields = {}
  for line in text.split("\n\n", 1)[0].splitlines():
    key, sep, value = line.partition(":")
    if sep:
      fields.setdefault(key.strip(), value.strip())

  def number(key, kind=int):
    try:
      return kind(fields[key])
    except (KeyError, ValueError):
      return None
  siblings, cores = number("siblings"), number("cpu cores")
  mhz = number("cpu MHz", float)
  return CpuInfo(
      model_name=fields.get("model name", "") or platform.processor() or "unknown",
      machine=machine, vendor=fields.get("vendor_id", ""), family=number("cpu family"),
      flags=frozenset(fields.get("flags", "").split()),
      threads_per_core=max(1, siblings // cores) if siblings and cores else 1,
      mhz=lscpu_max_mhz or mhz,
      mhz_source=("lscpu 'CPU max MHz'" if lscpu_max_mhz else
                  "/proc/cpuinfo 'cpu MHz' (the current clock; a VM reports its nominal one)"
                  if mhz else "unknown"))


def _lscpu_max_mhz() -> Optional[float]:
  if not shutil.which("lscpu"):
    return None
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                         env={**os.environ, "LC_ALL": "C"}).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
  return float(m.group(1)) if m else None


@functools.cache
def flags_only() -> CpuInfo:
  """This CPU from /proc/cpuinfo alone (no lscpu: cheap enough for `import rpsflax`)."""
  try:
    with open("/proc/cpuinfo") as f:
      return parse_cpuinfo(f.read())
  except OSError:
    return parse_cpuinfo("")


@functools.cache
def this_cpu() -> CpuInfo:
  """This CPU, with lscpu's maximum clock where it reports one."""
  try:
    with open("/proc/cpuinfo") as f:
      return parse_cpuinfo(f.read(), _lscpu_max_mhz())
  except OSError:
    return parse_cpuinfo("")


def usable_cores(info: CpuInfo) -> float:
  """Physical cores this process may run on: its CPUs (affinity) over the threads per core."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cpus = os.cpu_count() or 1
  return cpus / info.threads_per_core
