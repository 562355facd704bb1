"""Gradients match TensorFlow: tf.GradientTape on the Keras model vs jax.grad of our loss.

Same seeded weights and batch on both sides, dropout off (inference mode), the loss each recipe
trains with (binary cross-entropy for the cats-vs-dogs CNN, softmax cross-entropy for the rps
head). Every trainable parameter is compared: all of the CNN, and VGG16's block5 + head with the
rest frozen (the fine-tuning case). The differentiated parameters are exactly those the train
step differentiates (`optim.param_labels` / `split_by_label` on the recipe's `trainable`).

Max-pool ties: our pool's gradient splits equally among tied maxima, TensorFlow's gives it all to
the first (see rpsflax/models/layers.py). Pools follow ReLUs, so ties are zeros whose gradient the
ReLU kills either way; these inputs contain many such all-zero windows (asserted below), so a
difference there would show.

Tolerance: each gradient is a sum over the batch and every output position (up to ~10^5 terms
for the CNN's first kernel), accumulated in float32 in different orders by XLA and oneDNN, so
agreement is expected to ~1e-6 of the gradient's scale (measured: at most 1.7e-6); the bound 2e-5 leaves a 10x margin
over what is measured, and a wrong gradient (e.g. a pool routing to the wrong input, a missing
ReLU mask) is off by O(1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import keras_reference as kr
from rpsflax import optim, steps
from rpsflax.models import build_model
from rpsflax.models.vgg import vgg16_layer_names
from rpsflax.preprocess import rescale, vgg16_preprocess

GRAD_TOL = 2e-5  # max abs error / max |TF gradient|, per parameter (measured <= 1.7e-6)


def tf_gradients(model, x, y, loss_name):
  import tensorflow as tf
  k = kr.keras()
  loss_fn = {"bce": k.losses.BinaryCrossentropy(), "sce": k.losses.SparseCategoricalCrossentropy()}
  with tf.GradientTape() as tape:
    loss = loss_fn[loss_name](tf.constant(y), model(tf.constant(x), training=False))
  weights = model.trainable_weights
  grads = tape.gradient(loss, weights)
  # Keras paths read 'sequential/conv2d/kernel' or 'vgg16/block5_conv1/bias': key by layer/weight.
  return float(loss), {"/".join(w.path.split("/")[-2:]): np.asarray(g)
                       for w, g in zip(weights, grads)}


def jax_gradients(config, params, x, y):
  """(loss, {flat path: gradient}) of the train step's loss w.r.t. the trainable parameters."""
  model = build_model(config)
  trainable, frozen = optim.split_by_label(params, optim.param_labels(params, config))

  def loss_fn(tr):
    logits = model.apply({"params": optim.merge(tr, frozen)}, x, train=False)
    loss, _ = steps.per_example_loss(logits, jnp.asarray(y), int(config.head.num_classes))
    return jnp.mean(loss)

  loss, grads = jax.value_and_grad(loss_fn)(trainable)
  return float(loss), grads


def compare(keras_grads, jax_grads, keras_path):
  """keras_path(flax path) -> Keras weight path; returns {name: rel error}, asserts coverage."""
  assert len(keras_grads) == len(jax_grads), (sorted(keras_grads), sorted(jax_grads))
  errors = {}
  for path, g in jax_grads.items():
    want = keras_grads[keras_path(path)]
    _, scale, rel = kr.rel_error(g, want)
    assert scale > 0, path
    errors["/".join(path)] = rel
  for name, rel in errors.items():
    print(f"{name:40s} rel err {rel:.2e}")
  return errors


