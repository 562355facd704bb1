"""The timing harness: timed runs, round-robin rounds within a time budget, paired ratios.

Framework-free (no JAX, no Keras): every function takes `block(result)`, which waits for the
work a call started (jax.block_until_ready for JAX, np.asarray for the Keras worker, whose calls
return host values), so the JAX figures and the Keras worker time themselves the same way.
"""

import statistics
import time
from typing import Callable, Optional

MIN_SECONDS = 1.0  # a timed run repeats its `steps` calls until it lasted this long
SETTLE_MAX_SECONDS = 5.0  # calls faster than this get one untimed call before each timed run
MIN_ROUNDS, MAX_ROUNDS = 3, 50  # with a time budget (--repeats=0): rounds of every figure
BUDGET_SECONDS = 60.0  # default budget of the timed rounds (the Keras peers run inside them)


def time_once(call, steps: int, images: int, min_seconds: float = MIN_SECONDS, *,
              block: Callable) -> float:
  """images/s of `steps` calls (blocking at the end), repeated until min_seconds have passed:
  a fast figure is then not one short, noisy sample. `block(result)` waits for the work."""
  t0 = time.perf_counter()
  calls = 0
  while True:
    out = None
    for _ in range(steps):
      out = call()
    block(out)
    calls += steps
    elapsed = time.perf_counter() - t0
    if elapsed >= min_seconds:
      return calls * images / elapsed


def more_rounds(done: int, repeats: int, budget_seconds: float, elapsed: float) -> bool:
  """Fixed count (repeats > 0), or by time: at least MIN_ROUNDS rounds, then more while the
  next round (as long as the mean round so far) still ends within budget_seconds."""
  if repeats > 0:
    return done < repeats
  if done < MIN_ROUNDS:
    return True
  return done < MAX_ROUNDS and elapsed * (done + 1) / done <= budget_seconds


def median_rate(call: Callable[[], object], images_per_call: int, *, steps: int, repeats: int,
                warmup: int, block: Callable,
                min_seconds: float = MIN_SECONDS) -> tuple[float, list[float]]:
  """(median images/s, images/s of each repeat): `call()` returns something to block on."""
  rates = interleaved({"x": (call, images_per_call)}, steps=steps, repeats=repeats,
                      warmup=warmup, block=block, min_seconds=min_seconds)["x"]
  return statistics.median(rates), rates


def interleaved(runners: dict, *, steps: int, repeats: int, warmup: int, block: Callable,
                min_seconds: float = MIN_SECONDS, budget_seconds: float = BUDGET_SECONDS,
                peers: Optional[dict] = None, log: Callable[[str], None] = lambda s: None) -> dict:
  """{name: [images/s per repeat]}: every runner once per round, round-robin; `repeats` rounds,
  or (repeats=0) as many as fit in budget_seconds (see `more_rounds`), logging each round.
  peers: {name: KerasPeer}; each times one round of its figures after ours in every round
  (rates '<name>_train', '<name>_forward').

  On a shared machine the load drifts; interleaving exposes every figure to the same drift, so
  ratios between figures (taken per round, see `paired_ratio`) stay meaningful.
  runners: {name: (call, images per call)}; call() returns something to block on.
  """
  per_call = {}
  for name, (call, _) in runners.items():
    per_call[name] = float("inf")
    for _ in range(warmup):
      t0 = time.perf_counter()
      block(call())
      per_call[name] = time.perf_counter() - t0
  rates = {name: [] for name in runners}
  peers = peers or {}
  for name in peers:
    rates[f"{name}_train"], rates[f"{name}_forward"] = [], []
  t0, done = time.perf_counter(), 0
  while more_rounds(done, repeats, budget_seconds, time.perf_counter() - t0):
    for name, (call, images) in runners.items():
      if per_call[name] < SETTLE_MAX_SECONDS:  # switching figures costs (allocations, caches):
        block(call())                          # one untimed call first, unless that is too dear
      rates[name].append(time_once(call, steps, images, min_seconds, block=block))
    for name, peer in peers.items():
      for figure, rate in peer.round().items():
        rates[f"{name}_{figure}"].append(rate)
    done += 1
    log(f"  round {done} ({time.perf_counter() - t0:.0f}s): " +
        ", ".join(f"{k} {v[-1]:,.1f}" for k, v in rates.items()) + " img/s")
  return rates


def paired_ratio(fast: list, slow: list) -> Optional[float]:
  """Median over rounds of fast[r] / slow[r] (images/s): how many times slower `slow` is."""
  if not fast or not slow:
    return None
  return statistics.median(f / s for f, s in zip(fast, slow))


def ratio(a, b) -> Optional[float]:
  """a / b, None when either is missing (or b is 0)."""
  return None if a is None or b is None or not b else a / b
