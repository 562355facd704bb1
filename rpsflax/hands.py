"""Which hand an RPS image shows, from its file name, and folds that keep each hand in one place.

The Rock-Paper-Scissors training set names every frame after the hand (person and model) that
made it: `paper01-000.png`, `rock05ck01-012.png`, `rock07-k03-005.png`, `testscissors02-039.png`.
The frame number is the last dash-separated digit run before the extension; everything before
it is the hand. Frames of one hand are near-duplicates, so a validation set that shares hands
with training measures memory, not generalisation: split by hand (`hand_folds`).
"""

import os
import re
from typing import Sequence

import numpy as np

from rpsflax import data_files
from rpsflax.errors import DataError

_FRAME = re.compile(r"^(?P<hand>.+?)-(?P<frame>\d+)$")


def hand_of(path: str) -> str:
  """'paper01' for '.../paper01-000.png', 'rock07-k03' for 'rock07-k03-005.png'. A name
  without a trailing '-NNN' frame number is its own hand (the whole stem)."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  m = _FRAME.match(stem)
  return m.group("hand") if m else stem


def hand_folds(hands: Sequence[str], labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  """fold [n] in 0..k-1 of each example: whole hands per fold, every class in every fold.

  Each class's hands are shuffled (seeded by (seed, class)) and dealt round-robin to the folds (each class starting one fold further),
  so a fold holds about 1/k of each class's hands. A hand whose frames carry two labels is kept
  together under its most common one. Needs at least k hands of every class.
  """
  hands = np.asarray(hands, dtype=object)
  labels = np.asarray(labels)
  names = sorted(set(hands))
  hand_label = {}
  for h in names:
    values, counts = np.unique(labels[hands == h], return_counts=True)
    hand_label[h] = int(values[np.argmax(counts)])
  fold_of = {}
  for c in sorted(set(hand_label.values())):
    of_class = [h for h in names if hand_label[h] == c]
    if len(of_class) < k:
      raise DataError(f"{k} folds need at least {k} hands of every class; class {c} has "
                      f"{len(of_class)} ({', '.join(of_class)}): use --folds={len(of_class)} or fewer")
    order = data_files.seeded_rng(seed, 6101, c).permutation(len(of_class))
    for i, j in enumerate(order):
      fold_of[of_class[j]] = (i + c) % k  # start each class one fold on: sizes stay even
  return np.array([fold_of[h] for h in hands], np.int64)
