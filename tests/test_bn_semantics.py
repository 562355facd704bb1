"""BatchNorm in train steps, as Keras has it, held against Keras on MobileNetV2 (alpha 0.35, 64x64).

Keras (since TF 2.0): a BatchNormalization layer runs in training mode only when it is called
with training=True AND the layer is trainable; `trainable=False` means inference mode (moving
statistics normalise, and are never updated). Its fine-tuning guide calls the base model with
training=False, which keeps every BN layer in inference mode even once unfrozen.
config.model.bn_trainable=False is that guide (and TensorFlow's MobileNetV2 tutorial); True lets
the BN layers whose gamma trains run in training mode, as Keras' `base(x)` with them trainable.
"""

import jax
import numpy as np
import pytest

import keras_reference as kr
from rpsflax import config_base
from rpsflax import weights as W
from rpsflax.models import backbone_module, bn_training_layers
from rpsflax.models.mobilenet_v2 import mobilenet_v2_bn_names
from rpsflax.preprocess import get_preprocessor

ALPHA, SIZE = 0.35, 64
TOL = 5e-5  # the fp32 bound of tests/test_parity_bn_backbones.py


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  model = kr.seeded_bn_backbone("mobilenet_v2", False, SIZE, alpha=ALPHA)
  path = kr.write_weights_h5(model, tmp_path_factory.mktemp("mnv2") / "m.weights.h5")
  imgs = np.stack([kr.synthetic_image(SIZE, seed=s) for s in (1, 2, 3, 4)])
  x = np.asarray(get_preprocessor("mobilenet_v2")(imgs))
  return {"model": model, "variables": W.load_keras_backbone(path, "mobilenet_v2", alpha=ALPHA),
          "x": x}


def keras_train_call(model, x, frozen_below: int | None):
  """Keras base(x, training=True) with base.trainable=True and, when given, its first
  `frozen_below` layers set trainable=False (the fine-tuning tutorial). Returns the output and
  every BN layer's moving statistics after the call; restores the weights."""
  saved = model.get_weights()
  model.trainable = True
  for layer in model.layers[:frozen_below or 0]:
    layer.trainable = False
  y = np.asarray(model(x, training=True))
  stats = {l.name: [np.asarray(w) for w in l.get_weights()[2:]] for l in model.layers
           if l.__class__.__name__ == "BatchNormalization"}
  model.set_weights(saved)
  model.trainable = True
  return y, stats


def flax_train_call(variables, x, bn_training, dtype=np.float32):
  module = backbone_module("mobilenet_v2", alpha=ALPHA, bn_training=bn_training, dtype=dtype)
  y, state = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  return np.asarray(y), state["batch_stats"]


def assert_as_close_as_keras(ref, bn_training, y, want):
  """53 conv+BN layers (and, in training mode, divisions by tiny batch variances) amplify fp32
  rounding in Keras as in ours. The bound: ours is no further from a float64 evaluation of the same network than 2x
  Keras' own distance to it, and ours and Keras' differ by no more than 3x that distance."""
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), ref["variables"])
    exact, _ = flax_train_call(v64, np.asarray(ref["x"], np.float64), bn_training, np.float64)
  assert exact.dtype == np.float64
  keras_err, ours_err = kr.rel_error(want, exact)[2], kr.rel_error(y, exact)[2]
  diff = kr.rel_error(y, want)[2]
  print(f"vs float64: Keras {keras_err:.2e}, ours {ours_err:.2e}; ours vs Keras {diff:.2e}")
  ulp = float(np.finfo(np.float32).eps)
  assert ours_err <= 2 * keras_err + ulp and diff <= 3 * keras_err + ulp


def config(bn_trainable, trainable):
  c = config_base.get_config()
  c.model.name, c.model.alpha, c.model.bn_trainable = "mobilenet_v2", ALPHA, bn_trainable
  c.trainable = trainable
  return c


