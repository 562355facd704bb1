"""Training steps: freezing is exact and free, masked losses, heads that learn, eval metrics, resume."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from rpsflax import (config_base, data_files, errors, evaluation, models, report, sharding, steps,
                     train)
from rpsflax.timing import PHASES

IMAGE = 32
CNN_IMAGE = 48  # the smallest the cats-vs-dogs convnet takes is 46


def _vgg_config(**overrides):
  c = config_base.get_config()
  c.weights = ""
  c.data.image_size = IMAGE
  c.augment.enabled = False
  c.head.dropout = 0.0
  for key, value in overrides.items():
    c[key] = value
  return c


def _cnn_config(**overrides):
  """The cats-vs-dogs convnet with a frozen backbone: its steps compile in seconds on a CPU."""
  c = _vgg_config(preprocess="rescale", **overrides)
  c.model.name = "cnn"
  c.data.image_size = CNN_IMAGE
  return c


def _random_params(config, seed=0):
  """LeCun-normal kernels and zero biases from the model's shapes, in NumPy: compiling the model's
  own init costs seconds on a CPU, and these tests only need some reasonable weights."""
  model = models.build_model(config)
  size = config.data.image_size
  shapes = jax.eval_shape(lambda r, x: model.init(r, x), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"]
  rng = np.random.RandomState(seed)
  def init(path, s):
    if path[-1].key == "bias":
      return np.zeros(s.shape, np.float32)
    return (rng.randn(*s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(init, shapes)


@pytest.fixture(scope="module")
def vgg_params():
  return _random_params(_vgg_config())


def _batch(n=8, real=None, seed=0, num_classes=3, size=IMAGE):
  rng = np.random.RandomState(seed)
  real = n if real is None else real
  return {"image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
          "label": rng.randint(0, num_classes, n).astype(np.int32),
          "mask": np.arange(n) < real}


def _run_steps(config, params, batches, mesh=None, step=None, first_step=0):
  """Train on `batches` with the jitted, donating step; returns (host params before, after, metrics)."""
  model = models.build_model(config)
  mesh = sharding.make_mesh() if mesh is None else mesh
  state = steps.create_train_state(config, model, params=params)
  state = jax.device_put(state.replace(step=jnp.asarray(first_step, jnp.int32)),
                         sharding.replicated(mesh))
  before = jax.device_get(state.params)
  step = steps.compile_steps(config, model, mesh).train if step is None else step
  metrics = []
  for batch in batches:
    state, m = step(state, sharding.shard_batch(batch, mesh), jax.random.PRNGKey(42))
    metrics.append(jax.device_get(m))
  return before, jax.device_get(state.params), metrics


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_frozen_backbone_is_bit_identical_and_head_moves(vgg_params):
  before, after, metrics = _run_steps(_vgg_config(), vgg_params, [_batch(seed=s) for s in range(3)])
  before, after = _flat(before), _flat(after)
  for name in before:
    moved = not np.array_equal(before[name], after[name])
    assert moved == name.startswith("head/"), name
  assert [int(m["count"]) for m in metrics] == [8, 8, 8]


def test_finetune_moves_block5_only(vgg_params, repo_root):
  rps_finetune = config_base.load_sibling(str(repo_root / "configs" / "x.py"), "rps_finetune")
  config = rps_finetune.get_config()
  config.weights, config.data.image_size, config.augment.enabled = "", IMAGE, False
  config.lr_groups = (("backbone/block5_.*", 1e-3),)  # a visible step in a few iterations
  before, after, _ = _run_steps(config, vgg_params, [_batch(seed=s) for s in range(2)])
  before, after = _flat(before), _flat(after)
  for name in before:
    moved = not np.array_equal(before[name], after[name])
    should = name.startswith("head/") or name.startswith("backbone/block5_")
    assert moved == should, name


def _convs_in_step(config, params):
  model = models.build_model(config)
  state = steps.create_train_state(config, model, params=params)
  jaxpr = jax.make_jaxpr(steps.make_train_step(config, model))(state, _batch(), jax.random.PRNGKey(0))
  return str(jaxpr).count("conv_general_dilated")


def test_only_trainable_params_are_differentiated(vgg_params):
  # VGG16 has 13 convolutions. A frozen backbone must cost exactly its forward pass: no
  # convolution of a backward pass may appear in the step.
  assert _convs_in_step(_vgg_config(), vgg_params) == 13
  # block5 unfrozen: + 3 kernel gradients + 2 input gradients (block5_conv2, conv3), nothing for 1-4.
  assert _convs_in_step(_vgg_config(lr_groups=(("backbone/block5_.*", 1e-5),)), vgg_params) == 18
  assert _convs_in_step(_vgg_config(trainable=(".*",)), vgg_params) > 30


def test_padded_batch_gives_the_same_loss_and_update():
  config = _cnn_config()
  params = _random_params(config)
  real = _batch(n=4, seed=1, size=CNN_IMAGE)
  padded = {k: np.concatenate([v, _batch(n=4, seed=2, size=CNN_IMAGE)[k]]) for k, v in real.items()}
  padded["mask"] = np.arange(8) < 4  # padding rows hold garbage images and labels on purpose
  _, after_real, m_real = _run_steps(config, params, [real])
  _, after_pad, m_pad = _run_steps(config, params, [padded])
  assert int(m_pad[0]["count"]) == int(m_real[0]["count"]) == 4
  assert int(m_pad[0]["correct"]) == int(m_real[0]["correct"])
  np.testing.assert_allclose(m_pad[0]["loss_sum"], m_real[0]["loss_sum"], rtol=1e-5)
  moved = 0
  for name, value in _flat(after_real).items():
    np.testing.assert_allclose(_flat(after_pad)[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    moved += not np.array_equal(value, _flat(params)[name])
  assert moved == sum(k.startswith("head/") for k in _flat(params))

  model = models.build_model(config)
  state = steps.create_train_state(config, model, params=params)
  eval_step = jax.jit(steps.make_eval_step(config, model))
  e_real, e_pad = eval_step(state, real), eval_step(state, padded)
  np.testing.assert_array_equal(e_real["confusion"], e_pad["confusion"])
  np.testing.assert_allclose(e_pad["loss_sum"], e_real["loss_sum"], rtol=1e-5)
  assert int(np.sum(e_pad["confusion"])) == 4


def test_eval_counts_every_real_example_in_the_confusion_matrix():
  config = _cnn_config()
  model = models.build_model(config)
  params = jax.tree.map(np.zeros_like, _random_params(config))
  params["head"]["predictions"]["bias"] = np.array([0.0, 0.0, 1.0], np.float32)  # always class 2
  state = steps.create_train_state(config, model, params=params)
  batch = _batch(n=6, real=5, size=CNN_IMAGE)
  batch["label"] = np.array([0, 1, 2, 2, 1, 0], np.int32)  # the last row is padding
  out = jax.device_get(jax.jit(steps.make_eval_step(config, model))(state, batch))
  np.testing.assert_array_equal(out["confusion"], [[0, 0, 1], [0, 0, 2], [0, 0, 2]])
  assert int(out["correct"]) == 2 and int(out["count"]) == 5
  logp = np.log(np.exp([0, 0, 1]) / np.exp([0, 0, 1]).sum())
  np.testing.assert_allclose(out["loss_sum"], -(logp[0] + 2 * logp[1] + 2 * logp[2]), rtol=1e-6)


def test_sigmoid_head_uses_binary_cross_entropy_and_a_2x2_confusion():
  config = _cnn_config()
  config.head.num_classes = 1
  model = models.build_model(config)
  params = jax.tree.map(np.zeros_like, _random_params(config))
  params["head"]["predictions"]["bias"] = np.array([0.5], np.float32)  # p(class 1) = sigmoid(0.5)
  state = steps.create_train_state(config, model, params=params)
  batch = _batch(n=4, real=3, size=CNN_IMAGE)
  batch["label"] = np.array([0, 1, 1, 0], np.int32)
  out = jax.device_get(jax.jit(steps.make_eval_step(config, model))(state, batch))
  np.testing.assert_array_equal(out["confusion"], [[0, 1], [0, 2]])
  p = 1 / (1 + np.exp(-0.5))
  np.testing.assert_allclose(out["loss_sum"], -(np.log(1 - p) + 2 * np.log(p)), rtol=1e-6)
  probs = steps.make_predict_fn(config, model)(params, batch["image"])
  np.testing.assert_allclose(probs, [[1 - p, p]] * 4, rtol=1e-6)


def _brightness_task(n, size, seed):
  """Class 1 images are bright, class 0 dark: learnable in a few steps."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 2, n).astype(np.int32)
  base = np.where(labels[:, None, None, None] == 1, 170, 60)
  images = np.clip(base + rng.randint(-50, 50, (n, size, size, 3)), 0, 255).astype(np.uint8)
  return {"image": images, "label": labels, "mask": np.ones(n, bool)}


