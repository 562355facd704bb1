"""Cross-validation of head recipes over cached features: K folds of whole hands, every class in
every fold (rpsflax/hands.py), each recipe's head trained from scratch on the other folds.

The head trains with the project's own pure step (`steps.make_train_step(on_features=True)`):
the epoch order (`data_files.epoch_order`), batches (`data_files.batch_index_matrix`) and the
view drawn per image per epoch (`features.view_choice`) are those of a cached-features run, so
a fold is the run `python -m rpsflax.main` would make on that split. Every epoch the held-out
hands are scored (their clean view, or with test-time augmentation the mean probability over
all their cached views).

Model/step code: no TensorFlow here.
"""

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import data_files, features, models, steps


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A head recipe: its config (head, optimizer, batch, epochs, regularisers) and what it reads."""
  name: str
  config: object                 # ml_collections.ConfigDict, as a configs/*.py gives
  taps: tuple[str, ...]          # cached taps forming the head's input, concatenated
  views: int = 0                 # training views drawn from (0 = every cached view)
  tta: bool = False              # evaluate on the mean probability over all cached views
  ensemble: int = 1              # heads (seeds seed, seed+1, ...) whose probabilities are averaged
  note: str = ""


def select(cache: np.ndarray, cache_taps: Sequence[str], taps: Sequence[str]) -> np.ndarray:
  """[views, n, 1, 1, C]: the columns of `taps` in a [views, n, sum C] cache of `cache_taps`
  (equal widths), as a 1x1 map the head's global pooling passes through unchanged."""
  width = cache.shape[-1] // len(cache_taps)
  cols = [cache[..., cache_taps.index(t) * width:(cache_taps.index(t) + 1) * width] for t in taps]
  return np.concatenate(cols, axis=-1)[:, :, None, None, :]


@dataclasses.dataclass(frozen=True)
class HeadFns:
  """One recipe's model and jit-compiled functions, built once and shared by its folds."""
  config: object
  model: object
  train_step: object   # steps.make_train_step(on_features=True), jitted
  probs: object        # (params, features) -> softmax probabilities, jitted


def head_fns(config) -> HeadFns:
  config = config.copy_and_resolve_references()
  model = models.build_model(config)
  probs = jax.jit(lambda params, x: jax.nn.softmax(
      model.apply({"params": params}, x, train=False, method="classify"), axis=-1))
  return HeadFns(config, model, jax.jit(steps.make_train_step(config, model, on_features=True)),
                 probs)


def train_head(fns: HeadFns, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
               seed: int) -> np.ndarray:
  """Train a fresh head on features x_train [V, n, 1, 1, C] (one view per image per epoch) and
  return the held-out probabilities after every epoch: [epochs, V_eval, n_eval, classes]."""
  config, model, train_step, probs = fns.config, fns.model, fns.train_step, fns.probs
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_rng, jnp.asarray(x_train[0, :1]), method="classify")["params"]
  state = steps.create_train_state(config, model, params=params)
  views, n = x_train.shape[:2]
  eval_flat = jnp.asarray(x_eval.reshape((-1,) + x_eval.shape[2:]))
  out = []
  for epoch in range(int(config.num_epochs)):
    rows = data_files.batch_index_matrix(data_files.epoch_order(seed, epoch, n),
                                         int(config.batch_size))
    view = features.view_choice(seed, epoch, n, views)
    for row in rows:
      ok = row >= 0
      take = np.where(ok, row, 0)
      feats = x_train[view[take], take]
      feats[~ok] = 0
      batch = {"image": feats, "label": np.where(ok, y_train[take], 0).astype(np.int32),
               "mask": ok}
      state, _ = train_step(state, batch, train_rng)
    out.append(np.asarray(probs(state.params, eval_flat)).reshape(x_eval.shape[:2] + (-1,)))
  return np.stack(out)


