"""Every command in README.md is run here or by CI, as written (issue 24).

The commands are the logical lines (backslash continuations joined, comments dropped) of the
README's ```bash blocks. Each must be known to this file: the set-up ones are CI's own lines
(`.ci/run` runs them in a fresh virtual environment), the quick test subset names files of the
suite CI runs, and the rest run here through the real CLI in a user's environment. Where a
command is changed before it runs, `SUBSTITUTIONS` below says what and why; nothing else is. A
new command in the README fails `test_every_readme_command_is_covered` until it is covered.
"""

import pathlib
import re
import shlex

import pytest

import data_factory
from test_e2e_rps import vgg16_legacy_h5
from test_first_hour import foreign_lines, run_user

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_SCRIPT = REPO / ".ci" / "run"

FIRST_RUN = ("python -m rpsflax.main --config=configs/rps_tiny.py --workdir=/tmp/rps_tiny "
             "--config.data.dir=../shared/data/rps")
EVALUATE = ("python -m rpsflax.main --mode=evaluate --workdir=/tmp/rps_tiny "
            "--data_dir=../shared/data/rps/validation")
PREDICT = ("python -m rpsflax.predict --workdir=/tmp/rps_tiny --grid=/tmp/grid.png "
           "../shared/data/rps/validation")
SHOW_CONFIG = "python -m rpsflax.main --config=configs/rps.py --show_config"
HELP = "python -m rpsflax.main --help"
CONVERT = ("python scripts/convert_keras_weights.py --input "
           "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
OWN_FOLDER = ("python -m rpsflax.main --config=configs/folder.py --workdir=runs/mine "
              "--config.data.dir=DIR --config.weights=weights/vgg16_notop")
QUICK = ("pytest tests/test_first_hour.py tests/test_config_check.py tests/test_parity_cnn.py "
         "tests/test_preprocess.py")
CROSS_VALIDATE = ("python scripts/cv_rps.py --data_dir=../shared/data/rps_large/train "
                  "--weights=../shared/weights/vgg16_mri_notop.h5 --views=3 --out=cv.json")
EXPORT = ("python -m rpsflax.export --workdir=/tmp/rps_tiny --format=stablehlo "
          "--output=/tmp/rps.stablehlo")
RUN_HERE = {FIRST_RUN, EVALUATE, PREDICT, SHOW_CONFIG, HELP, CONVERT, OWN_FOLDER, CROSS_VALIDATE,
            EXPORT}
BY_CI = {"python3 -m venv .venv", ". .venv/bin/activate", 'pip install -e ".[test]"', "pytest"}

# Added to the own-folder command (see SUBSTITUTIONS for why).
TINY = ("--config.data.image_size=32", "--config.num_epochs=1", "--config.batch_size=8",
        "--config.eval_batch_size=8")

# Added to the cross-validation (see SUBSTITUTIONS for why).
CV_TINY = ("--image_size=32", "--folds=3", "--recipes=tutorial,rps_tuned", "--num_epochs=2")

# What changes before a command runs here, and why.
SUBSTITUTIONS = {
    "/tmp/rps_tiny": "a fresh tmp_path workdir: /tmp/rps_tiny may hold a user's own run, which the "
                     "command would resume instead of training",
    "/tmp/grid.png": "a file under tmp_path, for the same reason",
    "/tmp/rps.stablehlo": "a file under tmp_path: an existing output is refused",
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "a seeded random file in the release's "
                     "legacy HDF5 layout: the 58 MB release is not in the checkout (nor online here)",
    "weights/vgg16_notop": "--output / --config.weights under tmp_path, not the checkout's weights/",
    "DIR": "a generated folder of four classes (the README's DIR is the user's own)",
    "runs/mine": "a tmp_path workdir",
    "../shared/data/rps_large/train": "a generated folder of 3 hands per class, named as the RPS "
                                      "files are (the real one: 45 min of VGG16 passes on a CPU)",
    "../shared/weights/vgg16_mri_notop.h5": "a seeded random file in the release's legacy HDF5 "
                                            "layout (the real one need not be beside a clone)",
    "cv.json": "a file under tmp_path",
    "(CV_TINY added)": "32 px, 3 folds, two of the 21 recipes, 2 epochs: the command's path, "
                       "seconds instead of the hour the full comparison takes",
    "(TINY added)": "configs/folder.py's 224 px x 20 epochs of VGG16 take about an hour on a "
                    "CPU; the recipe, the folder layout and the weights path are the README's",
}


def readme_commands() -> list[str]:
  """The README's shell commands, each as one normalised line (shlex-split, comments dropped)."""
  text = README.read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      tokens = shlex.split(line, comments=True)
      if tokens:
        commands.append(shlex.join(tokens).replace("'.[test]'", '".[test]"'))
  return commands


def _norm(command: str) -> str:
  return shlex.join(shlex.split(command)).replace("'.[test]'", '".[test]"')


def test_every_readme_command_is_covered():
  known = {_norm(c) for c in RUN_HERE | BY_CI | {QUICK}}
  unknown = [c for c in readme_commands() if c not in known]
  assert not unknown, f"README commands no test runs (add them to tests/test_readme.py): {unknown}"
  missing = sorted(known - set(readme_commands()))
  assert not missing, f"commands this test runs that the README no longer has: {missing}"


def test_the_set_up_commands_are_what_ci_runs():
  ci_lines = {line.strip() for line in CI_SCRIPT.read_text().splitlines()}
  for command in BY_CI:
    assert command in ci_lines, f"{command!r} is in the README but not in {CI_SCRIPT}"
  # The quick subset: files of the suite CI runs whole (`pytest`).
  for path in shlex.split(QUICK)[1:]:
    assert (REPO / path).is_file(), path


def test_the_readme_is_a_front_page_whose_links_resolve():
  text = README.read_text()
  assert len(text.splitlines()) <= 200
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
    assert (REPO / target).exists(), target
  assert "](docs/export.md)" in text


def _args(command: str, **replace) -> list[str]:
  """The command's arguments after `python -m MODULE` (or the script), with the substitutions
  named in SUBSTITUTIONS (keys: the README's text, values: what replaces it)."""
  tokens = shlex.split(command)
  out = []
  for t in tokens[3:] if tokens[1] == "-m" else tokens[2:]:
    for old, new in replace.items():
      t = t.replace(old, str(new))
    out.append(t)
  return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_data):
  if not (REPO / "../shared/data/rps").is_dir():
    pytest.skip("the README's ../shared/data/rps is not beside this checkout")
  workdir = tmp_path_factory.mktemp("readme") / "rps_tiny"
  proc = run_user("rpsflax.main", *_args(FIRST_RUN, **{"/tmp/rps_tiny": workdir}), timeout=900)
  return workdir, proc


