"""Label smoothing, mixup and weight decay: the head-recipe knobs cross-validation compares."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpsflax import config_base, config_check, optim, steps
from rpsflax.errors import ConfigError


def test_soft_targets_smooth_toward_uniform():
  t = np.asarray(steps.soft_targets(jnp.array([0, 2]), 3, 0.3))
  np.testing.assert_allclose(t, [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(steps.soft_targets(jnp.array([1, 0]), 1, 0.2)), [0.9, 0.1])


def test_mixup_blends_pairs_and_never_mixes_in_padding():
  x = jnp.arange(8, dtype=jnp.float32).reshape(4, 2)
  t = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)
  mask = jnp.array([True, True, True, False])  # row 3 is padding
  for s in range(50):  # a key whose shuffle pairs a real row with the padding row
    key = jax.random.PRNGKey(s)
    perm_rng, lam_rng = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(perm_rng, 4))
    if any(perm[i] == 3 for i in range(3)):
      break
  lam = float(jax.random.beta(lam_rng, 0.4, 0.4))
  mx, mt = map(np.asarray, steps.mix_batch(key, x, t, mask, 0.4))
  for i in range(4):
    w = lam if perm[i] != 3 else 1.0  # a padding partner is never mixed in
    np.testing.assert_allclose(mx[i], w * x[i] + (1 - w) * x[perm[i]], rtol=1e-5)
    np.testing.assert_allclose(mt[i], w * t[i] + (1 - w) * t[perm[i]], rtol=1e-5)
  assert 0 < lam < 1 and not np.allclose(mx, x)


def _head_config(**kw):
  c = config_base.get_config()
  c.head.num_classes, c.head.dropout = 3, 0.0
  for k, v in kw.items():
    c[k] = v
  return c


def test_label_smoothing_changes_the_training_loss():
  from rpsflax import models
  feats = np.random.default_rng(0).normal(size=(6, 1, 1, 5)).astype(np.float32)
  batch = {"image": feats, "label": np.array([0, 1, 2, 0, 1, 2], np.int32),
           "mask": np.ones(6, bool)}
  losses = {}
  for ls in (0.0, 0.2):
    c = _head_config(label_smoothing=ls)
    model = models.build_model(c)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(feats[:1]), method="classify")["params"]
    state = steps.create_train_state(c, model, params=params)
    step = jax.jit(steps.make_train_step(c, model, on_features=True))
    _, m = step(state, batch, jax.random.PRNGKey(1))
    losses[ls] = float(m["loss_sum"])
  assert losses[0.2] != pytest.approx(losses[0.0], rel=1e-4)


def test_weight_decay_pulls_weights_to_zero_without_a_gradient():
  c = _head_config()
  c.optim.name, c.optim.learning_rate, c.optim.weight_decay = "sgd", 0.1, 0.5
  params = {"head": {"w": jnp.ones(3)}}
  tx = optim.create_optimizer(c, params)
  updates, _ = tx.update({"head": {"w": jnp.zeros(3)}}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["head"]["w"]), -0.05, rtol=1e-6)


@pytest.mark.parametrize("key, value", [("label_smoothing", 1.0), ("mixup_alpha", -1.0)])
def test_bad_regulariser_values_name_their_key(key, value):
  c = _head_config(**{key: value})
  with pytest.raises(ConfigError, match=f"config.{key}"):
    config_check.check_config(c)
