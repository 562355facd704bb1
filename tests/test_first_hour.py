"""A new user's first hour (issue 24): a quiet start, the checkpoint each command used, config
keys found from the command line, --help that exits 0.

The commands run in a subprocess with a user's environment: none of the variables the test
suite sets to quiet TensorFlow and pin JAX to the CPU (tests/conftest.py, tests/commands.py).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from rpsflax import quiet

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT_FILES = {p.name for p in (REPO / "rpsflax").rglob("*.py")}
# absl's Python log format: 'I1205 07:34:15.804394 140566315350912 data_files.py:590] ...'
ABSL_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ")
# Set by the suite or a developer's shell, never by a new user: they would hide the noise.
SUITE_ONLY = ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS", "TF_ENABLE_ONEDNN_OPTS", quiet.VERBOSE_ENV)


def user_env() -> dict:
  env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY}
  env["PYTHONPATH"] = str(REPO)
  return env


def run_user(module: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                        env=user_env(), capture_output=True, text=True, timeout=timeout)


# The training loop's progress bar (tqdm, redrawn with carriage returns).
PROGRESS = re.compile(r"^epoch \d+/\d+: +\d+%\|")


def foreign_lines(stderr: str) -> list[str]:
  """Lines that are neither the project's log lines (and their indented continuations), its
  progress bar, nor its one-line `error:` messages."""
  return [line for line in stderr.splitlines() if line.strip()
          and not line.startswith(("error: ", "  ")) and not PROGRESS.match(line)
          and not (ABSL_LINE.match(line) and ABSL_LINE.match(line).group(1) in PROJECT_FILES)]


# ---------------------------------------------------------------------------------------------
# 1. Quiet by default

def test_known_startup_noise_is_dropped_and_anything_else_kept():
  noise = [
      "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
      "I0000 00:00:1796456052.386814    8049 cudart_stub.cc:31] Could not find cuda drivers on your "
      "machine, GPU will not be used.",
      "E0000 00:00:1796456053.658881    8049 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
      "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
      "I0000 00:00:1796456026.853431    7561 cpu_feature_guard.cc:227] This TensorFlow binary is "
      "optimized to use available CPU instructions in performance-critical operations.",
      "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
      "with the appropriate compiler flags.",
      "E0000 00:00:1796456053.1    8049 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
      "Attempting to register factory for plugin cuDNN when one has already been registered",
  ]
  kept = [
      "E0000 00:00:1796456053.658881    8049 some_op.cc:52] a real failure",
      "Traceback (most recent call last):",
      "/x/y.py:3: DeprecationWarning: something a developer should see",
  ]
  text = "".join(f"{line}\n" for line in noise + kept)
  assert quiet.drop_noise(text) == "".join(f"{line}\n" for line in kept)


def test_orbax_read_only_warnings_and_jax_backend_info_are_dropped():
  import logging

  from rpsflax import cli

  flt = cli._QuietOrbax()  # noqa: SLF001  (the filter the commands install)

  def record(name, path, level, msg):
    return logging.LogRecord(name, level, path, 1, msg, None, None)

  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not flt.filter(record("absl", orbax, logging.WARNING,
                               "CheckpointManagerOptions.read_only=True, setting max_to_keep=None."))
  assert not flt.filter(record("absl", orbax, logging.WARNING,
                               "Given directory is read only=/w/checkpoints/best"))
  assert flt.filter(record("absl", orbax, logging.WARNING, "a save failed: disk full"))
  jax_bridge = "/venv/site-packages/jax/_src/xla_bridge.py"
  assert not flt.filter(record("jax._src.xla_bridge", jax_bridge, logging.INFO,
                               "Unable to initialize backend 'tpu'"))
  assert flt.filter(record("jax._src.xla_bridge", jax_bridge, logging.WARNING,
                           "An NVIDIA GPU may be present on this machine, but ..."))


@pytest.fixture(scope="module")
def missing_data_run():
  """The tiny recipe on a folder that does not exist: TensorFlow and JAX start, then one error."""
  return run_user("rpsflax.main", "--config=configs/rps_tiny.py", "--workdir=/nonexistent/run",
                  "--config.data.dir=/nonexistent/data")


def test_a_command_prints_only_project_lines(missing_data_run):
  proc = missing_data_run
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert "rpsflax train: config configs/rps_tiny.py" in lines[0], lines[:3]
  assert lines[-1].startswith("error: data folder /nonexistent/data does not exist"), lines[-3:]
  assert not foreign_lines(proc.stderr), "\n".join(foreign_lines(proc.stderr))


def test_verbosity_brings_the_library_lines_back():
  pytest.importorskip("tensorflow")  # the C++ start-up lines are TensorFlow's
  proc = run_user("rpsflax.main", "--config=configs/rps_tiny.py", "--workdir=/nonexistent/run",
                  "--config.data.dir=/nonexistent/data", "--verbosity=1")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert foreign_lines(proc.stderr), proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# 3. Config keys a user can find

def test_every_config_key_has_one_meaning_in_config_base():
  from rpsflax import config_base, config_check

  leaves = set(config_check._leaves(config_base.get_config()))  # noqa: SLF001
  assert leaves == set(config_base.MEANINGS), leaves ^ set(config_base.MEANINGS)
  assert all(m and "\n" not in m for m in config_base.MEANINGS.values())


def test_show_config_lists_every_key_with_value_and_meaning():
  from rpsflax import config_base

  proc = run_user("rpsflax.main", "--config=configs/rps.py", "--show_config",
                  "--config.optim.learning_rate=0.01")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert [line.split(" = ")[0] for line in lines] == list(config_base.MEANINGS)
  assert "optim.learning_rate = 0.01" in proc.stdout  # the overrides are applied
  assert any(line.startswith("head.num_classes = 3 ") and "# outputs:" in line for line in lines)
  assert not foreign_lines(proc.stderr), proc.stderr


def test_show_config_names_every_allowed_value_from_the_table_the_check_reads():
  """Each key with a fixed set of values shows all of them, read from config_check.choices (the
  owning modules' tables) as the check does: a backbone added to the registry appears unedited."""
  from rpsflax import config_base, config_check, models

  config = config_base.get_config()
  config.model.name = "mobilenet_v2"  # a backbone with widths: model.alpha has a set too
  lines = {line.split(" = ")[0]: line.split("  # ", 1)[1]
           for line in config_check.describe(config).splitlines()}
  allowed = config_check.choices(config)
  assert allowed["model.name"] == models.BACKBONES and "model.alpha" in allowed
  for key, values in allowed.items():
    assert all(repr(v) in lines[key] for v in values), (key, lines[key])


def test_a_mistyped_key_points_at_show_config():
  proc = run_user("rpsflax.main", "--config=configs/rps.py", "--workdir=/nonexistent/run",
                  "--config.optim.learnin_rate=0.01")
  assert proc.returncode == 2
  assert "did you mean config.optim.learning_rate?" in proc.stderr
  assert "--show_config" in proc.stderr


# ---------------------------------------------------------------------------------------------
# 6. --help

@pytest.mark.parametrize("module,own", [
    ("rpsflax.main", ("--config:", "--workdir:", "--mode:", "--show_config", "--checkpoint:")),
    ("rpsflax.predict", ("--workdir:", "--grid:", "--checkpoint:", "--output:")),
])
def test_help_exits_0_with_the_commands_own_flags(module, own):
  proc = run_user(module, "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  for flag in own:
    assert flag in proc.stdout, flag
  assert "--flagfile" not in proc.stdout and "--alsologtostderr" not in proc.stdout  # absl's
  assert proc.stdout.startswith(("Train or evaluate", "Label image files"))
