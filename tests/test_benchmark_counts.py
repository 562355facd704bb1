"""What the benchmark counts rather than times: the model FLOPs, the peak figures, the bf16 row's
choice by CPU, and --help. No speed is asserted (see test_benchmark.py)."""

import subprocess
import sys

import jax
import pytest

import keras_reference as kr
from commands import REPO, cli_env
from rpsflax import cpuinfo, models, sharding, steps
from rpsflax.benchmark import flops, inputs, jax_figures, peak, suite


def recipe(name: str, size: int, batch: int = 4):
  config = inputs.bench_config(kr.load_recipe(name), batch_size=batch, image_size=size)
  if config.model.name == "mobilenet_v2":
    config.model.alpha = 0.35
  return config, models.build_model(config)


def xla_counts(config, model, batch: int = 4) -> tuple[float, float]:
  """(forward, train step) FLOPs by XLA's cost analysis of the lowered computations on the CPU,
  where XLA counts its convolutions itself (cheap: lowered, not compiled)."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  v = inputs.bench_variables(config, model)
  b = inputs.synthetic_batch(config, batch)
  fwd = jax.jit(jax_figures.forward_fn(config, model)).lower(
      steps.model_variables(v["params"], v["batch_stats"]), b["image"]).cost_analysis()["flops"]
  state = steps.create_train_state(config, model, params=v["params"], batch_stats=v["batch_stats"])
  step = steps.compile_steps(config, model, mesh).train.lower(
      state, b, jax.random.PRNGKey(0)).cost_analysis()["flops"]
  return fwd, step


def test_model_flops_match_xlas_count_of_the_cnn():
  """The cats-vs-dogs CNN ('valid' convs, trained whole): XLA:CPU counts its convolutions, and
  the count from the layers agrees with it (XLA adds the ReLUs, pools and the optimizer: 1-2%)
  for the forward and for the train step (forward + kernel gradients + the input gradients of
  every layer after the first)."""
  config, model = recipe("catsdogs", 48)
  fwd, step = xla_counts(config, model)
  assert flops.forward_flops(config, model, 4) == pytest.approx(fwd, rel=0.03)
  assert flops.train_step_flops(config, model, 4) == pytest.approx(step, rel=0.03)


def test_frozen_backbone_costs_one_forward_and_finetuning_three_less_the_first_input_grad():
  config, model = recipe("rps", 64)
  layers, _ = flops.layers(config, model)
  fwd = flops.forward_flops(config, model, 2)
  frozen = flops.train_step_flops(config, model, 2)
  full = flops.train_step_flops(inputs.finetune_config(config), model, 2)
  head = [2 * 2 * l.macs for l in layers if l.path[0] == "head"]
  assert fwd == pytest.approx(2 * 2 * sum(l.macs for l in layers if l.path[0] == "backbone"))
  # Frozen backbone: its forward, then the head's forward and kernel gradients, and the input
  # gradients of the head's layers after its first (nothing before that one trains).
  assert len(head) >= 1 and frozen == pytest.approx(fwd + 2 * sum(head) + sum(head[1:]))
  # All trainable: three times the forward, less the first layer's input (image) gradient.
  assert full == pytest.approx(3 * (fwd + sum(head)) - 2 * 2 * layers[0].macs)


@pytest.mark.parametrize("name", ["rps", "catsdogs", "rps_resnet50", "catsdogs_mobilenetv2"])
def test_every_kernel_is_counted(name):
  """Every kernel parameter of every recipe belongs to a counted layer (a new layer type that
  the count does not know would make the GFLOP/s figures silently low)."""
  config, model = recipe(name, 48 if name == "catsdogs" else 32)  # the CNN needs > 32 px
  assert flops.uncounted_kernels(config, model) == []


def test_vgg16_forward_is_the_published_count():
  """VGG16 without its top at 224x224: 15.35 GMACs (Simonyan & Zisserman's 15.5 G with the
  top's 0.12 G), the figure papers and Keras quote."""
  config, model = recipe("rps", 224)
  assert flops.forward_flops(config, model, 1) / 2 == pytest.approx(15.35e9, rel=0.002)


def fake_cpu(flags: str, vendor: str = "GenuineIntel", family: int = 6, mhz: float = 2000.0):
  return cpuinfo.CpuInfo(model_name="test", machine="x86_64", vendor=vendor, family=family,
                         flags=frozenset(flags.split()), threads_per_core=2, mhz=mhz,
                         mhz_source="test")


def test_theoretical_peak_from_isa_clock_and_cores():
  avx2 = fake_cpu("avx avx2 fma")
  assert peak.theoretical_gflops(avx2, cores=4)["gflops_per_sec"] == 4 * 2.0 * 32
  assert peak.theoretical_gflops(avx2, "bfloat16") is None  # no bf16 instructions
  intel = fake_cpu("avx2 fma avx512f avx512_bf16")
  assert peak.theoretical_gflops(intel, cores=1)["gflops_per_sec"] == 2.0 * 64
  assert peak.theoretical_gflops(intel, "bfloat16", cores=1)["gflops_per_sec"] == 2.0 * 128
  zen4 = fake_cpu("avx2 fma avx512f avx512_bf16", vendor="AuthenticAMD", family=25)
  assert peak.theoretical_gflops(zen4, cores=1)["gflops_per_sec"] == 2.0 * 32
  assert "Zen 4" in peak.theoretical_gflops(zen4, cores=1)["formula"]
  assert peak.theoretical_gflops(fake_cpu("sse2")) is None
  assert peak.theoretical_gflops(fake_cpu("avx2 fma", mhz=None)) is None


def test_peak_is_the_best_measured_product(monkeypatch):
  monkeypatch.setattr(peak, "jax_dot_gflops", lambda dtype, n, s: {"float32": 100.0,
                                                                   "bfloat16": 60.0}[dtype])
  monkeypatch.setattr(peak, "numpy_gemm_gflops", lambda n, s: 150.0)
  p = peak.machine_peak("bfloat16", info=fake_cpu("avx2 fma", mhz=1e6))
  assert p["measured"] == {"jax_dot_bfloat16": 60.0, "jax_dot_float32": 100.0,
                           "numpy_blas_float32": 150.0}
  assert p["peak_gflops_per_sec"] == 150.0 and p["peak_source"] == "numpy_blas_float32"
  assert p["theoretical"]["theoretical_float32"]["gflops_per_sec"] > 150.0  # never the peak
  assert (peak.dot_size("cpu"), peak.dot_size("gpu")) == (2048, 8192)
  assert peak.numpy_gemm_gflops(64, 0.0) > 0 and peak.jax_dot_gflops("float32", 64, 0.0) > 0
  # A peer's rate above every product becomes the peak; a slower one or a missing one does not.
  seen = peak.with_rates(p, {"keras_forward_bfloat16": 170.0, "keras_train_bfloat16": None})
  assert seen["peak_gflops_per_sec"] == 170.0 and seen["peak_source"] == "keras_forward_bfloat16"
  assert "keras_train_bfloat16" not in seen["measured"] and p["peak_gflops_per_sec"] == 150.0
  assert peak.with_rates(p, {"keras_forward_bfloat16": 20.0})["peak_source"] == "numpy_blas_float32"


def test_the_bf16_row_runs_where_the_cpu_has_avx512_bf16(monkeypatch):
  config, _ = recipe("catsdogs", 48)
  for flags, auto in (("avx2 fma avx512f avx512_bf16", True), ("avx2 fma avx512f", False)):
    monkeypatch.setattr(cpuinfo, "this_cpu", lambda flags=flags: fake_cpu(flags))
    cfg, why = suite.bf16_row_config(config, "auto", "cpu", keras_ok=True)
    assert (cfg is not None) == auto, why
    if auto:
      assert cfg.model.dtype == "bfloat16" and config.model.dtype == "float32"
    else:
      assert "AVX512-BF16" in why
    assert suite.bf16_row_config(config, "true", "cpu", keras_ok=True)[0] is not None
    assert suite.bf16_row_config(config, "false", "cpu", keras_ok=True)[0] is None
    assert "Keras" in suite.bf16_row_config(config, "true", "cpu", keras_ok=False)[1]
    assert suite.bf16_row_config(config, "true", "gpu", keras_ok=True)[0] is None


def test_help_lists_the_benchmarks_own_flags_and_exits_0():
  run = lambda flag: subprocess.run([sys.executable, "-m", "rpsflax.benchmark", flag], cwd=REPO,
                                    env=cli_env(), capture_output=True, text=True, timeout=120)
  short, full = run("--help"), run("--helpfull")
  assert short.returncode == 0 and full.returncode == 0, short.stderr + full.stderr
  for flag in ("--config:", "compare_keras:", "--bf16_row:", "json:", "--seconds:"):
    assert flag in short.stdout, flag
  assert "jax_figures.py" not in short.stdout and len(short.stdout.splitlines()) < 80
  assert "--flagfile" not in short.stdout and "--flagfile" in full.stdout  # absl's own flags
