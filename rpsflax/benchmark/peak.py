"""This machine's peak: the best of several large matrix products, and on a CPU the figure its ISA,
clock and cores allow.

- jax_dot_<dtype>: a jitted n x n @ n x n dot in the config's dtype (and in float32): XLA's own
  GEMM path (YNNPACK on XLA:CPU, cuBLAS on GPUs). n = 2048 on a CPU, 8192 on an accelerator,
  where a 2048 dot is too short to fill the chip (docs/performance_cpu.md has the figure).
- numpy_blas_float32 (CPU backend only): the same product through NumPy's BLAS (OpenBLAS picks
  its kernels for the CPU at run time).
- theoretical_<dtype> (CPU only): cores x clock x FLOP per cycle per core for the ISA (see
  `flops_per_cycle`); a ceiling from the spec sheet, not a measurement. A VM's /proc/cpuinfo
  gives its nominal clock, and boost clocks exceed it.

`peak_gflops_per_sec` is the best *measured* figure: a rate this machine was seen to reach. The
benchmark adds the peers' forward and train-step rates (`with_rates`): on an AVX-512 Xeon, Keras'
oneDNN convolutions ran 5% faster than either product.
"""

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import cpuinfo


def best_gflops(call, flops: float, seconds: float) -> float:
  """flops / the fastest of repeated calls over `seconds` (at least two calls, the first
  untimed), as GFLOP/s: the attainable rate, not a typical one."""
  call()
  best, t_end = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < t_end or best == float("inf"):
    t0 = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - t0)
  return flops / best / 1e9


def dot_size(backend: str) -> int:
  return 2048 if backend == "cpu" else 8192


def jax_dot_gflops(dtype: str = "float32", n: Optional[int] = None,
                   seconds: float = 2.0) -> float:
  """GFLOP/s of a jitted n x n @ n x n dot in `dtype` on the default device."""
  n = n or dot_size(jax.default_backend())
  a = jnp.ones((n, n), dtype)
  dot = jax.jit(lambda a: a @ a)
  return best_gflops(lambda: jax.block_until_ready(dot(a)), 2.0 * n ** 3, seconds)


def numpy_gemm_gflops(n: int = 2048, seconds: float = 2.0) -> float:
  """GFLOP/s of an n x n float32 product through NumPy's BLAS (all its threads)."""
  a = np.ones((n, n), np.float32)
  return best_gflops(lambda: a @ a, 2.0 * n ** 3, seconds)


def flops_per_cycle(info: cpuinfo.CpuInfo, dtype: str = "float32") -> Optional[tuple]:
  """(FLOP per cycle per core, why) for `dtype` on this CPU, or None where the ISA says nothing.

  Two fused multiply-add pipes per core (2 FLOP per lane each): 8 float32 lanes with AVX2, 16
  with AVX-512, except AMD's Zen 4 (family 25 with AVX-512), which runs 512-bit operations on
  its 256-bit pipes. AVX512-BF16's dot product (vdpbf16ps) does twice fp32's work per lane.
  AMX tiles are not modelled (the figure is then a floor for bf16)."""
  isa = info.isa
  if isa not in ("avx2", "avx512", "avx512_bf16"):
    return None
  lanes = 8 if isa == "avx2" else 16
  why = f"{isa}: 2 FMA pipes x {lanes} fp32 lanes x 2"
  if lanes == 16 and info.vendor == "AuthenticAMD" and info.family == 25:
    lanes, why = 8, f"{isa} on Zen 4: 512-bit ops on 2 x 256-bit FMA pipes, 8 fp32 lanes x 2 x 2"
  per_cycle = 2 * lanes * 2
  if dtype == "bfloat16":
    if isa != "avx512_bf16":
      return None
    per_cycle, why = per_cycle * 2, why + ", x2 for bf16 (vdpbf16ps)"
  return per_cycle, why


def theoretical_gflops(info: cpuinfo.CpuInfo, dtype: str = "float32",
                       cores: Optional[float] = None) -> Optional[dict]:
  """{'gflops_per_sec', 'formula'} from cores x clock x FLOP/cycle, or None where unknown."""
  fpc = flops_per_cycle(info, dtype)
  if fpc is None or not info.mhz:
    return None
  cores = cpuinfo.usable_cores(info) if cores is None else cores
  gflops = cores * info.mhz / 1e3 * fpc[0]
  return {"gflops_per_sec": gflops,
          "formula": f"{cores:g} cores x {info.mhz / 1e3:.2f} GHz ({info.mhz_source}) x "
                     f"{fpc[0]} FLOP/cycle ({fpc[1]})"}


def machine_peak(dtype: str = "float32", seconds: float = 2.0,
                 info: Optional[cpuinfo.CpuInfo] = None) -> dict:
  """Every peak figure for a model computing in `dtype` on the default backend:
  {'peak_gflops_per_sec': best measured, 'peak_source': its name, 'measured': {name: GFLOP/s},
   'theoretical': {name: {gflops_per_sec, formula}} (CPU only), 'dot_size': n}."""
  backend = jax.default_backend()
  n = dot_size(backend)
  measured = {f"jax_dot_{dtype}": jax_dot_gflops(dtype, n, seconds)}
  if dtype != "float32":  # a bf16 model may reach the fp32 product's rate too
    measured["jax_dot_float32"] = jax_dot_gflops("float32", n, seconds)
  theoretical = {}
  if backend == "cpu":
    measured["numpy_blas_float32"] = numpy_gemm_gflops(n, seconds)
    info = info or cpuinfo.this_cpu()
    for dt in dict.fromkeys((dtype, "float32")):
      t = theoretical_gflops(info, dt)
      if t:
        theoretical[f"theoretical_{dt}"] = t
  return with_rates({"measured": {}, "theoretical": theoretical, "dot_size": n}, measured)


def with_rates(peak: dict, rates: dict) -> dict:
  """`peak` with `rates` ({name: GFLOP/s}, None skipped) among its measured figures, and the best
  of them as the peak: a peer's convolution that outruns every product (oneDNN's on AVX-512)
  shows a rate this machine reaches."""
  measured = {**peak["measured"], **{k: v for k, v in rates.items() if v}}
  source = max(measured, key=measured.get)
  return {**peak, "peak_gflops_per_sec": measured[source], "peak_source": source,
          "measured": measured}
