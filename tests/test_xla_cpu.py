"""The project's XLA:CPU flags: merged into the user's XLA_FLAGS, never replacing them."""

import json
import subprocess
import sys

from commands import REPO, cli_env
from rpsflax import cpuinfo, xla_cpu

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_merge_keeps_the_users_flags_and_adds_ours():
  merged = xla_cpu.merged_xla_flags("--xla_force_host_platform_device_count=2")
  assert merged.split() == ["--xla_force_host_platform_device_count=2",
                            f"{FLAG}=-individual_convolution,-reduce"]
  assert xla_cpu.merged_xla_flags("") == f"{FLAG}=-individual_convolution,-reduce"


def test_a_flag_the_user_set_wins():
  assert xla_cpu.merged_xla_flags(f"{FLAG}=") == f"{FLAG}="
  assert xla_cpu.merged_xla_flags(f"--a=1 {FLAG}=-reduce --b") == f"--a=1 {FLAG}=-reduce --b"


def test_without_cpu_flags_keeps_only_the_users():
  merged = xla_cpu.merged_xla_flags("--a=1 --b")
  assert xla_cpu.without_cpu_flags(merged) == "--a=1 --b"
  assert xla_cpu.without_cpu_flags(f"{FLAG}=-reduce") == ""


def test_only_cpu_flags_for_every_isa():
  assert set(xla_cpu.FLAGS_BY_ISA) == set(cpuinfo.ISAS)
  for isa, (flags, basis) in xla_cpu.FLAGS_BY_ISA.items():
    assert all(name.startswith("--xla_cpu_") for name in flags), isa
    assert basis, isa  # each choice says what it rests on


def cpuinfo_text(flags: str, vendor="AuthenticAMD", family=25, siblings=2, cores=2) -> str:
  return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
          f"model name\t: Test CPU\ncpu MHz\t\t: 2400.000\nsiblings\t: {siblings}\n"
          f"cpu cores\t: {cores}\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"
          f"flags\t\t: avx512f avx512_bf16\n")


def test_the_isa_is_read_from_cpuinfo():
  """From the first processor's block: AVX2 + FMA, AVX-512, AVX-512 with BF16; less than AVX2
  on x86 is 'x86'; a non-x86 machine is 'other'."""
  isa = lambda flags, **kw: cpuinfo.parse_cpuinfo(cpuinfo_text(flags), **kw).isa
  assert isa("avx avx2 fma") == "avx2"
  assert isa("avx avx2 fma avx512f avx512bw") == "avx512"
  assert isa("avx avx2 fma avx512f avx512_bf16 amx_bf16") == "avx512_bf16"
  assert isa("avx avx2") == "x86" and isa("") == "x86"
  assert isa("", machine="aarch64") == "other"
  info = cpuinfo.parse_cpuinfo(cpuinfo_text("avx2 fma", siblings=4, cores=2), 3700.0)
  assert (info.model_name, info.vendor, info.family) == ("Test CPU", "AuthenticAMD", 25)
  assert info.threads_per_core == 2 and info.mhz == 3700.0 and "lscpu" in info.mhz_source
  assert info.vector_flags == ["avx2", "fma"]
  assert cpuinfo.parse_cpuinfo("").isa in ("x86", "other")  # nothing readable: no crash


def test_the_flags_are_those_of_the_detected_isa(monkeypatch):
  """Faking the detected CPU: `apply` (what `import rpsflax` runs) merges the flags of the ISA
  read from /proc/cpuinfo, and `describe` reports that choice."""
  monkeypatch.setitem(xla_cpu.FLAGS_BY_ISA, "avx512", ({"--xla_cpu_a": "512"}, "test"))
  monkeypatch.setitem(xla_cpu.FLAGS_BY_ISA, "avx2", ({"--xla_cpu_a": "256"}, "test"))
  for flags, want in (("avx avx2 fma avx512f", "512"), ("avx avx2 fma", "256")):
    fake = cpuinfo.parse_cpuinfo(cpuinfo_text(flags))
    monkeypatch.setattr(cpuinfo, "flags_only", lambda fake=fake: fake)
    env = {"XLA_FLAGS": "--x=1"}
    assert xla_cpu.apply(env) == f"--x=1 --xla_cpu_a={want}"
    assert xla_cpu.describe(env)["flags"] == [f"--xla_cpu_a={want}"]
    assert xla_cpu.describe({xla_cpu.OPT_OUT_ENV: "0"})["flags"] == []


def test_opt_out_leaves_xla_flags_alone():
  env = {"XLA_FLAGS": "--x=1", xla_cpu.OPT_OUT_ENV: "0"}
  assert xla_cpu.apply(env) == "--x=1" and env["XLA_FLAGS"] == "--x=1"
  env = {xla_cpu.OPT_OUT_ENV: "off"}
  xla_cpu.apply(env)
  assert "XLA_FLAGS" not in env
  env = {"XLA_FLAGS": "--x=1"}
  assert xla_cpu.apply(env) == f"--x=1 {FLAG}=-individual_convolution,-reduce"


def run_python(code: str, **env) -> dict:
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(**env),
                        capture_output=True, text=True, timeout=120, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_rpsflax_sets_them_before_the_backend_starts():
  """In a fresh process: `import rpsflax` merges the flag, and the user's own flag (two host
  devices) still takes effect in the backend that starts afterwards."""
  code = ("import json, os, rpsflax, jax; "
          "print(json.dumps({'flags': os.environ['XLA_FLAGS'], 'n': jax.device_count()}))")
  out = run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert out["n"] == 2
  assert out["flags"].split() == ["--xla_force_host_platform_device_count=2",
                                  f"{FLAG}=-individual_convolution,-reduce"]
  off = run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   **{xla_cpu.OPT_OUT_ENV: "0"})
  assert off["flags"] == "--xla_force_host_platform_device_count=2" and off["n"] == 2
