"""Data parallelism: 8 simulated devices, and 2 processes, train and evaluate like 1 device.

The runs happen in subprocesses (XLA_FLAGS=--xla_force_host_platform_device_count=N must be set
before JAX starts): the cats-vs-dogs recipe at 48x48 (every layer trained, dropout 0.5,
augmentation, sigmoid head), global batch 16, on a tiny folder whose 9 validation images divide
neither by 8 devices nor by the evaluation batch of 4. The same config runs on
- 1 device (the reference),
- 8 devices of one process,
- 2 processes x 2 devices through `python -m rpsflax.main` with jax.distributed on localhost
  (process 0 from --config.distributed.* flags, process 1 from a SLURM-like environment),
and the tests compare their histories, final parameters, evaluations and checkpoints.

Run by hand as `python tests/test_sharding.py CONFIG WORKDIR OUT` it is the worker of one run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240
# Float tolerance between device counts: sums over the batch are reduced in another order.
RTOL, ATOL = 1e-5, 1e-6  # measured: 1.8e-7 at most on the params, 7e-8 on the losses


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR")) and k != "RPSFLAX_DISTRIBUTED"}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([str(REPO),
                                                                  env.get("PYTHONPATH", "")]))
  env.update(extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_data(root: pathlib.Path, per_class: int = 15, size: int = 56) -> pathlib.Path:
  """root/train/{cats,dogs}: dark vs bright noisy images (learnable, not trivially)."""
  from PIL import Image

  rng = np.random.RandomState(0)
  for c, name in enumerate(("cats", "dogs")):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      img = np.clip(80 + 80 * c + rng.randint(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(folder / f"{name}_{i}.png")
  return root


CONFIG_TEMPLATE = '''
"""The cats-vs-dogs recipe, shrunk for tests/test_sharding.py."""
from rpsflax import config_base
from rpsflax import errors


def get_config():
  c = config_base.load_sibling({recipe!r}, "catsdogs").get_config()
  c.data.dir = {data!r}
  c.data.image_size = 48
  c.data.holdout = 0
  c.data.val_fraction = 0.3   # 21 train (2 steps of 16, the last padded) / 9 validation
  c.batch_size = 16
  c.eval_batch_size = 4       # 9 = 4 + 4 + 1: the last batch padded, and 4 pads to 8 devices
  c.num_epochs = 2
  c.log_every_steps = 1
  c.optim.learning_rate = 1e-3
  return c
'''


# ---------------------------------------------------------------------------------------------
# The worker: one run in its own process

def _load_config(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location("sharding_test_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _mesh_checks(config, mesh) -> dict:
  """What only a multi-device mesh can show: batch-size errors, padding, the shardings."""
  import jax
  from rpsflax import errors, sharding

  out = {}
  c = config.copy_and_resolve_references()
  c.batch_size = 12
  try:
    sharding.check_batch_sizes(c, mesh)
  except errors.ConfigError as e:
    out["batch_size_error"] = str(e)
  rows = {"image": np.zeros((12, 4, 4, 3), np.uint8), "label": np.zeros(12, np.int32),
          "mask": np.ones(12, bool)}
  try:
    sharding.shard_batch(rows, mesh)
  except errors.ConfigError as e:
    out["shard_error"] = str(e)
  padded = sharding.shard_batch(rows, mesh, pad=True)
  out["padded_rows"] = int(padded["mask"].shape[0])
  out["padded_real"] = int(jax.device_get(padded["mask"]).sum())
  out["padded_shard_rows"] = sorted({s.data.shape[0] for s in padded["image"].addressable_shards})
  out["batch_devices"] = len(padded["image"].sharding.device_set)
  return out


def _worker(config_path, workdir, out_dir) -> None:
  import jax
  from rpsflax import restore, sharding, train

  config = _load_config(config_path)
  out_dir = pathlib.Path(out_dir)
  mesh = sharding.make_mesh()
  result = {"devices": jax.device_count()}
  if mesh.devices.size > 1:
    result["checks"] = _mesh_checks(config, mesh)
  t0 = time.time()
  result["final"] = train.train_and_evaluate(config, workdir)
  result["seconds"] = time.time() - t0
  state, meta = restore.restore_state(config, workdir, "latest", mesh)
  result["history"] = meta.history
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  result["param_devices"] = sorted({len(x.sharding.device_set) for _, x in leaves})
  result["replicated"] = all(x.sharding.is_fully_replicated for _, x in leaves)
  np.savez(out_dir / "params.npz",
           **{jax.tree_util.keystr(k): np.asarray(jax.device_get(x)) for k, x in leaves})
  (out_dir / "result.json").write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------
# Fixtures: the runs

def _wait(procs: dict, timeout: float) -> dict:
  """Wait for every process; kill all of them if any runs past `timeout` (a hung collective)."""
  deadline = time.time() + timeout
  outs = {}
  try:
    for name, p in procs.items():
      out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
      outs[name] = (p.returncode, out, err)
  except subprocess.TimeoutExpired:
    for p in procs.values():
      p.kill()
    pytest.fail(f"runs {sorted(procs)} did not finish in {timeout}s")
  return outs


def _start_worker(tmp, name, devices, config_path):
  out = tmp / name
  out.mkdir()
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), str(config_path),
         str(tmp / f"work_{name}"), str(out)]
  return subprocess.Popen(cmd, env=_env(devices), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _start_two_processes(tmp, config_path):
  """`python -m rpsflax.main` twice, 2 CPU devices each, meeting at a localhost coordinator."""
  port = _free_port()
  workdir = tmp / "work_2proc"
  base = [sys.executable, "-m", "rpsflax.main", f"--config={config_path}", f"--workdir={workdir}"]
  flags = ["--config.distributed.initialize=True",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", "--config.distributed.process_id=0"]
  # Process 1 is told nothing but RPSFLAX_DISTRIBUTED=1: JAX reads what srun would set.
  slurm = {"RPSFLAX_DISTRIBUTED": "1", "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1",
           "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
           "SLURM_STEP_NUM_NODES": "1", "JAX_COORDINATOR_PORT": str(port)}
  return {
      "p0": subprocess.Popen(base + flags, env=_env(2), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True),
      "p1": subprocess.Popen(base, env=_env(2, **slurm), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True),
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sharding")
  data = _write_data(tmp / "data")
  config_path = tmp / "catsdogs_48.py"
  config_path.write_text(CONFIG_TEMPLATE.format(recipe=str(REPO / "configs" / "catsdogs.py"),
                                                data=str(data)))
  t0 = time.time()
  procs = {"one": _start_worker(tmp, "one", 1, config_path),
           "eight": _start_worker(tmp, "eight", 8, config_path)}
  procs.update(_start_two_processes(tmp, config_path))
  outs = _wait(procs, TIMEOUT)
  for name, (rc, out, err) in outs.items():
    assert rc == 0, f"{name} failed (exit {rc}):\n{err[-4000:]}"
  results = {}
  for name in ("one", "eight"):
    results[name] = json.loads((tmp / name / "result.json").read_text())
    with np.load(tmp / name / "params.npz") as z:
      results[name]["params"] = dict(z)
  results["wall"] = time.time() - t0
  results["logs"] = {name: err for name, (_, _, err) in outs.items()}
  return tmp, config_path, results


# ---------------------------------------------------------------------------------------------
# Tests


def _assert_params_close(a: dict, b: dict):
  assert a.keys() == b.keys() and a
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=ATOL, err_msg=k)


def _assert_history_close(h1, h2):
  assert [h["epoch"] for h in h1] == [h["epoch"] for h in h2] == [1, 2]
  for a, b in zip(h1, h2):
    for key in ("train_loss", "val_loss"):
      assert a[key] == pytest.approx(b[key], rel=RTOL, abs=ATOL), (key, a, b)
    for key in ("train_accuracy", "val_accuracy"):
      assert a[key] == b[key], (key, a, b)


def test_batch_size_must_split_across_8_devices(runs):
  checks = runs[2]["eight"]["checks"]
  error = checks["batch_size_error"]
  assert "config.batch_size=12" in error and "8 devices" in error
  assert "config.batch_size" in checks["shard_error"]
  # Evaluation pads with masked rows instead: 12 -> 16, 2 rows on each of the 8 devices.
  assert (checks["padded_rows"], checks["padded_real"]) == (16, 12)
  assert checks["padded_shard_rows"] == [2] and checks["batch_devices"] == 8


def test_eight_devices_train_like_one(runs):
  one, eight = runs[2]["one"], runs[2]["eight"]
  assert (one["devices"], eight["devices"]) == (1, 8)
  assert eight["param_devices"] == [8] and eight["replicated"]
  _assert_history_close(eight["history"], one["history"])
  _assert_params_close(eight["params"], one["params"])
  # The parameters moved: the comparison is not between two copies of the initial weights.
  assert one["history"][0]["train_loss"] != one["history"][1]["train_loss"]


def test_eight_device_evaluation_counts_every_example_once(runs):
  tmp, _, results = runs
  labels = [int(line.split("\t")[1]) for line in
            (tmp / "work_one" / "splits" / "validation.txt").read_text().splitlines()]
  assert len(labels) == 9 and len(labels) % 8 and len(labels) % 4
  for name in ("one", "eight"):
    final = results[name]["final"]
    assert final["num_examples"] == 9, name
    cm = np.asarray(final["confusion_matrix"])
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(labels, minlength=2))
  one, eight = results["one"]["final"], results["eight"]["final"]
  assert eight["confusion_matrix"] == one["confusion_matrix"]
  assert eight["loss"] == pytest.approx(one["loss"], rel=RTOL, abs=ATOL)


def _restore_on_one_device(config_path, workdir):
  import jax
  from rpsflax import restore, sharding

  config = _load_config(config_path)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state, meta = restore.restore_state(config, workdir, "latest", mesh)
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  assert {len(x.sharding.device_set) for _, x in leaves} == {1}
  return {jax.tree_util.keystr(k): np.asarray(x) for k, x in leaves}, meta


def test_checkpoint_from_eight_devices_restores_on_one(runs):
  tmp, config_path, results = runs
  params, meta = _restore_on_one_device(config_path, tmp / "work_eight")
  assert meta.step == 4 and meta.history == results["eight"]["history"]
  assert params.keys() == results["eight"]["params"].keys()
  for k, v in results["eight"]["params"].items():
    np.testing.assert_array_equal(params[k], v, err_msg=k)  # bit for bit


def test_two_processes_train_like_one(runs):
  tmp, config_path, results = runs
  workdir = tmp / "work_2proc"
  history = json.loads((workdir / "history.json").read_text())
  _assert_history_close(history, results["one"]["history"])
  params, meta = _restore_on_one_device(config_path, workdir)  # written by both processes
  _assert_params_close(params, results["one"]["params"])
  assert meta.step == 4
  config = json.loads((workdir / "config.json").read_text())
  assert config["distributed"]["process_id"] == 0  # written by process 0 only
  ev = json.loads((workdir / "eval.json").read_text())
  assert ev["num_examples"] == 9
  assert ev["accuracy"] == results["one"]["final"]["accuracy"]
  assert len(list((workdir / "tensorboard").iterdir())) == 1  # one writer: process 0
  # Both processes joined one 4-device mesh (the second one from the SLURM-like environment).
  assert "process 0 of 2, 2 local of 4 devices" in results["logs"]["p0"]
  assert "process 1 of 2, 2 local of 4 devices" in results["logs"]["p1"]
  assert "train done in" in results["logs"]["p0"] and "train done in" not in results["logs"]["p1"]


def test_no_pmap_and_no_hand_written_collectives():
  """Distribution is jit + shardings only: the library calls no pmap and no collective itself."""
  import re

  banned = re.compile(r"\b(pmap|psum|pmean|all_gather|ppermute|shard_map|xmap)\b")
  for path in sorted((REPO / "rpsflax").rglob("*.py")):
    for i, line in enumerate(path.read_text().splitlines(), 1):
      code = line.split("#")[0]
      assert not banned.search(code), f"{path.name}:{i}: {line.strip()}"


# ---------------------------------------------------------------------------------------------
# initialize_distributed (jax.distributed.initialize itself is replaced: it may run once a process)

@pytest.fixture
def fake_initialize(monkeypatch):
  import jax

  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.delenv("RPSFLAX_DISTRIBUTED", raising=False)
  return calls


def test_initialize_distributed_only_when_asked(fake_initialize, monkeypatch):
  from rpsflax import config_base, sharding

  c = config_base.get_config()
  assert sharding.initialize_distributed(c) is False and not fake_initialize
  c.distributed.initialize = True  # nothing else: JAX reads SLURM / Open MPI / TPU settings
  assert sharding.initialize_distributed(c) is True
  c.distributed.coordinator_address = "10.0.0.1:1234"
  c.distributed.num_processes = 2
  c.distributed.process_id = 1
  sharding.initialize_distributed(c)
  c = config_base.get_config()
  monkeypatch.setenv("RPSFLAX_DISTRIBUTED", "1")
  assert sharding.initialize_distributed(c) is True
  assert fake_initialize == [{}, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                                  "process_id": 1}, {}]


def test_initialize_distributed_failure_names_the_flags(monkeypatch):
  import jax
  from rpsflax import config_base, errors, sharding

  def fail(**kw):
    raise ValueError("Number of processes must be defined.")
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  c = config_base.get_config()
  c.distributed.initialize = True
  c.distributed.coordinator_address = "10.0.0.1:1234"
  with pytest.raises(errors.ConfigError, match="config.distributed.num_processes"):
    sharding.initialize_distributed(c)


def test_device_counts_to_try(monkeypatch):
  import jax
  from rpsflax import sharding

  for n, want in ((1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])):
    monkeypatch.setattr(jax, "local_device_count", lambda n=n: n)
    assert sharding.device_counts_to_try() == want
  assert sharding.device_counts_to_try(max_devices=4) == [1, 2, 4]


if __name__ == "__main__":
  _worker(*sys.argv[1:4])