def score(prob_history: np.ndarray, labels: np.ndarray, tta: bool, classes: int) -> dict:
  """Accuracy per epoch, final and last-five mean, and the final confusion [true, pred], from
  [epochs, V, n, C] probabilities (view 0 alone, or the mean over views with `tta`)."""
  p = prob_history.mean(axis=1) if tta else prob_history[:, 0]
  pred = p.argmax(-1)
  acc = (pred == labels[None]).mean(axis=1)
  confusion = np.zeros((classes, classes), np.int64)
  np.add.at(confusion, (labels, pred[-1]), 1)
  return {"accuracy": acc.tolist(), "final": float(acc[-1]),
          "last5": float(acc[-5:].mean()), "confusion": confusion.tolist()}


def run_recipe(recipe: Recipe, cache: np.ndarray, cache_taps: Sequence[str], labels: np.ndarray,
               folds: np.ndarray, classes: int, seed: int = 0,
               only_folds: Optional[Sequence[int]] = None) -> dict:
  """Every fold of `recipe`: per-fold scores, their mean and sd (ddof=1), summed confusion."""
  x = select(cache, cache_taps, recipe.taps)
  train_views = recipe.views or x.shape[0]
  fns = head_fns(recipe.config)
  per_fold = []
  for f in (range(int(folds.max()) + 1) if only_folds is None else only_folds):
    test = folds == f
    x_tr, y_tr = x[:train_views, ~test], labels[~test]
    x_ev = x[:, test] if recipe.tta else x[:1, test]
    history = sum(train_head(fns, x_tr, y_tr, x_ev, seed + j)
                  for j in range(recipe.ensemble)) / recipe.ensemble
    per_fold.append({"fold": int(f), "n": int(test.sum()),
                     **score(history, labels[test], recipe.tta, classes)})
  return summarize(recipe, per_fold, train_views)


def summarize(recipe: Recipe, per_fold: list, train_views: int) -> dict:
  final = np.array([r["final"] for r in per_fold])
  last5 = np.array([r["last5"] for r in per_fold])
  sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)
  return {"name": recipe.name, "note": recipe.note, "taps": list(recipe.taps),
          "train_views": int(train_views), "tta": recipe.tta, "ensemble": recipe.ensemble,
          "final_mean": float(final.mean()), "final_sd": sd(final),
          "last5_mean": float(last5.mean()), "last5_sd": sd(last5),
          "confusion": np.sum([r["confusion"] for r in per_fold], axis=0).tolist(),
          "per_fold": per_fold}


def compare(results: Sequence[dict], baseline: str) -> None:
  """Add to each result its per-fold difference from `baseline` (same folds: paired), as
  'vs_baseline': {final_mean, final_sd, last5_mean, last5_sd} (sd ddof=1), and whether its
  mean beats the baseline's by more than the baseline's sd over folds ('beats_by_1sd')."""
  base = next((r for r in results if r["name"] == baseline), None)
  if base is None:
    return
  for r in results:
    out = {"baseline": baseline}
    for key in ("final", "last5"):
      d = np.array([a[key] - b[key] for a, b in zip(r["per_fold"], base["per_fold"])])
      out[f"{key}_mean"] = float(d.mean())
      out[f"{key}_sd"] = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    r["vs_baseline"] = out
    r["beats_by_1sd"] = bool(r["final_mean"] - base["final_mean"] > base["final_sd"])


def table(results: Sequence[dict]) -> str:
  """A markdown table: one row per recipe."""
  lines = ["| recipe | final mean ± sd | last-5 mean ± sd | Δ final vs baseline (paired) | views "
           "| tta | heads | confusion (rows true, columns predicted) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    v = r.get("vs_baseline")
    delta = f"{v['final_mean']:+.3f} ± {v['final_sd']:.3f}" if v else "-"
    lines.append(f"| {r['name']} | {r['final_mean']:.3f} ± {r['final_sd']:.3f} | "
                 f"{r['last5_mean']:.3f} ± {r['last5_sd']:.3f} | {delta} | {r['train_views']} | "
                 f"{'yes' if r['tta'] else 'no'} | {r['ensemble']} | {r['confusion']} |")
  return "\n".join(lines)
