"""batch_stats through the train step (MobileNetV2 alpha 0.35 at 32x32, 8 images, one step).

Frozen BN (config.model.bn_trainable=False): the step writes nothing, batch_stats come back
bit-identical even with the backbone's weights training. bn_trainable=True: exactly the BN
layers whose gamma trains move their statistics. (The statistics themselves against Keras:
tests/test_bn_semantics.py.)"""

import jax
import numpy as np
import pytest

from rpsflax import config_base, models, steps


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
