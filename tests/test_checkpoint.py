"""Orbax checkpoints: round trip, latest/best retention, unfinished writes ignored, donation-safe saves."""

import asyncio
import errno
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpsflax import checkpoint, config_base
from rpsflax import errors, sharding, steps


def _state(seed: int = 0):
  """A TrainState with a frozen and a trainable part (so the optimizer state has masked nodes)."""
  rng = np.random.RandomState(seed)
  params = {"backbone": {"w": jnp.asarray(rng.randn(4, 3), jnp.float32)},
            "head": {"w": jnp.asarray(rng.randn(3, 2), jnp.float32),
                     "b": jnp.asarray(rng.randn(2), jnp.float32)}}
  config = config_base.get_config()
  state = steps.create_train_state(config, None, params=params)
  # Make the optimizer state non-trivial so the round trip has something to lose.
  nu = jax.tree.map(lambda x: x + seed + 1.0, state.opt_state)
  return state.replace(step=jnp.asarray(seed, jnp.int32), opt_state=nu)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b))):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_round_trip_restores_state_and_meta(tmp_path):
  state = _state(3)
  meta = {"epoch": 2, "step": 3, "history": [{"epoch": 1, "val_accuracy": 0.5}],
          "class_names": ["paper", "rock", "scissors"]}
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    assert ckpts.save(state, meta)
    ckpts.wait()
  restored, got_meta = checkpoint.restore_latest(tmp_path, _state(0))
  _assert_same(restored, state)
  assert isinstance(restored, steps.TrainState)
  assert got_meta == meta
  assert checkpoint.restore_best(tmp_path, _state(0)) is None


def test_latest_keeps_two_and_best_keeps_one(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    for step in (1, 2, 3):
      ckpts.save(_state(step), {"step": step, "epoch": step})
    ckpts.save(_state(1), {"step": 1, "epoch": 1, "val_accuracy": 0.9}, which="best")
    ckpts.save(_state(3), {"step": 3, "epoch": 3, "val_accuracy": 0.95}, which="best")
    # The same step again is kept as it is (a replayed epoch), not rewritten.
    assert not ckpts.save(_state(0), {"step": 3, "epoch": 3}, which="best")
    ckpts.wait()
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints" / "latest").iterdir()
                if p.name.isdigit()) == [2, 3]
  assert [p.name for p in (tmp_path / "checkpoints" / "best").iterdir() if p.name.isdigit()] == ["3"]
  state, meta = checkpoint.restore_best(tmp_path, _state(0))
  assert meta["val_accuracy"] == 0.95
  _assert_same(state, _state(3))


