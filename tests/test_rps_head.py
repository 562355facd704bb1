"""The rps head and the whole rps model against Keras, on feature maps larger than 1x1, and the rps
recipe against the tutorial (issue 16, item 1).

At 32x32, where the other VGG parity tests stop at block5 1x1, a global max pool equals a global
average pool and a Flatten: a wrong pooling would pass. Here:
  - `Head(pooling='max'|'avg'|'flatten')` alone vs Keras GlobalMaxPooling2D / GlobalAveragePooling2D
    / Flatten + Dropout(0.5) + Dense(3, softmax), same weights, on random 7x7x512 maps;
  - the rps model (`build_model(configs/rps.py)`: VGG16 + head) vs keras.applications.VGG16 +
    GlobalMaxPooling2D + Dropout + Dense(3, softmax) at 64x64 (block5 2x2), weights through our
    converter from a Keras legacy file;
  - configs/rps.py vs the tutorial: frozen VGG16 at 224, max pool, dropout 0.5, Dense(3) softmax,
    RMSprop 1e-3 (Keras defaults), batch 32, 20 epochs, its augmentation, paper=0 rock=1
    scissors=2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_factory
import keras_reference as kr
from rpsflax import keras_models
from rpsflax.models import Head, heads

POOLINGS = heads.POOLINGS  # every pooling Head accepts (a Keras one missing fails here)
RTOL = 1e-5  # softmax probabilities, fp32


def keras_head(pooling: str, shape, seed=0):
  k = kr.keras()
  k.utils.set_random_seed(seed)
  head = {"pooling": pooling, "dropout": 0.5, "hidden": (), "hidden_activation": "relu",
          "hidden_dropout": 0.0, "num_classes": 3}
  # The head the benchmark's Keras peer uses: pooling, Dropout(0.5), Dense(3, softmax).
  model = k.Sequential([k.Input(shape), *keras_models.head_layers(head)])
  kernel, bias = model.get_layer("predictions").get_weights()
  rng = np.random.default_rng(seed)
  model.get_layer("predictions").set_weights(
      [(rng.standard_normal(kernel.shape) * 0.1 / np.sqrt(kernel.shape[0])).astype(np.float32),
       rng.standard_normal(bias.shape).astype(np.float32) * 0.1])
  return model


@pytest.fixture(scope="module")
def maps():
  """Two batches of ReLU-like 7x7x512 maps whose max, mean and layout all differ."""
  rng = np.random.default_rng(1)
  return np.maximum(rng.standard_normal((4, 7, 7, 512)) * 2 + 0.5, 0).astype(np.float32)


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_head_matches_keras_on_7x7_maps(maps, pooling):
  model = keras_head(pooling, maps.shape[1:])
  want = np.asarray(model(maps, training=False))
  kernel, bias = model.get_layer("predictions").get_weights()
  head = Head(num_classes=3, pooling=pooling, dropout=0.5)
  logits = head.apply({"params": {"predictions": {"kernel": kernel, "bias": bias}}}, maps,
                      train=False)
  got = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6, err_msg=pooling)
  assert want.max() < 0.99 and np.abs(want[0] - want[1]).max() > 1e-3  # informative outputs


def test_the_poolings_differ_on_these_maps(maps):
  """So a head with the wrong pooling fails the test above (at 1x1 all three agree)."""
  outs = {}
  for pooling in ("max", "avg"):
    model = keras_head(pooling, maps.shape[1:])
    outs[pooling] = np.asarray(model(maps, training=False))
  assert np.abs(outs["max"] - outs["avg"]).max() > 1e-2


@pytest.fixture(scope="module")
def rps_reference(tmp_path_factory):
  """Keras VGG16(include_top=False, 64x64) + GlobalMaxPooling2D + Dropout + Dense(3, softmax),
  seeded, its VGG weights written in the release layout."""
  k = kr.keras()
  k.utils.set_random_seed(0)
  base = k.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
  x = k.layers.GlobalMaxPooling2D()(base.output)
  x = k.layers.Dropout(0.5)(x)
  out = k.layers.Dense(3, activation="softmax", name="predictions")(x)
  model = k.Model(base.input, out)
  kr.reseed_weights(model, 0, out_scale={"predictions": 0.003}, bias_std=5.0)
  path = kr.write_legacy_h5(base, tmp_path_factory.mktemp("rps_model") / "vgg16_notop.h5")
  return model, base, path


def _rps_config(path):
  c = kr.load_recipe("rps")
  c.data.image_size = 64
  c.weights = str(path)
  return c


def test_rps_model_matches_keras_with_2x2_block5(rps_reference):
  from rpsflax import models
  from rpsflax import steps, weights as W
  from rpsflax.preprocess import vgg16_preprocess

  model_k, base, path = rps_reference
  config = _rps_config(path)
  model = models.build_model(config)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  params = W.load_for_model(str(path), jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                    params["params"]),
                            models.keras_layer_map(config))
  kernel, bias = model_k.get_layer("predictions").get_weights()
  params = dict(params)
  params["head"] = {"predictions": {"kernel": kernel, "bias": bias}}

  pixels = np.stack([kr.random_image(64, seed=s) for s in (1, 2, 3)]).astype(np.float32)
  x = np.asarray(vgg16_preprocess(pixels))
  feats_k = np.asarray(base(x, training=False))
  assert feats_k.shape == (3, 2, 2, 512)  # larger than 1x1: max != mean
  assert np.abs(feats_k.max(axis=(1, 2)) - feats_k.mean(axis=(1, 2))).max() > 1e-2 * feats_k.max()
  feats = np.asarray(model.apply({"params": params}, x, method="features"))
  err, scale, rel = kr.rel_error(feats, feats_k)
  assert rel < 2e-5, f"block5_pool: rel error {rel:.2e}"

  want = np.asarray(model_k(x, training=False))
  logits = model.apply({"params": params}, x, train=False)
  got = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert want.max() < 0.99 and np.abs(want[0] - want[1]).max() > 1e-3
  # The same through the training code's own preprocessing of uint8 pixels.
  prepared = steps.prepare_images(config, jnp.asarray(pixels.astype(np.uint8)))
  np.testing.assert_allclose(np.asarray(prepared), vgg16_preprocess(pixels.astype(np.uint8)),
                             rtol=0, atol=1e-4)


def test_rps_recipe_matches_the_tutorial(tmp_path):
  from rpsflax import config_check, data_files, models, optim, steps

  c = kr.load_recipe("rps")
  config_check.check_config(c)
  assert (c.model.name, c.weights, c.preprocess, c.data.image_size) == \
      ("vgg16", "imagenet", "vgg16", 224)
  assert (c.head.num_classes, c.head.pooling, c.head.dropout, tuple(c.head.hidden)) == \
      (3, "max", 0.5, ())
  # RMSprop with Keras' defaults (learning rate 1e-3, rho 0.9, no momentum, epsilon 1e-7).
  assert (c.optim.name, c.optim.learning_rate, c.optim.rho, c.optim.momentum,
          c.optim.epsilon) == ("rmsprop", 1e-3, 0.9, 0.0, 1e-7)
  assert (c.batch_size, c.num_epochs) == (32, 20)
  assert tuple(c.trainable) == ("head/.*",) and not c.lr_groups  # the VGG16 base is frozen
  a = c.augment
  assert a.enabled and (a.rotation_range, a.zoom_range, a.width_shift_range,
                        a.height_shift_range, a.shear_range) == (10, 0.1, 10, 10, 0)
  assert a.horizontal_flip and not a.vertical_flip and a.fill_mode == "nearest"
  assert c.data.tfds_name == "rock_paper_scissors"

  # The tiny variant changes sizes (and random weights) only.
  t = kr.load_recipe("rps_tiny")
  for key in ("model", "head", "optim", "augment", "preprocess", "trainable"):
    assert t[key] == c[key], key

  # VGG16 without top, then GlobalMaxPooling2D -> Dropout -> Dense(512 -> 3).
  model = models.build_model(c)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 224, 224, 3))))["params"]
  shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
  assert set(shapes["head"]) == {"predictions"}
  assert shapes["head"]["predictions"]["kernel"] == (512, 3)
  assert shapes["backbone"]["block5_conv3"]["kernel"] == (3, 3, 512, 512)
  labels = optim.param_labels(params, c)
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  assert {v for p, v in flat if "backbone" in jax.tree_util.keystr(p)} == {"frozen"}
  assert {v for p, v in flat if "head" in jax.tree_util.keystr(p)} == {"trainable"}

  # Categorical cross-entropy over the softmax.
  z = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
  loss, pred = steps.per_example_loss(z, jnp.array([0, 2]), 3)
  logp = np.asarray(jax.nn.log_softmax(z))
  np.testing.assert_allclose(loss, [-logp[0, 0], -logp[1, 2]], rtol=1e-6)
  assert list(pred) == [0, 2]

  # Classes sort alphabetically, as flow_from_directory: paper=0, rock=1, scissors=2.
  data_factory.class_folders(tmp_path / "train", {"scissors": 1, "rock": 1, "paper": 1})
  assert data_files.check_listings(data_files.find_split_folders(tmp_path)) == \
      ["paper", "rock", "scissors"]
