"""Checkpoints hold what changes (issue 21, item 5): parameters that never train are written once
per workdir (checkpoints/frozen/<id>/), not in every checkpoint; checkpoints written before that
still restore; a changed frozen set, a damaged or a lost store are each one clear outcome.

Unit tests on a tiny TrainState first, then the real run (`train.train_and_evaluate`, the
cats-vs-dogs convnet with its backbone frozen, 32 tiny images) for resume, evaluate, predict
and init_from.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

import data_factory
from rpsflax import (checkpoint, config_base, errors, evaluation, frozen_store, models, optim,
                     prediction, sharding, steps, train)

FROZEN = [("backbone", "w"), ("backbone", "v")]


def _state(seed: int = 0, backbone_seed: int = 0):
  """A TrainState with a frozen backbone (two arrays) and a trainable head."""
  rng, brng = np.random.RandomState(seed), np.random.RandomState(100 + backbone_seed)
  params = {"backbone": {"w": jnp.asarray(brng.randn(64, 48), jnp.float32),  # its file the
                         "v": jnp.asarray(brng.randn(5), jnp.float32)},     # store's largest
            "head": {"w": jnp.asarray(rng.randn(48, 2), jnp.float32),
                     "b": jnp.asarray(rng.randn(2), jnp.float32)}}
  state = steps.create_train_state(config_base.get_config(), None, params=params)
  nu = jax.tree.map(lambda x: x + seed + 1.0, state.opt_state)
  return state.replace(step=jnp.asarray(seed, jnp.int32), opt_state=nu)


def _same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _saved_params(step_dir: pathlib.Path) -> set:
  """'/'-joined parameter paths a checkpoint's 'state' item holds (from its metadata)."""
  tree = ocp.StandardCheckpointHandler().metadata(step_dir / "state").tree
  return {"/".join(k) for k in traverse_util.flatten_dict(tree["params"])}


def _stores(workdir) -> list[pathlib.Path]:
  d = pathlib.Path(workdir) / "checkpoints" / frozen_store.DIRECTORY
  return sorted(d.iterdir()) if d.is_dir() else []


def _save(workdir, states, frozen=FROZEN, best=()):
  with checkpoint.Checkpoints(workdir, frozen=frozen) as ckpts:
    for s in states:
      ckpts.save(s, {"step": int(s.step), "epoch": int(s.step)})
    for s in best:
      ckpts.save(s, {"step": int(s.step), "epoch": int(s.step)}, which="best")
    ckpts.wait()


# ---------------------------------------------------------------------------------------------
# The layout, on a tiny state

def test_frozen_parameters_are_written_once_and_put_back(tmp_path):
  _save(tmp_path, [_state(1), _state(2), _state(3)], best=[_state(2)])
  (store,) = _stores(tmp_path)  # one store for all four checkpoints
  for which, step in (("latest", 2), ("latest", 3), ("best", 2)):
    assert _saved_params(tmp_path / "checkpoints" / which / str(step)) == {"head/w", "head/b"}
  assert json.loads((store / "manifest" / "metadata").read_text())["id"] == store.name
  state, meta = checkpoint.restore_latest(tmp_path, _state(0))  # read-only: no frozen list given
  _same(state, _state(3))
  assert meta == {"step": 3, "epoch": 3}
  _same(checkpoint.restore_best(tmp_path, _state(0))[0], _state(2))
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:
    _same(ckpts.restore_for_resume(_state(0))[0], _state(3))
    assert ckpts.restore_meta() == {"step": 3, "epoch": 3}


def test_saving_is_donation_safe_and_writes_the_store_before_a_checkpoint_needs_it(tmp_path):
  state = jax.device_put(_state(5))
  expected = jax.device_get(state)
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:
    ckpts.write_frozen(state)  # what a run does before its first epoch
    ckpts.save(state, {"step": 5, "epoch": 1})
    for leaf in jax.tree.leaves(state):  # donated to the next step
      leaf.delete()
    ckpts.wait()
  _same(checkpoint.restore_latest(tmp_path, _state(0))[0], expected)


