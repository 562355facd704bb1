"""Run the real command-line entry points (`python -m rpsflax.main`, `rpsflax.predict`) in a
subprocess, as a user would, on the CPU."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def cli_env(**extra) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), **extra)
  return env


def run_cmd(module: str, *args, expect_rc: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
  """Run `python -m module args...` from the repo root; fail the test with its output on a
  different exit status."""
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=cli_env(),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != expect_rc:
    pytest.fail(f"python -m {module} {' '.join(map(str, args))} exited {proc.returncode} "
                f"(expected {expect_rc})\n--- stdout\n{proc.stdout[-3000:]}\n"
                f"--- stderr\n{proc.stderr[-6000:]}")
  return proc