def zero_windows(features_before_pool) -> float:
  """Fraction of 2x2 pool windows whose four inputs are all zero (ties)."""
  f = np.asarray(features_before_pool)
  n, h, w, c = f.shape
  f = f[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
  return float(np.mean(np.all(f == 0, axis=(2, 4))))


def test_cnn_gradients_match_tensorflow():
  size = 150
  model = kr.seeded_catsdogs_cnn(image_size=size)
  images = np.stack([kr.natural_image(size, "catsdogs")[0], kr.random_image(size),
                     kr.synthetic_image(size), kr.random_image(size, seed=5)])
  x = np.asarray(rescale(images))
  y = np.array([1, 0, 1, 0], np.float32)
  k_loss, k_grads = tf_gradients(model, x, y[:, None], "bce")

  config = kr.load_recipe("catsdogs")
  layers = {l.name: l.get_weights() for l in model.layers if l.get_weights()}
  params = {"backbone": {n: dict(zip(("kernel", "bias"), layers[n])) for n in kr.CNN_LAYER_NAMES[:4]},
            "head": {"hidden_0": dict(zip(("kernel", "bias"), layers["dense"])),
                     "predictions": dict(zip(("kernel", "bias"), layers["dense_1"]))}}
  j_loss, j_grads = jax_gradients(config, params, x, y)
  assert abs(j_loss - k_loss) < 1e-5 * max(1.0, abs(k_loss))
  keras_name = {"hidden_0": "dense", "predictions": "dense_1"}
  errors = compare(k_grads, j_grads,
                   lambda p: f"{keras_name.get(p[1], p[1])}/{p[2]}")
  assert len(errors) == 12  # 6 layers x (kernel, bias): everything trains
  assert max(errors.values()) < GRAD_TOL

  # Ties exist and are zeros: the first conv's output has all-zero 2x2 windows.
  conv = kr.keras().Model(model.inputs, model.get_layer("conv2d").output)
  assert zero_windows(conv.predict(x, verbose=0)) > 0.01


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_vgg16_block5_and_head_gradients_match_tensorflow(pooling):
  """VGG16 fine-tuned from block5 (the rest frozen) + the rps head, at 64x64 (block5 is 4x4,
  its pool 2x2, so the global pool sees more than one position)."""
  k = kr.keras()
  L = k.layers
  size = 64
  k.utils.set_random_seed(0)
  base = k.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
  kr.reseed_weights(base, 0, bias_std=5.0)
  for layer in base.layers:
    layer.trainable = layer.name.startswith("block5")
  inputs = k.Input((size, size, 3))
  pool = {"max": L.GlobalMaxPooling2D, "avg": L.GlobalAveragePooling2D}[pooling]
  out = L.Dense(3, activation="softmax", name="predictions")(pool()(base(inputs)))
  model = k.Model(inputs, out)
  head_w = [w * np.float32(0.01) if w.ndim == 2 else w
            for w in model.get_layer("predictions").get_weights()]
  model.get_layer("predictions").set_weights(head_w)  # logits O(1): softmax not saturated

  images = np.stack([kr.natural_image(size, "rps")[0], kr.random_image(size),
                     kr.synthetic_image(size)])
  x = np.asarray(vgg16_preprocess(images))
  y = np.array([0, 1, 2], np.int32)
  k_loss, k_grads = tf_gradients(model, x, y, "sce")

  config = kr.load_recipe("rps")
  config.data.image_size = size
  config.head.pooling = pooling
  config.trainable = ("backbone/block5.*", "head/.*")
  layers = {l.name: l.get_weights() for l in base.layers if l.get_weights()}
  params = {"backbone": {n: dict(zip(("kernel", "bias"), layers[n]))
                         for n in vgg16_layer_names(include_top=False)},
            "head": {"predictions": dict(zip(("kernel", "bias"), head_w))}}
  j_loss, j_grads = jax_gradients(config, params, x, y)
  assert abs(j_loss - k_loss) < 1e-5 * max(1.0, abs(k_loss))
  errors = compare(k_grads, j_grads, lambda p: f"{p[1]}/{p[2]}")
  trained = {"/".join(p[:2]) for p in traverse_util.flatten_dict(params)
             if p[1].startswith("block5") or p[0] == "head"}
  assert {"/".join(n.split("/")[:2]) for n in errors} == trained  # block5 x 3 + predictions
  assert max(errors.values()) < GRAD_TOL

  conv = k.Model(base.inputs, base.get_layer("block5_conv3").output)
  assert zero_windows(conv.predict(x, verbose=0)) > 0.0