@pytest.mark.slow  # a real training run (1-2 min on 2 cores)
def test_first_run_ends_near_chance_and_writes_what_the_readme_lists(first_run):
  import json

  workdir, proc = first_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert not foreign_lines(proc.stderr), "\n".join(foreign_lines(proc.stderr))
  for name in ("eval.json", "confusion_matrix.png", "history.json", "curves.png", "config.json",
               "data_report.json", "splits", "tensorboard", "checkpoints/best",
               "checkpoints/latest"):
    assert (workdir / name).exists(), name
  ev = json.loads((workdir / "eval.json").read_text())
  assert ev["checkpoint"]["which"] == "best" and ev["num_examples"] == 33
  assert 0.0 <= ev["accuracy"] <= 0.7  # random weights at 32 px: near chance, as the README says
  # The last lines: accuracy, the checkpoint, where the outputs are.
  tail = proc.stderr[proc.stderr.rindex("train done in"):]
  assert "with the best checkpoint (epoch" in tail
  assert f"eval.json:        {workdir / 'eval.json'}" in tail and "curves:" in tail


@pytest.mark.slow  # a real training run (1-2 min on 2 cores)
def test_evaluate_and_predict_agree_on_the_checkpoint(first_run, tmp_path):
  import json

  workdir, proc = first_run
  assert proc.returncode == 0
  trained = json.loads((workdir / "eval.json").read_text())["checkpoint"]
  ev = run_user("rpsflax.main", *_args(EVALUATE, **{"/tmp/rps_tiny": workdir}))
  assert ev.returncode == 0, ev.stderr[-3000:]
  record = json.loads((workdir / "eval" / "folder-validation" / "eval.json").read_text())
  assert record["checkpoint"] == trained and record["num_examples"] == 33
  grid = tmp_path / "grid.png"
  pred = run_user("rpsflax.predict", *_args(PREDICT, **{"/tmp/rps_tiny": workdir,
                                                        "/tmp/grid.png": grid}))
  assert pred.returncode == 0, pred.stderr[-3000:]
  assert grid.stat().st_size > 10_000
  said = f"with the {trained['which']} checkpoint (epoch {trained['epoch']}, step {trained['step']})"
  assert said in ev.stderr and said in pred.stderr
  assert "showing 32 of 33 images" in pred.stderr
  assert not foreign_lines(ev.stderr) and not foreign_lines(pred.stderr)
  # The README's export: the same checkpoint, out as StableHLO with its manifest.
  out = tmp_path / "rps.stablehlo"
  exp = run_user("rpsflax.export", *_args(EXPORT, **{"/tmp/rps_tiny": workdir,
                                                     "/tmp/rps.stablehlo": out}))
  assert exp.returncode == 0, exp.stderr[-3000:]
  manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
  assert manifest["source"]["checkpoint"] == trained, manifest["source"]


