"""Mixed precision: config.model.dtype='bfloat16' computes in bf16, keeps float32 params and loss.

Tolerances. bfloat16 keeps 8 significant bits, so each rounding of an activation or weight
costs a relative error up to 2^-8 ~ 3.9e-3. Convolutions accumulate in float32 on the backends
we run (XLA CPU and GPU), so the error enters once per layer boundary and compounds roughly as a
random walk over VGG16's 13 convolutions: sqrt(13) * 3.9e-3 ~ 1.4e-2 in the worst case. We
allow 2e-2 relative to the activation scale at every block (measured: ~3-5e-3 on a CPU). The
test also requires the error to be above 1e-4, which proves bf16 really ran (float32 gives 0).
With logits of O(1), a relative logit error of 1e-2 moves softmax probabilities by at most
~0.5e-2: probabilities must agree within 1e-2 and the predicted class must be the same wherever
the float32 top-2 logit margin is clear (> 0.1).

Inputs: the parity tests' images (a real RPS photo and a cat from ../shared/data when present,
else synthetic natural-looking images) at 224x224, VGG16 with He-normal random weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import config_base, models, sharding, steps
from rpsflax.benchmark import inputs

SIZE = 224
FEATURE_TOL = 2e-2
PROB_TOL = 1e-2


def _config(dtype, size=SIZE):
  c = config_base.get_config()
  c.weights = ""
  c.model.dtype = dtype
  c.data.image_size = size
  return c


def _images():
  rps, _ = kr.natural_image(SIZE, "rps")
  cat, _ = kr.natural_image(SIZE, "catsdogs")
  return np.stack([rps, cat, kr.synthetic_image(SIZE)])


@pytest.fixture(scope="module")
def parity():
  """float32 params shared by both dtypes; the head scaled so float32 logits have std ~2."""
  c32 = _config("float32")
  model = models.build_model(c32)
  params = inputs.random_params(c32, model)
  images = _images()
  feats = jax.jit(lambda p, x: model.apply({"params": p}, steps.prepare_images(c32, x),
                                           method="features"))(params, images)
  pooled = np.asarray(feats).max(axis=(1, 2))
  rng = np.random.RandomState(3)
  kernel = rng.standard_normal(params["head"]["predictions"]["kernel"].shape)
  kernel *= 2.0 / (np.sqrt(kernel.shape[0]) * pooled.std())
  params["head"]["predictions"]["kernel"] = kernel.astype(np.float32)
  return params, images


def _blocks(config, params, images):
  """{blockN_pool: activations} and the backbone output, for `config`'s dtype."""
  model = models.build_model(config)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, steps.prepare_images(config, x),
                                        method="features", mutable=["intermediates"]))
  out, state = fn(params, images)
  inter = state["intermediates"]["backbone"]
  return out, {k: v[0] for k, v in inter.items()}


def test_bf16_features_match_fp32_within_bf16_precision(parity):
  params, images = parity
  out32, blocks32 = _blocks(_config("float32"), params, images)
  out16, blocks16 = _blocks(_config("bfloat16"), params, images)
  assert out32.dtype == jnp.float32 and out16.dtype == jnp.bfloat16
  assert sorted(blocks16) == [f"block{i}_pool" for i in range(1, 6)]
  for name in sorted(blocks32):
    want = np.asarray(blocks32[name], np.float64)
    got = np.asarray(blocks16[name].astype(jnp.float32), np.float64)
    _, scale, rel_max = kr.rel_error(got, want)
    rel_l2 = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert scale > 1.0, f"{name}: activations vanished ({scale}); the comparison means nothing"
    assert rel_max < FEATURE_TOL and rel_l2 < FEATURE_TOL, (name, rel_max, rel_l2)
    assert rel_l2 > 1e-4, f"{name}: bf16 and fp32 agree exactly: bf16 did not run"


def test_bf16_predictions_match_fp32(parity):
  params, images = parity
  probs = {}
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype)
    model = models.build_model(config)
    probs[dtype] = np.asarray(steps.make_predict_fn(config, model)(params, images))
    assert probs[dtype].dtype == np.float32
  np.testing.assert_allclose(probs["float32"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(probs["bfloat16"], probs["float32"], atol=PROB_TOL, rtol=0)
  logits = np.log(probs["float32"])
  top2 = np.sort(logits, axis=-1)[:, -2:]
  clear = (top2[:, 1] - top2[:, 0]) > 0.1
  assert clear.sum() >= 2, "the inputs should have clear winners, else argmax tells nothing"
  np.testing.assert_array_equal(probs["bfloat16"].argmax(-1)[clear],
                                probs["float32"].argmax(-1)[clear])
  assert np.abs(probs["bfloat16"] - probs["float32"]).max() > 0  # bf16 did run


def test_bf16_logits_and_loss_are_float32():
  config = _config("bfloat16", size=32)
  model = models.build_model(config)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(lambda r, x: model.init(r, x)["params"], jax.random.PRNGKey(0), x)
  assert {l.dtype for l in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  feats = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="features"), params, x)
  logits = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  assert feats.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  loss, _ = jax.eval_shape(lambda l, y: steps.per_example_loss(l, y, 3), logits, labels)
  assert loss.dtype == jnp.float32


@pytest.mark.parametrize("trainable", [("head/.*",), (".*",)], ids=["frozen", "finetune"])
def test_bf16_train_step_keeps_params_float32(trainable):
  """The frozen step runs for real; the fine-tune step's output types are checked abstractly."""
  config = _config("bfloat16", size=32)
  config.trainable = trainable
  config.augment.rotation_range = 10.0
  model = models.build_model(config)
  params = inputs.random_params(config, model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = steps.create_train_state(config, model, params=params)
  batch = inputs.synthetic_batch(config, 4)
  rng = jax.random.PRNGKey(0)
  if trainable == (".*",):
    new, metrics = jax.eval_shape(steps.make_train_step(config, model), state, batch, rng)
  else:
    step = steps.compile_steps(config, model, mesh).train
    before = jax.device_get(state.params)
    new, metrics = step(jax.device_put(state, sharding.replicated(mesh)),
                        sharding.shard_batch(batch, mesh), rng)
    assert np.isfinite(float(metrics["loss_sum"])) and int(metrics["nonfinite"]) == 0
    moved = np.abs(np.asarray(new.params["head"]["predictions"]["kernel"])
                   - before["head"]["predictions"]["kernel"]).max()
    assert moved > 0
  assert {l.dtype for l in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
  assert {l.dtype for l in jax.tree.leaves(new.opt_state) if l.ndim} <= {jnp.dtype(jnp.float32)}
  assert metrics["loss_sum"].dtype == jnp.float32
