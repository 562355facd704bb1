"""Which parameters train, at which learning rate: config patterns -> labels -> optax.multi_transform.

Labels come from regexes over '/'-joined parameter paths ('backbone/block5_conv1/kernel'),
matched with `re.search` (anchor with ^ and $ for an exact match):
  - `config.lr_groups` ((pattern, lr), ...): label 'group_i', trained at its own rate
    (the first group that matches wins; a group pattern makes a parameter trainable);
  - `config.trainable` (patterns): label 'trainable', trained at `config.optim.learning_rate`;
  - everything else: 'frozen' -> `optax.set_to_zero()`. The training step also computes no
    gradient for frozen parameters (`rpsflax.steps.make_train_step`), so freezing is free.

Optimizers follow Keras 3 (the tutorials' framework):
  - rmsprop: v = rho*v + (1-rho)*g^2;  p -= lr*g / sqrt(v + eps), v starts at 0. Keras 3 puts
    epsilon INSIDE the square root (keras/src/optimizers/rmsprop.py: `sqrt(velocity + epsilon)`),
    which is optax.rmsprop(eps_in_sqrt=True, initial_scale=0). (tf.keras 2.11+ had it outside;
    Keras 3 and TF's raw ApplyRMSProp op have it inside.) Momentum > 0 accumulates the scaled
    step, m = momentum*m + lr*g/sqrt(v+eps), which is optax's trace after the learning-rate scale.
    Centered is not exposed (the tutorials do not use it).
  - adam: beta1=0.9, beta2=0.999, eps=config.optim.epsilon (Keras' 1e-7). Keras applies eps to
    the un-bias-corrected sqrt(v) (lr_t = lr*sqrt(1-b2^t)/(1-b1^t); m*lr_t/(sqrt(v)+eps)),
    optax to the corrected one; the two differ only in the size of eps' effect (~1e-7 relative).
  - sgd: Keras' momentum form (m = momentum*m - lr*g; p += m) equals optax.sgd(momentum).
"""

import re
import optax
from flax import traverse_util

from rpsflax.errors import ConfigError

FROZEN = "frozen"
TRAINABLE = "trainable"
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def path_str(path: tuple) -> str:
  """('backbone', 'block5_conv1', 'kernel') -> 'backbone/block5_conv1/kernel'."""
  return "/".join(str(p) for p in path)


def _match_path(path: tuple) -> str:
  # Patterns name paths inside the 'params' collection: drop that prefix if present.
  if path and path[0] == "params":
    path = path[1:]
  return path_str(path)


def _groups(config) -> list[tuple[str, float]]:
  groups = []
  for i, group in enumerate(config.lr_groups or ()):
    if not (isinstance(group, (tuple, list)) and len(group) == 2):
      raise ConfigError(f"config.lr_groups[{i}]={group!r}: use (pattern, learning_rate) pairs")
    groups.append((str(group[0]), float(group[1])))
  return groups


def is_trainable(path: str, config) -> bool:
  """Whether the parameter at '/'-joined `path` ('backbone/conv1_bn/scale') is trained: it
  matches a config.lr_groups or config.trainable pattern, as in param_labels."""
  patterns = [g[0] for g in _groups(config)] + list(config.trainable or ())
  return any(re.search(p, path) for p in patterns)


