"""Device-resident data (rpsflax/resident.py): which runs use it, and that it computes what the
host-fed path computes, bit for bit.

Whole runs, resident against host-fed, are compared where those runs already are:
tests/test_train.py (test_signal_mid_epoch_saves_and_resumes_bit_identically, both paths, with
augmentation and dropout, against the straight resident run) and tests/test_cached_features.py
(test_host_fed_run_equals_the_device_resident_one). Here: the chunking, the budget and the
modes, and 4 devices against 1 (a subprocess with 4 CPU devices).
"""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from rpsflax import config_base, config_check, errors, resident, sharding, timing

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_chunks_end_at_multiples_of_log_every_and_at_the_epoch_end():
  assert resident.chunk_ends(0, 5, 2) == [2, 4, 5]
  assert resident.chunk_ends(3, 5, 2) == [4, 5]   # resumed inside a chunk: up to its end
  assert resident.chunk_ends(4, 5, 2) == [5]
  assert resident.chunk_ends(0, 4, 2) == [2, 4]
  assert resident.chunk_ends(0, 3, 10) == [3]
  assert resident.chunk_ends(5, 5, 2) == []


class _Data:
  """What resident.decide reads of a Datasets: sizes, and whether images are cached."""

  def __init__(self, cache=True, n=(18, 6), image=48):
    self.cache = cache
    self.num_examples = {"train": n[0], "validation": n[1], "holdout": 0}
    self._image = image

  def split_array_spec(self, split):
    return (1, self.num_examples[split], self._image, self._image, 3), np.dtype(np.uint8)


def test_modes_and_the_budget(monkeypatch):
  mesh = sharding.make_mesh()
  # Images on a CPU: 'auto' feeds them from the host (they are in its memory already); 'on'
  # still makes them resident. Cached features follow the budget (below).
  use, why = resident.decide("auto", _Data(), mesh)
  assert not use and "feeds images from the host on a CPU" in why
  assert resident.decide("on", _Data(), mesh)[0]
  decide = functools.partial(resident.decide, on_features=True)
  use, why = decide("auto", _Data(), mesh)
  assert use and "within the budget" in why
  assert decide("off", _Data(), mesh) == (False, "config.data.device_cache='off'")
  # Nothing decoded up front: 'auto' feeds from the host, 'on' says why it cannot.
  use, why = decide("auto", _Data(cache=False), mesh)
  assert not use and "config.data.cache=False" in why
  with pytest.raises(errors.ConfigError, match=r"config.data.device_cache='on'.*config.data.cache"):
    decide("on", _Data(cache=False), mesh)
  # Over the budget: 'auto' says how much and what the budget is; 'on' goes ahead.
  need = (18 + 6) * 48 * 48 * 3
  monkeypatch.setattr(resident, "budget", lambda mesh: (need - 1, False, "a tiny budget"))
  use, why = decide("auto", _Data(), mesh)
  assert not use and "over the budget (a tiny budget)" in why and "'on' forces it" in why
  assert decide("on", _Data(), mesh)[0]
  monkeypatch.setattr(resident, "budget", lambda mesh: (need, False, "just enough"))
  assert decide("auto", _Data(), mesh)[0]


def test_the_budget_is_device_memory_where_devices_report_it(monkeypatch):
  fake = types.SimpleNamespace(process_index=0, device_kind="fake GPU",
                               memory_stats=lambda: {"bytes_limit": 100 * 10**9,
                                                     "bytes_in_use": 20 * 10**9})
  mesh = types.SimpleNamespace(devices=np.array([fake, fake]))
  limit, per_device, what = resident.budget(mesh)
  assert per_device and limit == int(resident.DEVICE_FRACTION * 80 * 10**9)
  assert "80.0 GB free on each fake GPU" in what
  # Several devices hold 1/N of the rows each (padded to a multiple of N).
  per, total = resident.bytes_needed(_Data(n=(17, 6)), ["train", "validation"], 4)
  assert total == (20 + 8) * 48 * 48 * 3 and per == total // 4


def test_config_check_names_the_key():
  c = config_base.get_config()
  c.data.device_cache = "yes"
  with pytest.raises(errors.ConfigError, match=r"config.data.device_cache='yes': use one of "
                     r"'auto', 'on', 'off'"):
    config_check.check_config(c)


def test_the_run_timer_adds_up_and_counts_compilation_once():
  from jax import monitoring

  clock = [100.0]
  timer = timing.RunTimer(started=90.0, clock=lambda: clock[0])  # 10 s before the run: start-up
  with timer.active():
    with timer.phase("steps"):
      clock[0] = 103.0
      # A compile of 1.5 s inside the steps, with a nested trace of 0.5 s inside it.
      monitoring.record_event_time_span("/jax/core/compile/jaxpr_trace_duration", 101.0, 101.5)
      monitoring.record_event_time_span("/jax/core/compile/backend_compile_duration",
                                        101.0, 102.5)
      monitoring.record_event_time_span("/jax/some/other_event", 100.0, 103.0)
      with timer.phase("checkpoints"):
        clock[0] = 104.0
      clock[0] = 106.0
    clock[0] = 106.5
    out = timer.summary()
  assert out["wall"] == 16.5 and out["startup"] == 10.0
  assert out["compilation"] == 1.5 and out["steps"] == 3.5 and out["checkpoints"] == 1.0
  assert out["other"] == 0.5
  assert sum(v for k, v in out.items() if k != "wall") == pytest.approx(out["wall"])
  assert timing.format_line(out).startswith("16.50 s: startup 10.00")