@pytest.mark.parametrize("command", [SHOW_CONFIG, HELP])
def test_config_and_help_commands(command):
  proc = run_user("rpsflax.main", *_args(command))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip()


@pytest.mark.slow  # a real training run (1-2 min on 2 cores)
def test_train_on_your_own_folder(tmp_path):
  """The README's two lines: convert the release file, then configs/folder.py on a folder whose
  class count the recipe does not name (four here)."""
  import json
  import subprocess
  import sys

  from test_first_hour import user_env

  h5 = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  vgg16_legacy_h5(h5)
  converted = tmp_path / "vgg16_notop"
  convert = subprocess.run(
      [sys.executable, *shlex.split(CONVERT)[1:2], *_args(CONVERT, **{
          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": h5}), "--output", str(converted)],
      cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600)
  assert convert.returncode == 0, convert.stderr[-3000:]
  data = tmp_path / "folder"
  data_factory.class_folders(data / "train", {c: 4 for c in ("ant", "bee", "cow", "dog")})
  workdir = tmp_path / "mine"
  proc = run_user("rpsflax.main", *_args(OWN_FOLDER, **{
      "runs/mine": workdir, "=DIR": f"={data}", "weights/vgg16_notop": converted}), *TINY,
      timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["head"]["num_classes"] == 4 and config["weights"] == str(converted)
  assert json.loads((workdir / "eval.json").read_text())["class_names"] == ["ant", "bee", "cow",
                                                                            "dog"]


@pytest.mark.slow  # VGG16 passes at 32 px and 12 head trainings (about a minute on 2 cores)
def test_cross_validation_command(tmp_path):
  """The README's cross-validation: hands folded whole, the two recommended recipes compared,
  the JSON a script can read and the table printed."""
  import json
  import subprocess
  import sys

  from test_crossval import _write_hands
  from test_first_hour import user_env

  data, weights, out = tmp_path / "hands", tmp_path / "vgg16.h5", tmp_path / "cv.json"
  _write_hands(data)
  vgg16_legacy_h5(weights)
  proc = subprocess.run(
      [sys.executable, "scripts/cv_rps.py", *_args(CROSS_VALIDATE, **{
          "../shared/data/rps_large/train": data, "../shared/weights/vgg16_mri_notop.h5": weights,
          "cv.json": out}), *CV_TINY, f"--cache_dir={tmp_path / 'cache'}"],
      cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  doc = json.loads(out.read_text())
  assert doc["views"] == 3 and len(doc["folds"]) == 3
  assert [r["name"] for r in doc["recipes"]] == ["tutorial", "rps_tuned"]
  assert all(len(r["per_fold"]) == 3 for r in doc["recipes"])
  assert "| tutorial |" in proc.stdout