@pytest.mark.parametrize("num_classes", [2, 1])
def test_non_default_head_learns(num_classes):
  """avg pooling + a hidden layer (softmax over 2, or sigmoid) on the convnet fits a simple task."""
  config = _cnn_config()
  config.head.num_classes = num_classes
  config.head.pooling = "avg"
  config.head.hidden = (16,)
  config.head.dropout = 0.1
  config.optim.name = "adam"
  config.optim.learning_rate = 3e-2
  params = _random_params(config, seed=1)
  assert "hidden_0" in params["head"]
  batches = [_brightness_task(16, CNN_IMAGE, seed=s) for s in range(30)]
  _, _, metrics = _run_steps(config, params, batches)
  first = np.mean([m["loss_sum"] / m["count"] for m in metrics[:3]])
  last = np.mean([m["loss_sum"] / m["count"] for m in metrics[-3:]])
  assert last < 0.6 * first, (first, last)
  assert sum(int(m["correct"]) for m in metrics[-3:]) >= 0.9 * 48


def test_same_seed_same_result_and_rng_depends_on_step():
  config = _cnn_config()
  config.head.dropout = 0.5
  config.augment.enabled = True
  config.augment.rotation_range = 10.0
  config.augment.horizontal_flip = True
  params = _random_params(config)
  step = steps.compile_steps(config, models.build_model(config), sharding.make_mesh()).train
  batches = [_batch(seed=0, size=CNN_IMAGE), _batch(seed=1, size=CNN_IMAGE)]
  _, a, ma = _run_steps(config, params, batches, step=step)
  _, b, mb = _run_steps(config, params, batches, step=step)
  for name, value in _flat(a).items():
    np.testing.assert_array_equal(_flat(b)[name], value)
  assert [float(m["loss_sum"]) for m in ma] == [float(m["loss_sum"]) for m in mb]
  # Dropout and augmentation come from fold_in(rng, state.step): the same params and batch at
  # another step draw other numbers (and a resumed run at step s draws step s's numbers).
  _, _, other = _run_steps(config, params, batches[:1], step=step, first_step=7)
  assert float(other[0]["loss_sum"]) != float(ma[0]["loss_sum"])