def param_labels(params, config):
  """Same-structure tree of labels: 'frozen', 'trainable' or 'group_i'.

  Raises ConfigError (a ValueError) naming `config.trainable` / `config.lr_groups` for a pattern that matches
  no parameter (a typo would otherwise silently freeze what the user meant to train), and when
  nothing at all is trainable.
  """
  flat = traverse_util.flatten_dict(params)
  trainable = [(p, re.compile(p)) for p in (config.trainable or ())]
  groups = [(p, re.compile(p), lr) for p, lr in _groups(config)]
  used_t = [False] * len(trainable)
  used_g = [False] * len(groups)
  labels = {}
  for path in flat:
    name = _match_path(path)
    label = FROZEN
    for i, (_, rx, _) in enumerate(groups):
      if rx.search(name):
        used_g[i] = True
        if label == FROZEN:
          label = f"group_{i}"
    for i, (_, rx) in enumerate(trainable):
      if rx.search(name):
        used_t[i] = True
        if label == FROZEN:
          label = TRAINABLE
    labels[path] = label
  examples = ", ".join(_match_path(p) for p in list(flat)[:3])
  for (pattern, _), used in zip(trainable, used_t):
    if not used:
      raise ConfigError(f"config.trainable: pattern {pattern!r} matches no parameter "
                       f"(paths look like {examples}, ...)")
  for i, ((pattern, _, _), used) in enumerate(zip(groups, used_g)):
    if not used:
      raise ConfigError(f"config.lr_groups[{i}]: pattern {pattern!r} matches no parameter "
                       f"(paths look like {examples}, ...)")
  if all(label == FROZEN for label in labels.values()):
    raise ConfigError("config.trainable / config.lr_groups: no parameter is trainable; "
                     "name at least one pattern, e.g. config.trainable=('head/.*',)")
  return traverse_util.unflatten_dict(labels)


def frozen_paths(params, config) -> list[tuple]:
  """Key paths of the parameters labelled frozen (never trained): what checkpoints leave out
  and write once per workdir (rpsflax/checkpoint.py). `params` may be abstract."""
  flat = traverse_util.flatten_dict(param_labels(params, config))
  return [path for path, label in flat.items() if label == FROZEN]


def learning_rates(config) -> dict[str, float]:
  """label -> learning rate for every non-frozen label."""
  rates = {TRAINABLE: float(config.optim.learning_rate)}
  for i, (_, lr) in enumerate(_groups(config)):
    rates[f"group_{i}"] = lr
  return rates


def make_base_optimizer(config, learning_rate: float) -> optax.GradientTransformation:
  """One optimizer of config.optim.name at `learning_rate`, with Keras' semantics (see above)."""
  o = config.optim
  if not learning_rate > 0:
    raise ConfigError(f"config.optim.learning_rate / config.lr_groups: learning rate "
                     f"{learning_rate} must be positive")
  wd = float(o.weight_decay)
  if wd:  # L2 through the gradient, before the optimizer's scaling (Keras' l2 regulariser / 2)
    return optax.chain(optax.add_decayed_weights(wd), _base_optimizer(o, learning_rate))
  return _base_optimizer(o, learning_rate)


def _base_optimizer(o, learning_rate: float) -> optax.GradientTransformation:
  if o.name == "rmsprop":
    return optax.rmsprop(learning_rate, decay=o.rho, eps=o.epsilon, initial_scale=0.0,
                         eps_in_sqrt=True, momentum=o.momentum or None)
  if o.name == "adam":
    return optax.adam(learning_rate, b1=0.9, b2=0.999, eps=o.epsilon)
  if o.name == "sgd":
    return optax.sgd(learning_rate, momentum=o.momentum or None)
  raise ConfigError(f"config.optim.name={o.name!r}: use one of {OPTIMIZERS}")


def create_optimizer(config, params) -> optax.GradientTransformation:
  """optax.multi_transform: set_to_zero for 'frozen', the configured optimizer for the rest.

  Only labels that occur get a transform, so frozen parameters hold no optimizer state.
  """
  labels = param_labels(params, config)
  used = set(traverse_util.flatten_dict(labels).values())
  rates = learning_rates(config)
  transforms = {FROZEN: optax.set_to_zero()}
  for label in sorted(used - {FROZEN}):
    transforms[label] = make_base_optimizer(config, rates[label])
  return optax.multi_transform(transforms, labels)


def split_by_label(params, labels) -> tuple[dict, dict]:
  """(trainable, frozen) flat dicts {path tuple: leaf}: what the step differentiates and what it doesn't."""
  flat_p = traverse_util.flatten_dict(params)
  flat_l = traverse_util.flatten_dict(labels)
  trainable = {k: v for k, v in flat_p.items() if flat_l[k] != FROZEN}
  frozen = {k: v for k, v in flat_p.items() if flat_l[k] == FROZEN}
  return trainable, frozen


def merge(trainable: dict, frozen: dict):
  """Inverse of split_by_label: one nested params tree."""
  return traverse_util.unflatten_dict({**trainable, **frozen})
