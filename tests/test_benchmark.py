"""The benchmark in a tiny mode: every key is emitted, runs without TensorFlow skip only what needs
it (saying why), and the frozen step's cost is one forward pass by XLA's own flop count.

No speed is asserted: timings on a shared machine mean nothing. Flop counts are deterministic.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import data_factory
import keras_reference as kr
from rpsflax import cpuinfo, keras_models, models, optim, preprocess, sharding, steps
from rpsflax.benchmark import cli, inputs, jax_figures, keras_peer, suite, table, timing
from rpsflax.models import heads

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--steps=1", "--repeats=1", "--warmup=0", "--min_seconds=0", "--pipeline_repeats=1",
        "--json"]

# Makes tensorflow, keras and tensorflow_datasets unimportable, as on a GPU box without them.
NO_TF = textwrap.dedent("""
    import sys
    class _NoTF:
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tensorflow_datasets'):
          raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
    sys.meta_path.insert(0, _NoTF())
    from rpsflax.benchmark import cli
    sys.exit(cli.main(['benchmark'] + sys.argv[1:]))
""")


def _run(args, *, devices=1, no_tf=False, timeout=600) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = ([sys.executable, "-c", NO_TF] if no_tf
         else [sys.executable, str(REPO / "scripts" / "benchmark.py")]) + args
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout,
                       check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench_data")
  data_factory.class_folders(root / "train", {"cat": 4, "dog": 4}, size=(60, 50), ext=".jpg")
  return root


@pytest.fixture(scope="module")
def catsdogs_keras(folder):
  """The cats-vs-dogs CNN on 2 (fake) devices with the pipeline and the Keras comparison."""
  return _run(["--config=configs/catsdogs.py", "--image_size=48", "--batch_size=2",
               f"--data_dir={folder}", "--compare-keras", "--compare-flags", "--bf16_row=true",
               *TINY], devices=2)


@pytest.fixture(scope="module")
def rps_no_tf():
  """VGG16 + head (rps) where TensorFlow cannot be imported."""
  return _run(["--config=configs/rps.py", "--image_size=32", "--batch_size=2", "--nofinetune",
               "--compare-keras", "--data_dir=/nonexistent", *TINY], no_tf=True)


def _positive(result, keys):
  for key in keys:
    assert isinstance(result[key], (int, float)) and result[key] > 0, (key, result[key])


def test_every_key_is_emitted_and_measured(catsdogs_keras):
  r = catsdogs_keras
  assert set(suite.FIGURES) <= set(r)
  _positive(r, ["train_images_per_sec", "eval_images_per_sec", "forward_images_per_sec",
                "finetune_images_per_sec", "augment_images_per_sec", "frozen_step_over_forward",
                "finetune_step_over_forward", "pipeline_images_per_sec", "decode_images_per_sec",
                "cached_epoch_images_per_sec", "uncached_epoch_images_per_sec",
                "keras_train_images_per_sec", "keras_forward_images_per_sec",
                "train_speedup_vs_keras", "forward_flops", "train_step_flops",
                "keras_jax_train_images_per_sec", "keras_jax_forward_images_per_sec",
                "train_speedup_vs_keras_jax", "eval_speedup_vs_keras", "peak_gflops_per_sec",
                "forward_gflops_per_sec", "keras_forward_gflops_per_sec",
                "forward_fraction_of_peak", "xla_flags_train_speedup",
                "train_step_gflops_per_sec", "keras_train_gflops_per_sec",
                "train_fraction_of_peak", "xla_forward_flops", "xla_train_step_flops",
                "train_bf16_images_per_sec", "keras_bf16_train_images_per_sec",
                "train_speedup_vs_keras_bf16"])
  _positive(r["default_xla_flags"], ["train_images_per_sec", "forward_images_per_sec"])
  # The bf16 row: Keras under its mixed_bfloat16 policy, paired with our bf16 step.
  assert r["keras_bf16_details"]["keras_backend"] == "tensorflow"
  assert "bf16_row" not in r["skipped"]
  # The peak: every measured product named, the best of them; the host CPU and its flags.
  p = r["peak"]
  assert {"jax_dot_float32", "numpy_blas_float32"} <= set(p["measured"])
  assert r["peak_gflops_per_sec"] == max(p["measured"].values()) == p["measured"][p["peak_source"]]
  assert r["cpu"]["isa"] in cpuinfo.ISAS and r["cpu"]["model_name"]
  assert r["xla_cpu"]["isa"] == r["cpu"]["isa"] and r["xla_cpu"]["flags"]
  assert r["flops_source"]["forward_flops"].startswith("analytical")
  assert r["flops_source"]["xla_forward_flops"].startswith("xla")
  assert r["keras_details"]["keras_backend"] == "tensorflow"
  assert r["keras_jax_details"]["keras_backend"] == "jax"
  assert "--xla_cpu_experimental_ynn_fusion_type" in r["xla_flags"]
  assert r["pipeline_num_images"] == 8
  assert r["train_step_donates_state"] is True and r["train_step_host_transfers"] == []
  assert r["model"] == "cnn" and r["image_size"] == 48 and r["batch_size"] == 2
  assert r["backend"] == "cpu" and r["device_count"] == 2 and r["device"]
  assert r["versions"]["jax"] == jax.__version__ and r["versions"]["tensorflow"]
  assert [s["devices"] for s in r["scaling"]] == [1, 2]
  assert [s["global_batch"] for s in r["scaling"]] == [2, 4]
  assert isinstance(r["keras_jit_compile"], bool)
  # The CNN trains its backbone: nothing to cache, and the output says so.
  assert r["cached_head_images_per_sec"] is None and "backbone" in r["skipped"]["cached_features"]
  assert "keras" not in r["skipped"] and "pipeline" not in r["skipped"]


def test_without_tensorflow_only_its_figures_are_skipped(rps_no_tf):
  r = rps_no_tf
  assert set(suite.FIGURES) <= set(r)
  _positive(r, ["train_images_per_sec", "eval_images_per_sec", "forward_images_per_sec",
                "augment_images_per_sec", "cached_head_images_per_sec"])
  for key in ("pipeline_images_per_sec", "decode_images_per_sec", "keras_train_images_per_sec",
              "train_speedup_vs_keras", "finetune_images_per_sec"):
    assert r[key] is None, key
  assert "tensorflow" in r["skipped"]["keras"].lower()
  assert "tensorflow" in r["skipped"]["pipeline"].lower()
  assert r["versions"]["tensorflow"] is None and r["model"] == "vgg16"
  assert r["train_step_donates_state"] is True and r["train_step_host_transfers"] == []
  assert r["frozen_flops_over_forward"] <= 1.3
  assert r["cached_features_speedup_estimate"]["speedup"] > 0
  assert r["train_bf16_images_per_sec"] is None and "bf16_row" in r["skipped"]


def step_flops_over_forward(config) -> tuple[float, float]:
  """(frozen step / forward, fine-tune step / forward): XLA's flop counts of the jitted steps
  (lowered, not compiled: cheap and deterministic), batch 4, parameters and BatchNorm statistics
  as the benchmark makes them."""
  model = models.build_model(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  v = inputs.bench_variables(config, model)
  batch = inputs.synthetic_batch(config, 4)
  rng = jax.random.PRNGKey(0)

  def step_flops(cfg):
    state = steps.create_train_state(cfg, model, params=v["params"], batch_stats=v["batch_stats"])
    step = steps.compile_steps(cfg, model, mesh).train
    return step.lower(state, batch, rng).cost_analysis()["flops"]
  forward = jax.jit(jax_figures.forward_fn(config, model)).lower(
      steps.model_variables(v["params"], v["batch_stats"]), batch["image"])
  forward = forward.cost_analysis()["flops"]
  return step_flops(config) / forward, step_flops(inputs.finetune_config(config)) / forward


def test_frozen_step_costs_one_forward_and_finetuning_about_three():
  config = inputs.bench_config(kr.load_recipe("rps"), batch_size=4, image_size=32)
  frozen, full = step_flops_over_forward(config)
  assert frozen <= 1.3, frozen
  assert 2.5 <= full <= 3.5, full


@pytest.mark.parametrize("recipe", ["rps_resnet50", "catsdogs_mobilenetv2"])
def test_frozen_bn_backbone_step_costs_one_forward(recipe):
  """The BatchNorm backbones' recipes (BN frozen in inference mode, as Keras freezes it): the
  frozen step is one forward (the same moving-statistics forward the benchmark times) plus the
  head; fine-tuning costs about three (measured 3.4 for ResNet50, 3.8 for this tiny MobileNetV2,
  whose depthwise convs and BN cost more backward than forward)."""
  config = inputs.bench_config(kr.load_recipe(recipe), batch_size=4, image_size=32)
  config.model.alpha = 0.35 if config.model.name == "mobilenet_v2" else config.model.alpha
  frozen, full = step_flops_over_forward(config)
  assert frozen <= 1.1, frozen  # measured 1.00 (ResNet50), 1.06 (MobileNetV2 0.35 at 32 px)
  assert 2.5 <= full <= 4.0, full


@pytest.mark.parametrize("recipe", ["rps_resnet50", "catsdogs_mobilenetv2"])
def test_keras_peer_of_a_bn_backbone_is_frozen_as_ours(recipe):
  """The Keras model the benchmark times beside a BN recipe: keras.applications' backbone with
  our layer names and feature shape, trainable=False, so train_on_batch trains the head alone and
  leaves every backbone weight and moving statistic as it was (BN in inference mode, as ours)."""
  config = inputs.bench_config(kr.load_recipe(recipe), batch_size=2, image_size=32)
  config.model.alpha = 0.35 if config.model.name == "mobilenet_v2" else config.model.alpha
  spec = keras_peer.keras_spec(config)
  model, base = keras_models.classifier(spec)
  assert set(spec["backbone"]) <= {layer.name for layer in base.layers}
  flax_model = models.build_model(config)
  batch = inputs.synthetic_batch(config, 2)
  variables = inputs.bench_variables(config, flax_model)
  ours = jax.eval_shape(jax_figures.forward_fn(config, flax_model), variables, batch["image"])
  assert tuple(base.output_shape[1:]) == ours.shape[1:]
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert base.count_params() == size(variables["params"]["backbone"]) + size(  # alpha too
      variables["batch_stats"])
  before = [w.numpy().copy() for w in base.weights]
  assert len(model.trainable_weights) == 2 * (len(config.head.hidden) + 1)  # kernels, biases
  y = batch["label"].astype(np.float32 if config.head.num_classes == 1 else np.int32)
  model.train_on_batch(keras_models.preprocess(spec["preprocess"], batch["image"]), y)
  for w, b in zip(base.weights, before, strict=True):
    np.testing.assert_array_equal(w.numpy(), b, err_msg=w.path)


def test_table_names_every_figure_and_the_skips(catsdogs_keras, rps_no_tf):
  text = table.format_table(catsdogs_keras)
  for words in ("train step", "backbone forward", "Keras (TF) train_on_batch",
                "Keras (JAX) train_on_batch", "speed-up vs Keras", "forward / peak",
                "XLA default flags", "peak: numpy_blas_float32", "host CPU:",
                "Keras (TF) mixed_bfloat16 train_on_batch",
                "decode + resize once", "scaling", "2 devices", "versions"):
    assert words in text, words
  text = table.format_table(rps_no_tf)
  assert "n/a" in text and "skipped keras" in text and "skipped pipeline" in text


def test_flag_spelling_and_estimate():
  assert cli.normalize_argv(["x", "--compare-keras", "--data-dir=a-b", "--config.x-y=1"]) \
      == ["x", "--compare_keras", "--data_dir=a-b", "--config.x-y=1"]
  config = kr.load_recipe("rps_cached")
  est = jax_figures.cached_speedup_estimate(config, forward_ips=100.0, train_ips=80.0,
                                          head_ips=1e5, num_train=1000)
  # uncached 20 * 1000 / 80 = 250 s; cached 5 * 1000 / 100 + 20 * 1000 / 1e5 = 50.2 s
  assert est["uncached_seconds"] == 250.0 and est["cached_seconds"] == pytest.approx(50.2)
  assert est["speedup"] == pytest.approx(250 / 50.2, abs=0.01)
  assert jax_figures.cached_speedup_estimate(config, None, 80.0, 1e5) is None


def test_time_budget_decides_the_rounds():
  more = timing.more_rounds
  assert [more(d, 4, 0.0, 1e9) for d in range(6)] == [True] * 4 + [False] * 2  # fixed count
  # Budget: at least MIN_ROUNDS however slow, then while the next round fits.
  assert all(more(d, 0, 10.0, 1e9) for d in range(timing.MIN_ROUNDS))
  assert not more(timing.MIN_ROUNDS, 0, 10.0, 30.0)      # 3 rounds took 30 s: a 4th would not fit
  assert more(timing.MIN_ROUNDS, 0, 100.0, 30.0)         # ... within 100 s it does
  assert not more(timing.MAX_ROUNDS, 0, 1e9, 1.0)        # capped


def test_keras_models_know_every_allowed_value():
  """The Keras peer of any valid config can be built: the Keras side maps every pooling,
  optimizer and preprocessing the Flax side accepts, and names the CNN's convs as Flax does
  (what keras_layer_map converts by)."""
  assert set(keras_models.POOLINGS) == set(heads.POOLINGS)
  assert set(keras_models.OPTIMIZERS) == set(optim.OPTIMIZERS)
  assert set(keras_models.PREPROCESS) == set(preprocess.MODES)
  assert set(preprocess.PREPROCESS_MODES.values()) <= set(preprocess.MODES)
  assert keras_models.CNN_CONV_NAMES == tuple(models.cnn_conv_names())
