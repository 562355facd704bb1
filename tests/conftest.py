"""Shared test fixtures.

`shared_data` is ../shared/data beside the repo (real image samples). Tests that need it skip
with a reason on a fresh clone; the core parity tests need nothing from it.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The Keras references run TensorFlow without its oneDNN kernels: on a CPU with AVX512-BF16 (an
# AMD EPYC of this project's CI, 2026-12-02) oneDNN's fp32 conv backward was off by 1.5e-3 of the
# gradient's scale against a float64 gradient, while plain TF kernels and our fp32 port were
# within 2e-6 and 7e-7 of it: the reference must be the accurate side of the comparison.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# One XLA compilation cache for the whole session, shared by the xdist workers and the CLI
# subprocesses the tests start (they inherit the environment): the same tiny models' steps are
# compiled in dozens of processes, and on a 2-core CPU compiling is most of a tiny run's time.
# A fresh folder per session (removed by the process that made it), so every run starts cold.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _CACHE = tempfile.mkdtemp(prefix="rpsflax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  # Every compilation, not only those over JAX's default 1 s: the tiny models' steps compile in
  # well under a second each, and the same ones are compiled again in process after process.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("RPSFLAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"sample images not found at {SHARED_DATA} (set RPSFLAX_SHARED_DATA, or run "
                "from a checkout with ../shared beside it)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


# CI runs whole files per xdist worker (--dist loadfile) in collection order (--no-loadscope-reorder:
# by default xdist re-sorts files by their number of tests, which ignored this order): the longest
# files go first so that the workers finish together instead of one running a long file alone at
# the end. The order is each file's summed test time in a full run (`pytest --junitxml=F`, 2 workers,
# 2026-12-05); files under 10 s keep their alphabetical place at the end.
LONGEST_FILES_FIRST = (
    "test_export.py", "test_readme.py", "test_benchmark.py", "test_reliability_round2.py",
    "test_e2e_bn_backbones.py", "test_reliability.py", "test_no_tensorflow.py",
    "test_parity_bn_backbones.py", "test_trained_rps.py", "test_e2e_rps.py",
    "test_cached_features.py", "test_sharding.py", "test_train.py", "test_weights.py",
    "test_workdir_untouched.py", "test_e2e_catsdogs.py", "test_bn_steps.py", "test_parity_vgg.py",
    "test_bf16.py", "test_bn_semantics.py", "test_parity_cnn.py", "test_checkpoint_frozen.py",
    "test_weights_bn.py", "test_first_hour.py", "test_augment.py", "test_predict.py",
    "test_real_weights.py", "test_parity_grads.py", "test_models_bn.py", "test_xla_cpu.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept

