"""rpsflax.export: each format, for each backbone family, against rpsflax.predict's probabilities.

Workdirs are made without training (as tests/test_predict.py does): the recipe's config at the
smallest input size, seeded random parameters with the output layer scaled up (a random head
answers ~1/C everywhere, which would hide a class-order or channel mix-up), random BatchNorm
statistics for ResNet50 and MobileNetV2 (so a format that dropped them would show), and a 'best'
checkpoint. The parity images are the real sample images in ../shared/data when present (the
workdir's config.data.dir points there), else a seeded synthetic batch.

Bounds: each format's DEFAULT_MAX_DIFF (1e-5 for stablehlo, 1e-3 through TensorFlow's kernels,
2e-3 through ONNX Runtime's, justified in rpsflax/export/parity.py) for the artifact against
rpsflax.predict; each test also shows a deliberate break (channels swapped,
classes reordered, preprocessing missing) moves probabilities by far more than the bound, so the
comparison can fail.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from commands import cli_env, run_cmd
from keras_reference import SHARED_DATA

REPO = pathlib.Path(__file__).resolve().parents[1]
PARITY_COUNT = 6   # images per parity check: enough for both classes, cheap on 2 cores
BREAK_MIN = 1e-2   # a deliberate break must move some probability by at least this

# family -> (recipe, sample folder under ../shared/data, class names, config overrides)
FAMILIES = {
    "vgg16": ("rps", "rps/train", ["paper", "rock", "scissors"], {}),
    "resnet50": ("rps_resnet50", "rps/train", ["paper", "rock", "scissors"], {}),
    "mobilenet_v2": ("catsdogs_mobilenetv2", "catsdogs/train", ["cat", "dog"],
                     {"alpha": 0.35}),
    "cnn": ("catsdogs", "catsdogs/train", ["cat", "dog"], {"hidden": (16,)}),
}


def parity_bound(fmt):
  from rpsflax.export import exporter

  return exporter.format_module(fmt).DEFAULT_MAX_DIFF


def make_workdir(root: pathlib.Path, family: str, seed: int = 0) -> pathlib.Path:
  """config.json + a 'best' checkpoint of a seeded, untrained model of `family`."""

  from rpsflax import checkpoint, config_base, config_check, models, report, steps

  recipe, sample, class_names, over = FAMILIES[family]
  config = config_base.load_sibling(str(REPO / "configs" / "x.py"), recipe).get_config()
  config.data.image_size = config_check.min_image_size(config.model.name)
  config.weights = ""
  data = SHARED_DATA / sample
  config.data.dir = str(data) if data.is_dir() else ""
  if "alpha" in over:
    config.model.alpha = over["alpha"]
  if "hidden" in over:
    config.head.hidden = over["hidden"]
  workdir = root / family
  report.write_config(workdir, config)
  model = models.build_model(config)
  params, stats = _random_variables(config, model, seed)
  images = parity_images_of(config)
  stats = _calibrated_bn(config, params, stats, images)
  _spread_logits(config, model, params, stats, images)
  state = steps.create_train_state(config, model, params=params, batch_stats=stats)
  with checkpoint.Checkpoints(workdir, async_save=False) as ckpts:
    ckpts.save(state, {"step": 7, "epoch": 2, "class_names": class_names},
               which=checkpoint.BEST)
  return workdir


def _random_variables(config, model, seed):
  """(params, batch_stats) drawn with NumPy from the model's shapes: He-normal kernels, zero
  biases, BatchNorm at identity. Seconds, where compiling the model's init takes ~15 s for
  ResNet50 on 2 cores."""
  import jax

  from rpsflax import steps

  shapes = jax.eval_shape(lambda: steps.init_variables(config, model, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return rng.normal(0, np.sqrt(2.0 / fan_in), s.shape).astype(s.dtype)
    return (np.ones if name in ("scale", "var") else np.zeros)(s.shape, s.dtype)
  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return variables["params"], variables.get("batch_stats", {})


def _calibrated_bn(config, params, stats, images):
  """BatchNorm moving statistics set to the statistics of the parity images at each layer, as a
  trained model's are (far from Flax's init of mean 0, var 1, so dropping them would show). With
  the init values a random MobileNetV2's activations fade layer by layer to a constant output.

  One train-mode call returns new = m * old + (1 - m) * batch for each statistic; called with
  old = 0 and with old = 1 it gives m and then the batch statistic itself."""
  import jax

  from rpsflax import models, steps

  if not stats:
    return {}
  bn_config = config.copy_and_resolve_references()
  bn_config.model.bn_trainable, bn_config.trainable = True, (".*",)
  model = models.build_model(bn_config)  # every BatchNorm layer in training mode when train=True
  x = steps.prepare_images(config, images)

  @jax.jit  # one compilation: op by op, ResNet50 in train mode takes far longer
  def updated(old):
    _, new = model.apply({"params": params, "batch_stats": old}, x, train=True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    return new["batch_stats"]

  zeros, ones = (jax.tree.map(np.asarray, updated(jax.tree.map(lambda s: np.full(
      s.shape, fill, s.dtype), stats))) for fill in (0.0, 1.0))
  batch = jax.tree.map(lambda z, o: z / (1.0 - (o - z)), zeros, ones)
  # Six images at a 1x1 feature map can give a channel ~0 variance, which a trained model's
  # statistics (over thousands of images) never have: floor it, or the random net amplifies
  # float32 rounding by 1/sqrt(eps) in that channel.
  return jax.tree_util.tree_map_with_path(
      lambda p, v: (np.maximum(v, 1e-2) if p[-1].key == "var" else v).astype(np.float32), batch)


def parity_images_of(config):
  from rpsflax.export import parity

  return parity.pick_images(config, count=PARITY_COUNT)[0]


def _spread_logits(config, model, params, stats, images):
  """Rescale the output layer so that, on the parity images, each logit has mean 0 and std 2
  across images: a random head's logits are nearly constant (or saturated when merely scaled up),
  so neither a channel swap nor a class mix-up would move its probabilities.

  The logits are read back from rpsflax.predict's own function (log p: softmax is blind to the
  per-image constant that differs), the very program the exporter's reference runs, so the
  persistent compilation cache the tests share compiles it once."""
  from rpsflax import steps

  predict = steps.make_predict_fn(config, model, stats)
  out = params["head"]["predictions"]
  p = np.asarray(predict(params, images), np.float64)
  while p.min() < 1e-12:  # saturated (a random VGG16's logits differ by hundreds): shrink first
    out["kernel"] = (out["kernel"] * 1e-2).astype(np.float32)
    p = np.asarray(predict(params, images), np.float64)
  logits = np.log(p[:, 1:] / p[:, :1]) if config.head.num_classes == 1 else np.log(p)
  centred = logits - logits.mean(0)
  scale = 2.0 / max(float(centred.std()), 1e-12)
  out["kernel"] = (out["kernel"] * scale).astype(np.float32)
  out["bias"] = (-logits.mean(0) * scale).astype(np.float32)  # bias is 0 at init


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """family -> workdir, made on first use."""
  root = tmp_path_factory.mktemp("export_runs")
  made = {}

  def get(family):
    if family not in made:
      made[family] = make_workdir(root, family)
    return made[family]
  return get


_REFERENCES = {}


def reference(workdir, images):
  """rpsflax.predict's probabilities for uint8 images (its Predictor, as the command runs it);
  one Predictor per workdir (each compiles its model once)."""
  from rpsflax import prediction

  key = str(workdir)
  if key not in _REFERENCES:
    _REFERENCES[key] = prediction.Predictor(workdir, batch_size=PARITY_COUNT)
  return _REFERENCES[key].probabilities(images)


def assert_breaks_show(run, images, ref, class_names):
  """A swapped channel order and a reordered class list each move probabilities past BREAK_MIN,
  far beyond the parity bound: so the parity comparison of these images can fail."""
  swapped = np.abs(run(images[..., ::-1]) - ref).max()
  reordered = np.abs(ref[:, ::-1] - ref).max()
  assert swapped > BREAK_MIN, f"channels swapped moved probabilities by only {swapped}"
  assert reordered > BREAK_MIN, f"classes reordered moved probabilities by only {reordered}"


def read_manifest(path) -> dict:
  return json.loads(pathlib.Path(str(path) + ".manifest.json").read_text())


# ---------------------------------------------------------------------------------------------
# StableHLO

@pytest.mark.parametrize("family", ["cnn", "vgg16", "resnet50", "mobilenet_v2"])
def test_stablehlo_round_trip(tmp_path, workdirs, family):
  import jax

  from rpsflax.export import exporter

  workdir = workdirs(family)
  out = tmp_path / f"{family}.stablehlo"
  m = exporter.export(workdir, "stablehlo", out, count=PARITY_COUNT)
  assert out.is_file() and read_manifest(out) == m
  names = FAMILIES[family][2]
  assert m["class_names"] == names and m["source"]["checkpoint"] == {
      "which": "best", "epoch": 2, "step": 7, "path": "checkpoints/best/7"}
  assert m["preprocessing"]["inside_model"] and m["input"]["dtype"] == "uint8"
  assert m["parity"]["max_abs_diff"] <= parity_bound("stablehlo")
  assert m["parity"]["images"]["source"] == ("data_dir" if SHARED_DATA.is_dir() else "synthetic")

  # Load it as a user would (no rpsflax) and compare with rpsflax.predict on the same images.
  exp = jax.export.deserialize(bytearray(out.read_bytes()))
  run = lambda x: np.asarray(exp.call(x), np.float64)
  images = parity_images(workdir)
  ref = reference(workdir, images)
  np.testing.assert_allclose(run(images), ref, atol=parity_bound("stablehlo"), rtol=0)
  if family == "cnn":  # any batch size (one more compilation: the cheap model only)
    np.testing.assert_allclose(run(images[:1]), ref[:1], atol=parity_bound("stablehlo"), rtol=0)
  assert np.ptp(ref) > 0.05  # informative answers
  assert_breaks_show(run, images, ref, names)


# ---------------------------------------------------------------------------------------------
# Keras

@pytest.mark.parametrize("family", ["cnn", "vgg16", "resnet50", "mobilenet_v2"])
def test_keras_round_trip(tmp_path, workdirs, family):
  import keras

  from rpsflax import keras_models
  from rpsflax.export import exporter

  workdir = workdirs(family)
  out = tmp_path / f"{family}.keras"
  m = exporter.export(workdir, "keras", out, count=PARITY_COUNT)
  names = FAMILIES[family][2]
  assert m["class_names"] == names and not m["preprocessing"]["inside_model"]
  assert m["parity"]["max_abs_diff"] <= parity_bound("keras")
  print(f"keras {family}: max |p - p_predict| = {m['parity']['max_abs_diff']:.2e}")

  # As the docs load it: plain Keras, the manifest's preprocess_input by the caller.
  model = keras.saving.load_model(out)
  fn = m["preprocessing"]["keras_function"]
  preprocess = keras_models.PREPROCESS[m["preprocessing"]["mode"]]

  def run(images):
    p = np.asarray(model.predict(preprocess(keras, images.astype(np.float32)), verbose=0))
    return np.concatenate([1 - p, p], -1) if p.shape[-1] == 1 else p

  images = parity_images(workdir)
  ref = reference(workdir, images)
  np.testing.assert_allclose(run(images), ref, atol=parity_bound("keras"), rtol=0)
  assert fn.startswith("keras.applications.") or family == "cnn"
  unprocessed = np.asarray(model.predict(images.astype(np.float32), verbose=0))
  if unprocessed.shape[-1] == 1:
    unprocessed = np.concatenate([1 - unprocessed, unprocessed], -1)
  assert np.abs(unprocessed - ref).max() > BREAK_MIN  # forgetting preprocess_input shows
  assert_breaks_show(run, images, ref, names)


def test_keras_refuses_a_head_it_cannot_express(tmp_path):
  from rpsflax import config_base
  from rpsflax.export import to_keras

  config = config_base.get_config()
  config.head.hidden, config.head.hidden_activation = (8,), "gelu"
  with pytest.raises(errors_mod().ExportError, match="--format=onnx: head.hidden_activation"):
    to_keras.check(config, {"format": "onnx"})


def errors_mod():
  from rpsflax import errors

  return errors


# ---------------------------------------------------------------------------------------------
# SavedModel and ONNX: one TensorFlow graph (uint8 in, preprocessing inside, probabilities out).
# Run for the CNN and MobileNetV2 (BatchNorm statistics, depthwise convs, alpha): the route is
# the Keras model's, which test_keras_round_trip holds for every family.

def _run_savedmodel(path):
  import tensorflow as tf

  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return lambda x: serve(images=tf.constant(x))["probabilities"].numpy().astype(np.float64)


def _run_onnx(path):
  import onnxruntime as ort

  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return lambda x: session.run(["probabilities"], {"images": x})[0].astype(np.float64)


@pytest.mark.parametrize("fmt,suffix,load", [("savedmodel", "", _run_savedmodel),
                                             ("onnx", ".onnx", _run_onnx)])
@pytest.mark.parametrize("family", ["cnn", "vgg16", "resnet50", "mobilenet_v2"])
def test_tf_graph_round_trip(tmp_path, workdirs, family, fmt, suffix, load):
  from rpsflax.export import exporter

  workdir = workdirs(family)
  out = tmp_path / f"{family}{suffix}"
  m = exporter.export(workdir, fmt, out, count=PARITY_COUNT)
  assert m["preprocessing"]["inside_model"] and m["input"]["dtype"] == "uint8"
  assert m["class_names"] == FAMILIES[family][2]
  assert m["parity"]["max_abs_diff"] <= parity_bound(fmt)
  print(f"{fmt} {family}: max |p - p_predict| = {m['parity']['max_abs_diff']:.2e}")
  run = load(out)
  images = parity_images(workdir)
  ref = reference(workdir, images)
  np.testing.assert_allclose(run(images), ref, atol=parity_bound(fmt), rtol=0)
  if family == "cnn":
    np.testing.assert_allclose(run(images[:1]), ref[:1], atol=parity_bound(fmt), rtol=0)
  assert_breaks_show(run, images, ref, FAMILIES[family][2])


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the flag, exit 2, nothing written

def _no_leftovers(folder, allowed=()):
  left = sorted(p.name for p in pathlib.Path(folder).iterdir() if p.name not in allowed)
  assert left == [], f"left behind: {left}"


def test_refusals_name_the_flag(tmp_path, workdirs):
  from rpsflax.export import exporter

  ExportError = errors_mod().ExportError
  workdir = workdirs("cnn")
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(ExportError, match="--format='tflite'"):
    exporter.export(workdir, "tflite", out / "m")
  with pytest.raises(ExportError, match="--checkpoint='first'"):
    exporter.export(workdir, "stablehlo", out / "m", which="first")
  (tmp_path / "empty_run").mkdir()
  with pytest.raises(ExportError, match="--workdir=.*no config.json"):
    exporter.export(tmp_path / "empty_run", "stablehlo", out / "m")
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text((workdir / "config.json").read_text())
  with pytest.raises(ExportError, match="--workdir=.*no best checkpoint"):
    exporter.export(no_ckpt, "stablehlo", out / "m")
  (out / "taken").write_bytes(b"keep me")
  with pytest.raises(ExportError, match="--output=.*exists"):
    exporter.export(workdir, "stablehlo", out / "taken")
  assert (out / "taken").read_bytes() == b"keep me"
  with pytest.raises(ExportError, match="--output=.*is a file, not a folder"):
    exporter.export(workdir, "stablehlo", out / "taken" / "m")
  with pytest.raises(ExportError, match=r"--output=.*must end in \.keras"):
    exporter.export(workdir, "keras", out / "m.h5")
  _no_leftovers(out, allowed=("taken",))


def test_failed_parity_writes_nothing(tmp_path, workdirs, monkeypatch):
  """An artifact that disagrees with rpsflax.predict (here: its class order reversed) is refused
  and nothing is left under --output, nor the hidden folder it was built in."""
  from rpsflax.export import exporter, to_stablehlo

  good = to_stablehlo.runner
  monkeypatch.setattr(to_stablehlo, "runner",
                      lambda *a: (lambda x, run=good(*a): run(x)[:, ::-1]))
  with pytest.raises(errors_mod().ExportError, match="--format=stablehlo: .* disagrees"):
    exporter.export(workdirs("cnn"), "stablehlo", tmp_path / "m.stablehlo", count=PARITY_COUNT)
  _no_leftovers(tmp_path)


def test_cli_exit_codes_and_files(tmp_path, workdirs):
  workdir = workdirs("cnn")
  bad = run_cmd("rpsflax.export", f"--workdir={workdir}", "--format=pickle",
                f"--output={tmp_path / 'm'}", expect_rc=2)
  assert bad.stderr.strip().splitlines()[-1].startswith("error: --format='pickle'")
  out = tmp_path / "cats.stablehlo"
  run_cmd("rpsflax.export", f"--workdir={workdir}", "--format=stablehlo", f"--output={out}",
          "--parity_images=2")
  m = read_manifest(out)
  assert m["export_format"] == "stablehlo" and m["parity"]["count"] == 2
  again = run_cmd("rpsflax.export", f"--workdir={workdir}", "--format=stablehlo",
                  f"--output={out}", expect_rc=2)
  assert "--output=" in again.stderr and "exists" in again.stderr


def test_docs_stablehlo_loader_runs_as_written(tmp_path, workdirs):
  """docs/export.md's StableHLO loader, run as written (no rpsflax import) on an exported CNN."""
  import re

  from rpsflax.export import exporter

  text = (REPO / "docs" / "export.md").read_text()
  snippet = re.search(r"<!-- tested: stablehlo loader -->\n```python\n(.*?)```", text, re.S)[1]
  assert "rpsflax" not in snippet and len(snippet.strip().splitlines()) <= 14
  exporter.export(workdirs("cnn"), "stablehlo", tmp_path / "rps.stablehlo", count=2)
  from PIL import Image

  image = parity_images(workdirs("cnn"))[0]
  Image.fromarray(image).save(tmp_path / "hand.png")
  proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=cli_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = eval(proc.stdout.strip().splitlines()[-1])  # {'cat': p, 'dog': 1 - p}
  ref = reference(workdirs("cnn"), image[None])[0]
  assert list(printed) == ["cat", "dog"]
  np.testing.assert_allclose(list(printed.values()), ref, atol=1e-4)  # printed rounded to 4


def parity_images(workdir):
  from rpsflax import report
  from rpsflax.export import parity

  return parity.pick_images(report.read_config(workdir), count=PARITY_COUNT)[0]