def test_nonfinite_loss_is_flagged_with_its_step():
  config = _cnn_config()
  config.preprocess = "none"
  config.head.hidden = (8,)  # two layers of weights ~1e30 overflow float32
  config.optim.name = "sgd"
  config.optim.learning_rate = 1e30
  params = _random_params(config)
  _, _, metrics = _run_steps(config, params, [_batch(size=CNN_IMAGE, seed=s) for s in range(4)])
  flags = [int(m["nonfinite"]) for m in metrics]
  assert flags[0] == 0 and flags[-1] == 1
  total = metrics[0]
  for m in metrics[1:]:
    total = steps.combine_metrics(total, m)  # how the loop accumulates: sums, and min of first_*
  assert int(total["nonfinite"]) == sum(flags)
  assert int(total["first_nonfinite_step"]) == flags.index(1)


def test_four_devices_match_one_and_batch_size_must_divide():
  script = textwrap.dedent("""
      import jax, pytest
      from rpsflax import config_base, sharding
      mesh = sharding.make_mesh()
      assert mesh.devices.size == 4
      c = config_base.get_config()
      c.batch_size = 6
      with pytest.raises(ValueError, match="config.batch_size=6"):
        sharding.check_batch_sizes(c, mesh)
      c.batch_size = 8
      sharding.check_batch_sizes(c, mesh)
      import numpy as np
      b = {"image": np.zeros((6, 4, 4, 3), np.uint8), "label": np.zeros(6, np.int32),
           "mask": np.ones(6, bool)}
      with pytest.raises(ValueError, match="config.batch_size"):
        sharding.shard_batch(b, mesh)
      padded = sharding.shard_batch(b, mesh, pad=True)
      assert padded["mask"].shape == (8,) and int(padded["mask"].sum()) == 6
      assert len(padded["image"].sharding.device_set) == 4
      # Two training steps on 4 devices match 1 device (same batches, same rng), and the
      # state stays replicated.
      import test_train as T
      config = T._cnn_config()
      config.head.dropout = 0.5
      params = T._random_params(config)
      batches = [T._batch(n=8, seed=s, size=T.CNN_IMAGE) for s in range(2)]
      _, p4, m4 = T._run_steps(config, params, batches, mesh=mesh)
      _, p1, m1 = T._run_steps(config, params, batches, mesh=sharding.make_mesh(jax.devices()[:1]))
      for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      for a, b in zip(m4, m1):
        np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-5)
        assert int(a["correct"]) == int(b["correct"])
      print("OK")
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1], timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# train_and_evaluate on a tiny folder: outputs, resume, bit-identical replay, evaluate


def _write_folder(root: pathlib.Path, per_class=8, size=40):
  """root/train/<class>/*.png, each class its own colour (learnable), with some noise."""
  from PIL import Image

  rng = np.random.RandomState(0)
  for c, name in enumerate(("paper", "rock", "scissors")):
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      img = np.full((size, size, 3), 40, np.int32)
      img[..., c] = 200
      img = np.clip(img + rng.randint(-30, 30, img.shape), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(folder / f"{name}_{i}.png")
  return root


def _tiny_config(data_dir, num_epochs):
  c = _cnn_config()
  c.data.dir = str(data_dir)
  c.data.val_fraction = 0.25   # 18 train / 6 validation
  c.batch_size = 4             # 5 steps per epoch, the last one padded
  c.eval_batch_size = 4
  c.num_epochs = num_epochs
  c.log_every_steps = 2
  c.head.dropout = 0.5         # randomness that a resumed run must replay exactly
  c.augment.enabled = True
  c.augment.rotation_range = 10.0
  c.augment.horizontal_flip = True
  return c


def _final_state(workdir, config):
  from rpsflax import checkpoint, steps

  target = steps.abstract_train_state(config, models.build_model(config))
  state, meta = checkpoint.restore_latest(workdir, target)
  return jax.device_get(state), meta


def _assert_states_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _no_seconds(history):
  return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted 2-epoch run: what every resumed run must reproduce bit for bit."""
  root = tmp_path_factory.mktemp("resume")
  data = _write_folder(root / "data")
  config = _tiny_config(data, 2)
  result = train.train_and_evaluate(config, root / "straight")
  return root, data, result


def test_train_and_evaluate_writes_the_workdir(straight_run):
  import json

  root, _, result = straight_run
  workdir = root / "straight"
  for name in ("config.json", "history.json", "eval.json", "curves.png", "confusion_matrix.png"):
    assert (workdir / name).is_file(), name
  assert list((workdir / "tensorboard").iterdir())
  history = json.loads((workdir / "history.json").read_text())
  assert [h["epoch"] for h in history] == [1, 2]
  assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                             "seconds"}
  ev = json.loads((workdir / "eval.json").read_text())
  assert ev["split"] == "validation" and ev["num_examples"] == 6 == result["num_examples"]
  # Where the time went: phases that add up to the wall time, steps and compilation among them.
  timing = ev["timing"]
  assert set(timing) == {"wall", *PHASES}
  assert sum(v for k, v in timing.items() if k != "wall") == pytest.approx(timing["wall"],
                                                                         abs=0.02)
  assert timing["steps"] > 0 and timing["compilation"] > 0 and timing["evaluation"] > 0
  assert sum(map(sum, result["confusion_matrix"])) == 6
  assert set(ev["per_class_accuracy"]) == {"paper", "rock", "scissors"}
  # best = the first epoch with the highest validation accuracy; the final evaluation is of it
  from rpsflax import checkpoint

  best_epoch = 1 + int(np.argmax([h["val_accuracy"] for h in history]))
  assert checkpoint.Checkpoints(workdir).restore_meta(which="best")["epoch"] == best_epoch
  assert ev["accuracy"] == pytest.approx(history[best_epoch - 1]["val_accuracy"])
  assert ev["checkpoint"] == {"which": "best", "epoch": best_epoch, "step": 5 * best_epoch,
                              "path": f"checkpoints/best/{5 * best_epoch}"}
  assert ev["epochs_trained"] == 2


def test_the_final_evaluation_is_of_the_best_checkpoint_not_the_last(straight_run, tmp_path):
  """A finished run whose best epoch is not its last (epoch 1's checkpoint made the best one
  here): the final evaluation, recomputed when eval.json is missing, reads the best checkpoint
  back and says so, as --mode=evaluate and predict do (issue 24)."""
  import json
  import shutil

  root, data, _ = straight_run
  workdir = tmp_path / "run"
  shutil.copytree(root / "straight", workdir)
  (workdir / "eval.json").unlink()
  best = workdir / "checkpoints" / "best"
  shutil.rmtree(best)
  best.mkdir()
  shutil.copytree(workdir / "checkpoints" / "latest" / "5", best / "5")  # epoch 1, step 5
  out = train.train_and_evaluate(_tiny_config(data, 2), workdir)
  ev = json.loads((workdir / "eval.json").read_text())
  assert ev["checkpoint"]["which"] == "best"
  assert (ev["checkpoint"]["epoch"], ev["checkpoint"]["step"]) == (1, 5)
  assert out["checkpoint"] == ev["checkpoint"]
  from rpsflax import evaluation

  again = evaluation.evaluate_checkpoint(_tiny_config(data, 2), workdir, split="validation")
  assert again["checkpoint"] == ev["checkpoint"]
  assert again["confusion_matrix"] == ev["confusion_matrix"]
  assert again["loss"] == pytest.approx(ev["loss"], rel=1e-6)
  # What the commands' last lines list (report.run_summary): the files each one wrote.
  assert out["outputs"] == {k: str(workdir / f) for k, f in (
      ("eval", "eval.json"), ("curves", "curves.png"), ("confusion_matrix", "confusion_matrix.png"))}
  assert again["outputs"] == {k: str(workdir / "eval" / "validation" / f) for k, f in (
      ("eval", "eval.json"), ("confusion_matrix", "confusion_matrix.png"))}


def test_resume_after_one_epoch_equals_a_straight_run(straight_run, monkeypatch):
  root, data, result = straight_run
  workdir = root / "resumed"
  train.train_and_evaluate(_tiny_config(data, 1), workdir)
  state1, meta1 = _final_state(workdir, _tiny_config(data, 1))
  assert meta1["epoch"] == 1 and meta1["step"] == 5
  again = train.train_and_evaluate(_tiny_config(data, 2), workdir)  # continues with epoch 2
  straight, _ = _final_state(root / "straight", _tiny_config(data, 2))
  resumed, meta = _final_state(workdir, _tiny_config(data, 2))
  _assert_states_equal(resumed, straight)
  assert meta["step"] == 10
  assert _no_seconds(meta["history"]) == _no_seconds(_final_state(root / "straight",
                                                                  _tiny_config(data, 2))[1]["history"])
  assert again["accuracy"] == result["accuracy"]

  # A finished run is not retrained: it returns its eval.json.
  def forbid(*a, **k):
    raise AssertionError("a finished run was retrained")
  monkeypatch.setattr(train, "train_epoch", forbid)
  assert train.train_and_evaluate(_tiny_config(data, 2), workdir)["accuracy"] == result["accuracy"]


@pytest.mark.parametrize("device_cache, signal_at_call, stopped_at", [
    ("off", 7, 7),  # host-fed: one call per step; the 7th step is under way, it stops after it
    ("on", 5, 9),   # resident, chunks of log_every_steps=2 (calls 0-2, 2-4, 4-5 per epoch):
                    # call 5 runs epoch 2's steps 8 and 9, and it stops after them
])
def test_signal_mid_epoch_saves_and_resumes_bit_identically(straight_run, monkeypatch,
                                                            device_cache, signal_at_call,
                                                            stopped_at):
  """A SIGTERM inside epoch 2, on either path, saves the step it reached; the same command
  resumes to the straight run's end (which ran host-fed: 'auto' keeps images on the host on a
  CPU), bit for bit: so the host-fed and the resident paths train the same bits."""
  import dataclasses
  import signal

  from rpsflax import interrupts, resident

  root, data, _ = straight_run
  workdir = root / f"interrupted_{device_cache}"
  config = _tiny_config(data, 2)
  config.data.device_cache = device_cache
  module, name = (steps, "compile_steps") if device_cache == "off" else (resident, "compile_chunks")
  real = getattr(module, name)

  def with_sigterm(*args, **kwargs):
    compiled = real(*args, **kwargs)
    calls = []

    def wrapped(*a):
      calls.append(1)
      if len(calls) == signal_at_call:
        os.kill(os.getpid(), signal.SIGTERM)
      return compiled.train(*a)
    return dataclasses.replace(compiled, train=wrapped)

  monkeypatch.setattr(module, name, with_sigterm)
  with pytest.raises(interrupts.TrainingInterrupted, match=f"step {stopped_at} "):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(module, name, real)
  _, meta = _final_state(workdir, config)
  assert meta["step"] == stopped_at and meta["partial"] is not None
  train.train_and_evaluate(config, workdir)
  straight, straight_meta = _final_state(root / "straight", config)
  resumed, meta = _final_state(workdir, config)
  _assert_states_equal(resumed, straight)
  assert _no_seconds(meta["history"]) == _no_seconds(straight_meta["history"])


def test_num_classes_none_follows_the_data_and_a_set_one_must_match(straight_run, tmp_path):
  """config.head.num_classes=None (configs/folder.py): one output per class found, recorded in
  config.json so evaluate and predict build the same head; a number that does not fit the data
  stops before any work, naming the key and both fixes (issue 24)."""
  import json

  root, data, _ = straight_run
  config = _tiny_config(data, 1)
  config.head.num_classes = None
  out = train.train_and_evaluate(config, tmp_path / "follows")
  saved = json.loads((tmp_path / "follows" / "config.json").read_text())
  assert saved["head"]["num_classes"] == 3 and len(out["per_class_accuracy"]) == 3
  assert config.head.num_classes is None  # the caller's config is left as it was
  wrong = _tiny_config(data, 1)
  wrong.head.num_classes = 5
  with pytest.raises(errors.DataError, match=r"config\.head\.num_classes=5 but the data has 3 "
                                            r"classes .*--config\.head\.num_classes=3.*folder\.py"):
    train.train_and_evaluate(wrong, tmp_path / "wrong")


def test_evaluate_restores_best_and_reads_a_folder(straight_run, monkeypatch):
  import json

  root, data, _ = straight_run
  workdir = root / "straight"
  config = _tiny_config(data, 2)
  history = json.loads((workdir / "history.json").read_text())
  out = evaluation.evaluate_checkpoint(config, workdir, split="validation")
  assert out["checkpoint"]["which"] == "best" and out["num_examples"] == 6
  assert out["accuracy"] == pytest.approx(max(h["val_accuracy"] for h in history))
  assert (workdir / "eval" / "validation" / "eval.json").is_file()
  # A folder with a subset of the classes: labels are mapped by class name.
  folder = root / "extra"
  (folder / "rock").mkdir(parents=True)
  for p in sorted((data / "train" / "rock").iterdir())[:3]:
    (folder / "rock" / p.name).write_bytes(p.read_bytes())
  listed = []
  with monkeypatch.context() as m:  # each folder listed once: its listing is handed on
    m.setattr(data_files, "list_folder",
              lambda p, real=data_files.list_folder: listed.append(p) or real(p))
    out = evaluation.evaluate_checkpoint(config, workdir, data_dir=str(folder))
  assert listed == [str(folder)]
  assert out["num_examples"] == 3
  assert sum(out["confusion_matrix"][1]) == 3  # every example counted in the 'rock' row
  # A data set folder (train/ inside): every labelled image under it, once.
  assert evaluation.evaluate_checkpoint(config, workdir, data_dir=str(data))["num_examples"] == 24


def test_init_from_starts_from_a_trained_runs_best_parameters(straight_run, tmp_path):
  """A warm start (the Keras blog's fine-tuning from a trained head): the trained run's best
  parameters, whatever its optimizer, and config.weights unread; another model is refused naming
  config.init_from."""
  from rpsflax import checkpoint, errors, restore

  root, data, _ = straight_run
  source = root / "straight"
  config = _tiny_config(data, 1)
  config.init_from = str(source)
  config.weights = str(tmp_path / "never_written.h5")  # replaced by init_from: never read
  config.trainable = ("head/.*",)   # another trainable set: another optimizer state than the source's
  config.optim.name = "sgd"
  model = models.build_model(config)
  state = jax.device_get(train.initial_state(config, model, jax.random.PRNGKey(1),
                                             sharding.make_mesh(), train.resolve_weights(config)))
  best, _ = checkpoint.restore_best(source, steps.abstract_train_state(_tiny_config(data, 2), model))
  _assert_states_equal(state.params, jax.device_get(best.params))
  assert int(state.step) == 0

  config.head.hidden = (8,)
  with pytest.raises(errors.ConfigError, match=r"config.init_from=.*parameters differ"):
    train.initial_state(config, models.build_model(config), jax.random.PRNGKey(1),
                        sharding.make_mesh(), train.resolve_weights(config))
  config.init_from = str(tmp_path / "never_trained")
  with pytest.raises(errors.ConfigError, match=r"config.init_from=.*no checkpoint"):
    restore.check_init_from(config)

  # Resuming a warm-started run: another config.weights is no change (never read), another
  # config.init_from is.
  import shutil

  warm = tmp_path / "warm"
  shutil.copytree(source, warm)
  config = _tiny_config(data, 1)
  config.init_from = str(source)
  report.write_config(warm, config)
  config.weights = str(tmp_path / "other_weights")
  train.check_starting_point(config, warm)
  config.init_from = str(root / "other_run")
  with pytest.raises(errors.CheckpointError, match=r"config.init_from=.*started with"):
    train.check_starting_point(config, warm)