def test_a_workdir_from_before_the_store_resumes_and_then_saves_the_new_layout(tmp_path):
  """Checkpoints written before frozen stores existed (the whole state in each, no '_frozen' in
  their meta: what Checkpoints without `frozen` still writes) resume, and the saves after them
  leave the frozen parameters out; both layouts restore side by side."""
  _save(tmp_path, [_state(1)], frozen=None, best=[_state(1)])
  assert _saved_params(tmp_path / "checkpoints" / "latest" / "1") == {
      "backbone/w", "backbone/v", "head/w", "head/b"}
  assert not _stores(tmp_path)
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:
    state, meta = ckpts.restore_for_resume(_state(0))
    _same(state, _state(1))
    ckpts.save(_state(2), {"step": 2, "epoch": 2})
    ckpts.wait()
  assert _saved_params(tmp_path / "checkpoints" / "latest" / "2") == {"head/w", "head/b"}
  assert len(_stores(tmp_path)) == 1
  _same(checkpoint.restore_latest(tmp_path, _state(0))[0], _state(2))
  _same(checkpoint.restore_best(tmp_path, _state(0))[0], _state(1))  # still the old layout


def test_resuming_with_another_frozen_set_is_a_clear_error(tmp_path):
  _save(tmp_path, [_state(1)])
  for other in ([], [("backbone", "w")], [*FROZEN, ("head", "b")]):
    with checkpoint.Checkpoints(tmp_path, frozen=other) as ckpts:
      with pytest.raises(errors.CheckpointError, match=r"froze other parameters.*config\."
                                                       r"trainable or config\.lr_groups"):
        ckpts.restore_for_resume(_state(0))
  assert checkpoint.steps_on_disk(tmp_path / "checkpoints" / "latest") == [1]  # nothing renamed


def _flip(store: pathlib.Path) -> None:
  f = max((p for p in (store / "params").rglob("*") if p.is_file() and "/d/" in str(p)),
          key=lambda p: p.stat().st_size)
  data = bytearray(f.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 4):
    data[i] ^= 0x5A
  f.write_bytes(bytes(data))


def _other_arrays(tmp_path, store: pathlib.Path) -> None:
  """The store's arrays replaced by valid ones of the same shapes and other values (a copy
  mixed up with another run's): only its checksums can tell."""
  _save(tmp_path / "other", [_state(1, backbone_seed=7)])
  (other,) = _stores(tmp_path / "other")
  shutil.rmtree(store / "params")
  shutil.copytree(other / "params", store / "params")


@pytest.mark.parametrize("how", ["flip", "other_arrays", "missing"])
def test_a_damaged_or_lost_store_is_one_clear_error_and_nothing_moves(tmp_path, how):
  workdir = tmp_path / "run"
  _save(workdir, [_state(1), _state(2)], best=[_state(2)])
  (store,) = _stores(workdir)
  {"flip": _flip, "other_arrays": lambda s: _other_arrays(tmp_path, s),
   "missing": shutil.rmtree}[how](store)
  listing = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  for restore in (lambda: checkpoint.restore_latest(workdir, _state(0)),
                  lambda: checkpoint.restore_best(workdir, _state(0)),
                  lambda: checkpoint.Checkpoints(workdir, frozen=FROZEN).restore_for_resume(
                      _state(0))):
    with pytest.raises(frozen_store.FrozenStoreError) as e:
      restore()
    assert str(store) in str(e.value) and "training command again" in str(e.value)
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == listing


def test_a_lost_or_damaged_store_is_rebuilt_from_the_same_weights_only(tmp_path):
  _save(tmp_path, [_state(1), _state(2)])
  (store,) = _stores(tmp_path)
  shutil.rmtree(store)
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:
    with pytest.raises(frozen_store.FrozenStoreError, match="other frozen parameters"):
      ckpts.restore_for_resume(_state(0), frozen_from=lambda: _state(0, backbone_seed=3))
  assert not store.exists()
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:  # the weights it started from
    state, _ = ckpts.restore_for_resume(_state(0), frozen_from=lambda: _state(9))
  _same(state, _state(2))
  assert [s.name for s in _stores(tmp_path)] == [store.name]
  _flip(store)  # damaged: set aside (kept), written again
  with checkpoint.Checkpoints(tmp_path, frozen=FROZEN) as ckpts:
    state, _ = ckpts.restore_for_resume(_state(0), frozen_from=lambda: _state(9))
  _same(state, _state(2))
  names = [s.name for s in _stores(tmp_path)]
  assert names[0] == store.name and names[1].startswith(store.name + frozen_store.DAMAGED_TAG)


def test_changed_frozen_parameters_get_their_own_store(tmp_path):
  """A frozen parameter that changed (a bug elsewhere) cannot make a checkpoint restore other
  weights: the store is named by its contents, so the checkpoint points to a new one."""
  _save(tmp_path, [_state(1), _state(2, backbone_seed=4)])
  assert len(_stores(tmp_path)) == 2
  _same(checkpoint.restore_latest(tmp_path, _state(0))[0], _state(2, backbone_seed=4))


