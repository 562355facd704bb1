"""The RPS head recipes compared by cross-validation (scripts/cv_rps.py), built from configs/.

Every recipe starts from a config file of configs/ (the tutorial's configs/rps.py, or the
cross-validated pick) and changes only head-side settings, so all of them share one feature
cache: block5 and block4 of VGG16, max- and avg-pooled, for the clean view and every cached
augmented view (rpsflax/cv_features.py).
"""

import pathlib

from rpsflax import config_base
from rpsflax.crossval import Recipe

B5_MAX, B5_AVG = "block5_pool:max", "block5_pool:avg"
B4_MAX, B4_AVG = "block4_pool:max", "block4_pool:avg"


def load_config(configs_dir, name: str):
  """configs/<name>.py's get_config()."""
  return config_base.load_sibling(str(pathlib.Path(configs_dir) / "_"), name).get_config()


def _with(config, **overrides):
  c = config.copy_and_resolve_references()
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def recipes(configs_dir) -> dict[str, Recipe]:
  """name -> Recipe, in the order the run log lists them."""
  tut = load_config(configs_dir, "rps")
  out = [
      Recipe("tutorial", tut, (B5_MAX,), note="configs/rps.py: max pool, RMSprop 1e-3, b32, 20 ep"),
      Recipe("tutorial_clean", tut, (B5_MAX,), views=1, note="no augmented views"),
      Recipe("tutorial_2views", tut, (B5_MAX,), views=2, note="clean + 1 augmented view"),
      Recipe("tutorial_tta", tut, (B5_MAX,), tta=True, note="evaluated on the mean over views"),
      Recipe("tutorial_ls0.1", _with(tut, label_smoothing=0.1), (B5_MAX,),
             note="label smoothing 0.1"),
      Recipe("tutorial_wd1e-1", _with(tut, optim__weight_decay=1e-1), (B5_MAX,),
             note="L2 1e-1 (coupled)"),
      Recipe("tutorial_wd1e-2", _with(tut, optim__weight_decay=1e-2), (B5_MAX,),
             note="L2 1e-2 (coupled)"),
      Recipe("tutorial_mixup0.2", _with(tut, mixup_alpha=0.2), (B5_MAX,),
             note="mixup on features, alpha 0.2"),
      Recipe("tutorial_b4b5", tut, (B5_MAX, B4_MAX), note="block4 + block5 max-pooled (1024)"),
      Recipe("tutorial_maxavg", tut, (B5_MAX, B5_AVG), note="block5 max + avg pooled (1024)"),
      Recipe("tutorial_ens5", tut, (B5_MAX,), ensemble=5, note="5 heads averaged"),
      Recipe("tutorial_40ep", _with(tut, num_epochs=40), (B5_MAX,), note="40 epochs"),
      Recipe("tutorial_hidden256", _with(tut, head__hidden=(256,)), (B5_MAX,),
             note="a hidden dense layer of 256 (relu)"),
      Recipe("tutorial_avg", tut, (B5_AVG,), note="the tutorial's optimizer on avg-pooled features"),
      # Combinations of the single changes that helped on the first pass (paired, 2 views).
      Recipe("maxavg_ens5", tut, (B5_MAX, B5_AVG), ensemble=5, note="max+avg, 5 heads"),
      Recipe("maxavg_mixup0.2", _with(tut, mixup_alpha=0.2), (B5_MAX, B5_AVG),
             note="max+avg, mixup 0.2"),
      Recipe("maxavg_mixup0.2_ens5_tta", _with(tut, mixup_alpha=0.2), (B5_MAX, B5_AVG),
             ensemble=5, tta=True, note="max+avg, mixup 0.2, 5 heads, TTA"),
  ]
  # Issue 12's pick, configs/rps_tuned.py then, configs/rps_avgpool.py since it lost under CV.
  tuned = _with(tut, head__pooling="avg", optim__name="adam", optim__learning_rate=3e-3,
                batch_size=128, num_epochs=60)
  out += [Recipe("rps_tuned", tuned, (B5_AVG,), note="issue 12's rps_tuned: avg, Adam 3e-3, b128, 60 ep"),
          Recipe("rps_tuned_tta", tuned, (B5_AVG,), tta=True, note="rps_tuned + TTA"),
          Recipe("rps_tuned_b4b5", tuned, (B5_AVG, B4_AVG), note="rps_tuned on block4 + block5 avg"),
          Recipe("rps_tuned_ens5", tuned, (B5_AVG,), ensemble=5, note="rps_tuned, 5 heads")]
  return {r.name: r for r in out}