def test_frozen_bn_is_inference_mode_and_never_updates(ref):
  """bn_trainable=False, even with the whole backbone trainable: a train step's BN uses the
  moving statistics and returns them bit for bit unchanged, as Keras with training=False (and
  as Keras' base(x, training=True) with base.trainable=False)."""
  c = config(False, ("head/.*", "backbone/.*"))
  assert bn_training_layers(c) == ()
  y, stats = flax_train_call(ref["variables"], ref["x"], bn_training_layers(c))
  model = ref["model"]
  model.trainable = False
  want = np.asarray(model(ref["x"], training=True))  # trainable=False: inference mode
  model.trainable = True
  # Keras itself: the same as its inference mode (predict), to fp32 rounding of two code paths
  assert kr.rel_error(want, model.predict(ref["x"], verbose=0))[2] < TOL
  assert_as_close_as_keras(ref, (), y, want)  # inference mode: the same float64 reference
  np.testing.assert_equal(jax.tree.map(np.asarray, stats),
                          jax.tree.map(np.asarray, ref["variables"]["batch_stats"]))


def test_bn_trainable_follows_keras_training_mode(ref):
  """bn_trainable=True with the backbone trainable: batch statistics normalise and the moving
  statistics move by Keras' momentum (0.999), as Keras' base(x, training=True)."""
  c = config(True, ("head/.*", "backbone/.*"))
  assert set(bn_training_layers(c)) == set(mobilenet_v2_bn_names(ALPHA))
  y, stats = flax_train_call(ref["variables"], ref["x"], bn_training_layers(c))
  want, keras_stats = keras_train_call(ref["model"], ref["x"], None)
  assert_as_close_as_keras(ref, bn_training_layers(c), y, want)
  inference, _ = flax_train_call(ref["variables"], ref["x"], ())
  assert kr.rel_error(inference, want)[2] > 100 * TOL  # training mode is really different here
  for name, (mean, var) in keras_stats.items():
    old = ref["variables"]["batch_stats"][name]
    assert not np.array_equal(mean, old["mean"])  # Keras moved them ...
    np.testing.assert_allclose(stats[name]["mean"], mean, rtol=1e-5, atol=1e-6)  # ... as we do
    np.testing.assert_allclose(stats[name]["var"], var, rtol=1e-5, atol=1e-6)


def test_finetune_from_layer_100_matches_keras(ref):
  """TensorFlow's tutorial unfreezes MobileNetV2 from layers[100] on. The config pattern of
  configs/catsdogs_mobilenetv2_finetune.py trains exactly Keras' weighted layers[100:]; with
  bn_trainable=True their BN layers run in training mode and the rest stay in inference mode, as
  Keras' base(x, training=True) with layers[:100] trainable=False."""
  recipe = kr.load_recipe("catsdogs_mobilenetv2_finetune")
  model = ref["model"]
  from_100 = {l.name for l in model.layers[100:] if l.get_weights()}
  from rpsflax import optim
  ours = {n for n in W.backbone_target("mobilenet_v2", False, ALPHA)[1]
          if optim.is_trainable(f"backbone/{n}/kernel", recipe)
          or optim.is_trainable(f"backbone/{n}/scale", recipe)}
  assert ours == from_100 and len(ours) == 36
  c = config(True, tuple(recipe.trainable))
  bn_on = bn_training_layers(c)
  assert set(bn_on) == {l.name for l in model.layers[100:]
                        if l.__class__.__name__ == "BatchNormalization"}
  y, stats = flax_train_call(ref["variables"], ref["x"], bn_on)
  want, keras_stats = keras_train_call(model, ref["x"], 100)
  assert_as_close_as_keras(ref, bn_on, y, want)
  for name, (mean, var) in keras_stats.items():
    old = ref["variables"]["batch_stats"][name]
    if name in bn_on:
      np.testing.assert_allclose(stats[name]["mean"], mean, rtol=1e-5, atol=1e-6)
    else:  # frozen: neither framework touches them
      np.testing.assert_array_equal(mean, old["mean"])
      np.testing.assert_array_equal(stats[name]["mean"], old["mean"])
      np.testing.assert_array_equal(stats[name]["var"], old["var"])