# ---------------------------------------------------------------------------------------------
# The real run: train, resume, evaluate, predict, init_from

def _config(data_dir, num_epochs):
  """The cats-vs-dogs convnet, backbone frozen (config.trainable: the head): seconds on a CPU."""
  c = config_base.get_config()
  c.weights = ""
  c.model.name, c.preprocess, c.data.image_size = "cnn", "rescale", 48
  c.augment.enabled = False
  c.data.dir, c.data.val_fraction = str(data_dir), 0.25
  c.batch_size = c.eval_batch_size = 8
  c.num_epochs = num_epochs
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("frozen_runs")
  data = root / "data"
  data_factory.class_folders(data / "train", {"paper": 8, "rock": 8, "scissors": 8},
                             size=(40, 40))
  train.train_and_evaluate(_config(data, 2), root / "straight")
  return root, data


def _final(workdir, config):
  target = steps.abstract_train_state(config, models.build_model(config))
  return jax.device_get(checkpoint.restore_latest(workdir, target)[0])


def test_a_run_writes_its_backbone_once(runs):
  root, data = runs
  workdir = root / "straight"
  config = _config(data, 2)
  frozen = {"/".join(p) for p in optim.frozen_paths(
      steps.abstract_params(config, models.build_model(config)), config)}
  assert frozen and all(p.startswith("backbone/") for p in frozen)
  assert len(_stores(workdir)) == 1
  for which in ("latest", "best"):
    for step in checkpoint.steps_on_disk(workdir / "checkpoints" / which):
      held = _saved_params(workdir / "checkpoints" / which / str(step))
      assert held and not held & frozen, (which, step)


def test_an_old_layout_workdir_resumes_evaluates_and_predicts(runs, monkeypatch):
  """Epoch 1 written as before this change (no frozen list: whole states), epoch 2 by today's
  code: the same parameters as the straight run, bit for bit."""
  root, data = runs
  workdir = root / "old"
  with monkeypatch.context() as m:
    m.setattr(optim, "frozen_paths", lambda params, config: [])
    train.train_and_evaluate(_config(data, 1), workdir)
  assert not _stores(workdir)
  train.train_and_evaluate(_config(data, 2), workdir)
  assert len(_stores(workdir)) == 1
  _same(_final(workdir, _config(data, 2)), _final(root / "straight", _config(data, 2)))
  out = evaluation.evaluate_checkpoint(_config(data, 2), workdir, split="validation")
  assert out["num_examples"] == 6
  image = sorted((data / "train" / "rock").iterdir())[0]
  for which in ("best", "latest"):  # the best checkpoint may be either layout, latest is new
    assert len(prediction.run(workdir, [str(image)], which=which, quiet=True)) == 1


def test_a_changed_trainable_set_stops_the_resume_with_one_message(runs):
  root, data = runs
  workdir = root / "changed"
  shutil.copytree(root / "straight", workdir)
  config = _config(data, 3)
  config.trainable = ("head/.*", "backbone/conv2d_3/.*")
  before = (workdir / "config.json").read_text()
  with pytest.raises(errors.CheckpointError, match="froze other parameters"):
    train.train_and_evaluate(config, workdir)
  assert (workdir / "config.json").read_text() == before  # the config it names is the old one


def test_init_from_and_a_lost_store_rebuilt_by_the_run(runs, tmp_path):
  root, data = runs
  workdir = tmp_path / "copy"
  shutil.copytree(root / "straight", workdir)
  (store,) = _stores(workdir)
  shutil.rmtree(store)
  with pytest.raises(frozen_store.FrozenStoreError):
    checkpoint.restore_best(workdir, steps.abstract_train_state(
        _config(data, 2), models.build_model(_config(data, 2))))
  train.train_and_evaluate(_config(data, 2), workdir)  # finished: rebuilds, returns eval.json
  assert [s.name for s in _stores(workdir)] == [store.name]
  warm = _config(data, 1)
  warm.init_from = str(workdir)
  model = models.build_model(warm)
  state = train.initial_state(warm, model, jax.random.PRNGKey(1), sharding.make_mesh(),
                              train.resolve_weights(warm))
  best, _ = checkpoint.restore_best(root / "straight", steps.abstract_train_state(warm, model))
  _same(state.params, best.params)
