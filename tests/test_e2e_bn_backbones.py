"""The BatchNorm-backbone configs train end to end through the real command, on the shared samples.

configs/rps_resnet50.py, configs/catsdogs_mobilenetv2.py and configs/catsdogs_mobilenetv2_finetune.py,
each one epoch at 32x32 on a few of ../shared/data's images (symlinked train/ and validation/
class folders), random weights (no ImageNet files offline). Then: eval.json holds the validation
images and the class names, and against the run's initial variables (train.initial_state, computed
again) the checkpoint's frozen backbone and every BatchNorm statistic are bit-identical; the
fine-tuning run changed its layers from 100 on and its head, nothing else.

One subprocess runs `rpsflax.main`'s own flag parsing and main() once per config (what
`python -m rpsflax.main` runs), then the comparisons: one interpreter start instead of four
(238 s against 307 s wall for the file on the loaded 2-core test box). XLA compilations go through a persistent compilation cache in the test's
folder: the backbones' jitted random init compiles for 20-40 s on a loaded 2-core CPU, and the
two MobileNetV2 runs and the comparison compile the same ones.
"""

import json
import math
import re
import subprocess
import sys
import textwrap

import pytest

import commands

SIZE = 32
TIMEOUT = 600
# slow: ~2 min of CPU (4 min wall on 2 cores at load 6-7), most of it compiling the jitted inits
pytestmark = pytest.mark.slow
FINETUNE_LAYERS = r"^params/backbone/(block_11_(depthwise|project)|block_1[2-6]_|Conv_1)"
RUNS = {  # config: (shared folder of class folders, classes, training / validation per class)
    "rps_resnet50": ("rps/train", ["paper", "rock", "scissors"], 3, 2),
    "catsdogs_mobilenetv2": ("catsdogs_filtered/train", ["cats", "dogs"], 4, 2),
    "catsdogs_mobilenetv2_finetune": ("catsdogs_filtered/train", ["cats", "dogs"], 4, 2),
}

# argv: JSON {workdir: [flags]}; writes workdir/variables.json: every variable's path ('params/...',
# 'batch_stats/...') and those that differ between the run's initial state and its checkpoint.
SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import jax, numpy as np
    from absl import flags
    from flax import traverse_util
    from rpsflax import main
    main.define_flags()
    runs = json.loads(sys.argv[1])
    for wd, argv in runs.items():
      sys.argv = ["rpsflax.main", f"--workdir={wd}", *argv]  # config_flags reads its overrides here
      main.main(main.parse_flags(sys.argv))
      for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # the next config's own
        delattr(flags.FLAGS, name)
      flags.FLAGS.unparse_flags()
    from rpsflax import models, report, restore, sharding, train
    def flat(state):
      v = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
      return {k: np.asarray(x) for k, x in traverse_util.flatten_dict(v, sep="/").items()}
    for wd in runs:
      config = report.read_config(wd)
      mesh = sharding.make_mesh()
      init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # as train.run
      initial = flat(train.initial_state(config, models.build_model(config), init_rng, mesh,
                                         train.resolve_weights(config)))
      final = flat(restore.restore_state(config, wd, which="latest", mesh=mesh)[0])
      assert initial.keys() == final.keys(), (sorted(initial), sorted(final))
      changed = sorted(k for k in initial if not np.array_equal(initial[k], final[k]))
      out = {"variables": sorted(initial), "changed": changed}
      (pathlib.Path(wd) / "variables.json").write_text(json.dumps(out))
""")


def _subset(src, dest, classes, n_train, n_val):
  """dest/{train,validation}/<class>/: symlinks to the first images of each class folder."""
  for c in classes:
    files = sorted((src / c).iterdir())[:n_train + n_val]
    for split, chosen in (("train", files[:n_train]), ("validation", files[n_train:])):
      (dest / split / c).mkdir(parents=True)
      for f in chosen:
        (dest / split / c / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("bn_e2e")
  argv = {}
  for name, (folder, classes, n_train, n_val) in RUNS.items():
    data = root / "data" / name
    _subset(shared_data / folder, data, classes, n_train, n_val)
    argv[str(root / name)] = [f"--config=configs/{name}.py", f"--config.data.dir={data}",
                              "--config.weights=", f"--config.data.image_size={SIZE}",
                              "--config.batch_size=4", "--config.eval_batch_size=8",
                              "--config.num_epochs=1"]
  env = commands.cli_env(JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argv)], cwd=commands.REPO,
                        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-6000:]
  return root


def _read(runs, name, what):
  return json.loads((runs / name / what).read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_trains_end_to_end_and_reports_the_validation_images(runs, name):
  _, classes, _, n_val = RUNS[name]
  result = _read(runs, name, "eval.json")
  assert result["split"] == "validation" and result["num_examples"] == n_val * len(classes)
  assert result["class_names"] == classes and math.isfinite(result["loss"])
  assert len(_read(runs, name, "history.json")) == 1


@pytest.mark.parametrize("name", ["rps_resnet50", "catsdogs_mobilenetv2"])
def test_frozen_backbone_and_its_batchnorm_statistics_never_change(runs, name):
  v = _read(runs, name, "variables.json")
  stats = [k for k in v["variables"] if k.startswith("batch_stats/backbone/")]
  assert len(stats) == 2 * (53 if name == "rps_resnet50" else 52)  # mean and var of every BN
  assert v["changed"] and all(k.startswith("params/head/") for k in v["changed"]), v["changed"]


def test_finetune_trains_layers_from_100_on_and_keeps_batchnorm_in_inference_mode(runs):
  v = _read(runs, "catsdogs_mobilenetv2_finetune", "variables.json")
  changed = set(v["changed"])
  unfrozen = {k for k in v["variables"]
              if re.search(FINETUNE_LAYERS, k) or k.startswith("params/head/")}
  assert changed <= unfrozen, sorted(changed - unfrozen)  # no BN statistic, no layer before 100
  for layer in ("block_11_depthwise", "block_16_project", "Conv_1"):  # its first, a middle, last
    assert f"params/backbone/{layer}/kernel" in changed
  assert "params/backbone/block_11_depthwise_BN/scale" in changed  # gamma trains, BN stays frozen
  assert "batch_stats/backbone/block_11_depthwise_BN/mean" in v["variables"]
  assert "params/backbone/block_11_expand/kernel" not in changed  # layer 98: frozen
