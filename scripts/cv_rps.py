#!/usr/bin/env python
"""Leave-hands-out cross-validation of RPS head recipes on cached VGG16 features.

  python scripts/cv_rps.py --data_dir=../shared/data/rps_large/train \
      --weights=../shared/weights/vgg16_mri_notop.h5 --views=4 --folds=7 \
      --cache_dir=/tmp/rpsflax_cv_cache --out=/tmp/cv_rps.json

Images are grouped by hand (file name, rpsflax/hands.py) into --folds folds with every class in
every fold. The backbone runs once per image and view (--views: the clean image plus views-1
augmented copies with configs/rps.py's augmentation), cached under --cache_dir (a rerun reads
it); then each recipe (rpsflax/cv_recipes.py) trains a fresh head per fold, seconds each.
Writes --out (JSON: folds, per recipe and fold the accuracy of every epoch, the summary) and
prints a markdown table: mean and sd (ddof=1) over folds of the final and last-five-epoch mean
held-out accuracy, and the confusion matrix summed over folds.
"""

import argparse
import json
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rpsflax import crossval, cv_features, cv_recipes, hands  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True, help="DIR/<class>/*.png, hands in the file names")
  p.add_argument("--weights", default="imagenet", help="config.weights of the backbone")
  p.add_argument("--config", default="rps", help="configs/<name>.py for the feature pass")
  p.add_argument("--configs_dir", default=str(REPO / "configs"))
  p.add_argument("--image_size", type=int, default=0, help="0 = the config's")
  p.add_argument("--views", type=int, default=4, help="clean + views-1 augmented, cached")
  p.add_argument("--folds", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache_dir", default="/tmp/rpsflax_cv_cache")
  p.add_argument("--recipes", default="", help="comma-separated names (default: all)")
  p.add_argument("--num_epochs", type=int, default=0, help="> 0: override every recipe's")
  p.add_argument("--baseline", default="tutorial", help="recipe the others are compared with")
  p.add_argument("--out", default="", help="JSON results (default: print only)")
  a = p.parse_args(argv)

  config = cv_recipes.load_config(a.configs_dir, a.config)
  config.weights = a.weights
  if a.image_size:
    config.data.image_size = a.image_size
  t0 = time.time()
  paths, labels, class_names, images = cv_features.load_folder(
      a.data_dir, config.data.image_size, config.data.resize_method)
  hand = [hands.hand_of(x) for x in paths]
  folds = hands.hand_folds(hand, labels, a.folds, a.seed)
  print(f"{len(paths)} images, {len(set(hand))} hands, {a.folds} folds", flush=True)
  taps = cv_features.taps_for(config)
  cache = cv_features.build_or_load(config, paths, labels, images, a.views, taps, a.cache_dir)
  t_feat = time.time() - t0

  table = cv_recipes.recipes(a.configs_dir)
  names = [n for n in a.recipes.split(",") if n] or list(table)
  results = []
  for name in names:
    recipe = table[name]
    if a.num_epochs:
      recipe.config.num_epochs = a.num_epochs
    t = time.time()
    r = crossval.run_recipe(recipe, cache, taps, labels, folds, len(class_names), a.seed)
    r["seconds"] = round(time.time() - t, 1)
    results.append(r)
    print(f"{name}: final {r['final_mean']:.3f} ± {r['final_sd']:.3f}, last5 "
          f"{r['last5_mean']:.3f} ± {r['last5_sd']:.3f} ({r['seconds']} s)", flush=True)
  crossval.compare(results, a.baseline)
  print(crossval.table(results))
  if a.out:
    fold_hands = {int(f): sorted({h for h, g in zip(hand, folds) if g == f})
                  for f in sorted(set(folds.tolist()))}
    doc = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.node() + " " + platform.processor(), "data_dir": a.data_dir,
           "weights": a.weights, "class_names": class_names, "views": a.views, "folds": fold_hands,
           "feature_seconds": round(t_feat, 1),  # this run's: ~0 beyond decoding when cached
           "feature_cache": {"dir": a.cache_dir, "taps": list(taps),
                             "view_seconds": cv_features.cache_seconds(a.cache_dir, a.views)},
           "recipes": results}
    pathlib.Path(a.out).write_text(json.dumps(doc, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
