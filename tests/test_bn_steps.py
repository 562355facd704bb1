"""batch_stats through the train step (MobileNetV2 alpha 0.35 at 32x32, 8 images, one step).

Frozen BN (config.model.bn_trainable=False): the step writes nothing, batch_stats come back
bit-identical even with the backbone's weights training. bn_trainable=True: exactly the BN
layers whose gamma trains move their statistics. (The statistics themselves against Keras:
tests/test_bn_semantics.py.) Sharded over 4 (simulated) devices, two steps give the params and
batch_stats of one device: BN's batch moments are over the global batch, not each shard's.
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from rpsflax import config_base, models, sharding, steps
from rpsflax.benchmark import inputs

REPO = pathlib.Path(__file__).resolve().parents[1]


def recipe(bn_trainable, trainable):
  c = config_base.get_config()
  c.model.name, c.model.alpha, c.model.bn_trainable = "mobilenet_v2", 0.35, bn_trainable
  c.preprocess = "mobilenet_v2"
  c.data.image_size = 32
  c.head.num_classes, c.head.pooling, c.head.dropout = 1, "avg", 0.2
  c.augment.enabled = False
  c.trainable = trainable
  return c


def one_step(config):
  model = models.build_model(config)
  state = steps.create_train_state(config, model, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 2, 8).astype(np.int32), "mask": np.ones(8, bool)}
  new, metrics = jax.jit(steps.make_train_step(config, model))(state, batch, jax.random.key(1))
  return state, new, metrics


def leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow  # about 75 s on 2 shared cores: two MobileNetV2 train steps compiled
def test_frozen_and_trainable_bn_in_the_train_step():
  state, new, metrics = one_step(recipe(False, ("head/.*", "backbone/block_16_.*")))
  assert np.isfinite(float(metrics["loss_sum"]))
  before, after = leaves(state.batch_stats), leaves(new.batch_stats)
  assert before.keys() == after.keys() and len(before) == 2 * 52  # 52 BN layers at any alpha
  for k in before:
    np.testing.assert_array_equal(after[k], before[k])
  # the unfrozen layers' weights did train
  assert not np.array_equal(new.params["backbone"]["block_16_project"]["kernel"],
                            state.params["backbone"]["block_16_project"]["kernel"])

  config = recipe(True, ("head/.*", "backbone/block_16_.*"))
  on = set(models.bn_training_layers(config))
  assert on == {"block_16_expand_BN", "block_16_depthwise_BN", "block_16_project_BN"}
  state, new, _ = one_step(config)
  before, after = leaves(state.batch_stats), leaves(new.batch_stats)
  for k in before:
    layer = k.split("/")[1]
    assert np.array_equal(after[k], before[k]) != (layer in on), k


# ---------------------------------------------------------------------------------------------
# Sharded: 4 devices against 1


def two_sharded_steps(config, variables, mesh):
  """The state after two jit train steps on `mesh` (batch sharded, state replicated), on host."""
  model = models.build_model(config)
  train = steps.compile_steps(config, model, mesh).train
  state = jax.device_put(steps.create_train_state(config, model, params=variables["params"],
                                                  batch_stats=variables["batch_stats"]),
                         sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  for _ in range(2):
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 2, 8).astype(np.int32), "mask": np.ones(8, bool)}
    state, _ = train(state, sharding.shard_batch(batch, mesh), jax.random.key(1))
  return jax.device_get(state)


def check_four_devices_match_one() -> None:
  """Run in a process with 4 host devices (see the test below)."""
  mesh4, mesh1 = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
  assert mesh4.devices.size == 4
  # The last conv block (Conv_1, Conv_1_bn) trains either way (the cheapest backward with a BN
  # in it); its BN is in training mode only with bn_trainable=True.
  for bn_trainable in (True, False):
    config = recipe(bn_trainable, ("head/.*", "backbone/Conv_1.*"))
    config.batch_size = 8  # 2 images per device
    # Random weights in NumPy (no init compile); BN starts at mean 0, variance 1.
    variables = inputs.random_variables(config, models.build_model(config))
    four, one = two_sharded_steps(config, variables, mesh4), two_sharded_steps(config, variables,
                                                                               mesh1)
    start, stats4, stats1 = (leaves(t) for t in (variables["batch_stats"], four.batch_stats,
                                                 one.batch_stats))
    for (k, a), b in zip(leaves(four.params).items(), leaves(one.params).values()):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)
    moved = set()
    for k in start:
      np.testing.assert_allclose(stats4[k], stats1[k], rtol=1e-5, atol=1e-6, err_msg=k)
      if not np.array_equal(stats4[k], start[k]):
        moved.add(k.split("/")[1])
    assert moved == ({"Conv_1_bn"} if bn_trainable else set()), (bn_trainable, sorted(moved))
    gamma = lambda p: p["backbone"]["Conv_1_bn"]["scale"]
    assert not np.array_equal(gamma(four.params), gamma(variables["params"]))  # it did train
  print("OK")


@pytest.mark.slow  # ~30 s of CPU (50 s wall on 2 busy cores): four MobileNetV2 steps compiled
def test_four_devices_match_one_with_trainable_and_frozen_bn():
  """Two steps of MobileNetV2 (alpha 0.35, 32 px, global batch 8) on 4 devices and on 1:
  params and batch_stats agree. The last conv block trains (its BN's gamma and beta too); with
  bn_trainable=True its BN runs in training mode, over the global batch, and its moving
  statistics move (the same on both), with bn_trainable=False no statistic moves."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run([sys.executable, "-c",
                        "import test_bn_steps as T; T.check_four_devices_match_one()"],
                       env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