def test_unfinished_write_is_ignored(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save(_state(1), {"step": 1, "epoch": 1})
    ckpts.wait()
  latest = tmp_path / "checkpoints" / "latest"
  # What a process killed in the middle of writing step 2 leaves behind: Orbax's temporary dir.
  shutil.copytree(latest / "1", latest / "2.orbax-checkpoint-tmp-1234")
  (latest / "2.orbax-checkpoint-tmp-1234" / "state").rename(latest / "2.orbax-checkpoint-tmp-1234" / "x")
  state, meta = checkpoint.restore_latest(tmp_path, _state(0))
  assert meta["step"] == 1
  _assert_same(state, _state(1))
  # The next run can still write step 2 (the leftover is cleaned up, not in the way).
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save(_state(2), {"step": 2, "epoch": 2})
    ckpts.wait()
    assert ckpts.latest_step() == 2
  _assert_same(checkpoint.restore_latest(tmp_path, _state(0))[0], _state(2))


def test_async_save_is_safe_to_donate_right_after(tmp_path):
  state = jax.device_put(_state(5))
  expected = _host(state)
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save(state, {"step": 5, "epoch": 1})
    for leaf in jax.tree.leaves(state):  # what donating it to the next train step does
      leaf.delete()
    ckpts.wait()
  restored, _ = checkpoint.restore_latest(tmp_path, _state(0))
  for x, y in zip(jax.tree.leaves(_host(restored)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(x, y)


def test_restore_places_arrays_with_the_target_sharding(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save(_state(2), {"step": 2, "epoch": 1})
    ckpts.wait()
    assert ckpts.restore_meta() == {"step": 2, "epoch": 1}
  mesh = sharding.make_mesh()
  target = sharding.abstract_like(_state(0), sharding.replicated(mesh))
  restored, _ = checkpoint.restore_latest(tmp_path, target)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.is_equivalent_to(sharding.replicated(mesh), leaf.ndim)


def test_mismatched_target_is_a_clear_error(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save(_state(2), {"step": 2, "epoch": 1})
    ckpts.wait()
  wrong = _state(0)
  wrong = wrong.replace(params={**wrong.params, "head": {"w": jnp.zeros((5, 2)),
                                                          "b": jnp.zeros(2)}})
  with pytest.raises(errors.CheckpointError, match="does not fit this config"):
    checkpoint.restore_latest(tmp_path, wrong)


def test_a_checkpoint_from_before_batch_stats_still_restores(tmp_path):
  """Runs saved before TrainState had `batch_stats` (2026-12) resume: the field holds nothing
  for a model without BatchNorm, and is put back empty."""
  import flax

  @flax.struct.dataclass
  class TrainStateBefore:  # the TrainState this project saved until then
    step: jax.Array
    params: dict
    opt_state: dict

  state = _state(3)
  old = TrainStateBefore(step=state.step, params=state.params, opt_state=state.opt_state)
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    assert ckpts.save(old, {"epoch": 1, "step": 3})
    ckpts.wait()
  restored, meta = checkpoint.restore_latest(tmp_path, _state(0))
  assert isinstance(restored, steps.TrainState) and restored.batch_stats == {}
  _assert_same(restored, state)
  assert meta == {"epoch": 1, "step": 3}


class _OrbaxTask:  # how asyncio names the task of an unretrieved exception in its message
  def __repr__(self):
    return ("<Task finished name='Task-195' coro=<Store.write() done, defined at "
            ".../orbax/checkpoint/_src/metadata/array_metadata_store.py:176>>")


def _unretrieved(caplog, errors, future=None) -> list:
  """The errors asyncio still logs when tasks that raised `errors` are collected unretrieved
  (it calls this very handler from asyncio.Task.__del__)."""
  loop = asyncio.new_event_loop()
  caplog.clear()
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for error in errors:
      context = {"message": "Task exception was never retrieved", "exception": error}
      loop.call_exception_handler({**context, "future": future} if future else context)
  loop.close()
  return [r.exc_info[1] for r in caplog.records if "never retrieved" in r.getMessage()]


def test_an_unretrieved_disk_error_of_a_write_task_prints_no_traceback(tmp_path, caplog,
                                                                       monkeypatch):
  """A full disk is reported once, as the save's WriteError: an Orbax write task that failed
  for the same reason and was never awaited prints no traceback beside it when collected, nor,
  once a save has failed so, an Orbax task that the interpreter's shutdown refused; any other
  unretrieved task error still prints."""
  ckpts = checkpoint.Checkpoints(tmp_path)  # a run's checkpoints quiet them
  monkeypatch.setattr(checkpoint._QUIET_DISK_TASKS, "disk_full", False)  # noqa: SLF001
  shutdown = RuntimeError("cannot schedule new futures after interpreter shutdown")
  bug = RuntimeError("a bug in a write task")
  disk = [OSError(errno.ENOSPC, "No space left on device"),
          ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")]
  assert _unretrieved(caplog, [*disk, bug]) == [bug]
  assert _unretrieved(caplog, [shutdown], _OrbaxTask()) == [shutdown]  # no disk error yet

  def full(*args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")
  with monkeypatch.context() as m:
    m.setattr(checkpoint.ocp.CheckpointManager, "wait_until_finished", full)
    with pytest.raises(errors.WriteError, match="No space left on device"):
      ckpts.wait()
  ckpts.close()
  assert _unretrieved(caplog, [shutdown], _OrbaxTask()) == []
  assert _unretrieved(caplog, [bug]) == [bug]  # not an Orbax task
