"""The project's XLA:CPU flags: merged into the user's XLA_FLAGS, never replacing them."""

import json
import subprocess
import sys

from commands import REPO, cli_env
from rpsflax import xla_cpu

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


def test_only_cpu_flags():
  assert all(name.startswith("--xla_cpu_") for name in xla_cpu.CPU_FLAGS)


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