def test_four_devices_train_and_evaluate_as_one_and_gather_the_host_batches_bit_for_bit(tmp_path):
  """On 4 CPU devices (the rows sharded 4 ways): every gathered batch is the host's batch bit for
  bit, features with -0.0 included (stored as their uint32 bits: a float all-reduce would make
  them +0.0); an epoch of the cached-feature head and an evaluation equal the host-fed path on
  the same 4 devices bit for bit, and 1 device within float rounding (the gradient is summed
  over 4 shards there)."""
  script = textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp, numpy as np
      import data_factory, keras_reference as kr, test_train as T
      from rpsflax import evaluation, features, input_pipeline, models, resident, sharding
      from rpsflax import steps, train
      data = sys.argv[1]
      data_factory.class_folders(data + "/train", {"paper": 7, "rock": 7, "scissors": 7},
                                 size=(40, 40))
      c = kr.load_recipe("rps_cached")
      c.weights, c.data.dir, c.data.image_size, c.data.val_fraction = "", data, 32, 0.25
      c.batch_size, c.eval_batch_size, c.log_every_steps = 4, 6, 2  # eval: 6 rows, 8 on 4 devices
      c.cached_features.augmented_views = 2
      c.head.dropout = 0.5
      c.data.device_cache = "on"  # images too ('auto' feeds images from the host on a CPU)
      mesh4, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
      assert mesh4.devices.size == 4
      ds = input_pipeline.create_datasets(c, None)
      rng = np.random.RandomState(0)
      arrays = {}
      for split, views in (("train", 3), ("validation", 1)):
        a = rng.normal(size=(views, ds.num_examples[split], 1, 1, 512)).astype(np.float32)
        a[a < -1.5] = -0.0
        arrays[split] = a
      fd = features.FeatureDatasets(ds, arrays, c.seed)
      model = models.build_model(c)
      params = T._random_params(c)
      key = jax.random.PRNGKey(7)

      def bits(x):
        x = np.asarray(x)
        return x.view(np.uint32) if x.dtype == np.float32 else x

      # 1. The gathered batches, images and features, on 4 devices.
      for source, on_features in ((ds, False), (fd, True)):
        res = resident.load(steps.compile_steps(c, model, mesh4, on_features=on_features), source,
                            mesh4, c.data.device_cache)
        stored = res._stored["train"]
        rows, views = source.train_rows(1)
        gather = jax.jit(lambda d, l, r, v: resident._batch(d, l, r, v, mesh4, on_features))
        for r, v, want in zip(rows, views, source.train_batches(1)):
          got = gather(stored.data, stored.labels, jnp.asarray(r, jnp.int32),
                       jnp.asarray(v, jnp.int32))
          assert len(got["image"].sharding.device_set) == 4
          for k in ("image", "label", "mask"):
            assert np.array_equal(bits(got[k]), bits(want[k])), k

      # 2. An epoch of the head and an evaluation: resident on 4 and 1 devices, host-fed on 4.
      def epoch(mesh, device_cache):
        c.data.device_cache = device_cache
        compiled = steps.compile_steps(c, model, mesh, on_features=True)
        state = jax.device_put(steps.create_train_state(c, model, params=params),
                               sharding.replicated(mesh))
        loop = train.EpochLoop(c, mesh, compiled.train, key)
        res = resident.load(compiled, fd, mesh, c.data.device_cache)
        if res is None:
          feed = train.HostFeed(loop, fd.train_batches(1), fd.steps_per_epoch)
        else:
          feed = res.train_feed(1, key, 2)
        state, sums, _ = train.train_epoch(loop, state, feed, epoch=2)
        if res is None:
          ev = evaluation.evaluate_batches(compiled.eval, state, fd.eval_batches("validation"),
                                           mesh, compiled.classes)
        else:
          ev = res.evaluate_split(state, "validation")
        return jax.device_get(state), sums, ev

      r4, h4, r1 = epoch(mesh4, "on"), epoch(mesh4, "off"), epoch(mesh1, "on")
      for a, b in zip(jax.tree.leaves(r4), jax.tree.leaves(h4)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree.leaves(r4[0]), jax.tree.leaves(r1[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
      assert r4[2]["num_examples"] == r1[2]["num_examples"] == ds.num_examples["validation"]
      assert np.array_equal(r4[2]["confusion"], r1[2]["confusion"])
      assert int(r4[1]["count"]) == ds.num_examples["train"]
      np.testing.assert_allclose(r4[2]["loss"], r1[2]["loss"], rtol=1e-5)
      print("OK")
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
  out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], env=env,
                       capture_output=True, text=True, cwd=REPO, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
