"""Check a run's config before any work: unknown keys, wrong types, impossible values.

Every problem is reported at once, each naming its key (`config.optim.learning_rate`) and
what would fix it, so a typo in a recipe or on the command line costs one try, not a run.
"""

import difflib
import math
import re
from typing import Optional

import ml_collections

from rpsflax import augment, config_base, data_files, models, optim, preprocess
from rpsflax.models import heads
from rpsflax.errors import ConfigError


# Keys that may be None: the value is then found at run time (here: from the data's classes).
NULLABLE = ("config.head.num_classes",)


def min_image_size(model_name: str) -> int:
  """Smallest input side the backbone accepts (every pool must still see at least 1 pixel)."""
  spec = models.REGISTRY.get(model_name)
  return spec.min_size if spec else 1


def _unknown_and_types(cfg, base, prefix, problems):
  for key, value in cfg.items():
    path = f"{prefix}.{key}"
    if key not in base:
      close = difflib.get_close_matches(key, list(base.keys()), n=1)
      hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
      problems.append(f"{path}: unknown key{hint}")
      continue
    ref = base[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        problems.append(f"{path}: expected a group of settings, got {type(value).__name__}")
      else:
        _unknown_and_types(value, ref, path, problems)
    elif value is None and path in NULLABLE:
      continue
    elif ref is not None and not _same_kind(value, ref):
      problems.append(f"{path}: expected {type(ref).__name__}, got {type(value).__name__} "
                      f"({value!r})")


def _same_kind(value, ref) -> bool:
  if isinstance(ref, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(ref, bool)
  if isinstance(ref, float):
    return isinstance(value, (int, float))
  if isinstance(ref, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(ref))


def choices(config) -> dict[str, tuple]:
  """Each key whose values form a fixed set -> that set, from the module that owns it: the check
  and --show_config (`describe`) both read it. model.alpha's set is the backbone's widths."""
  out = {"model.name": models.BACKBONES, "model.dtype": models.DTYPES,
         "head.pooling": heads.POOLINGS, "head.hidden_activation": tuple(heads.ACTIVATIONS),
         "preprocess": tuple(preprocess.PREPROCESSORS), "optim.name": optim.OPTIMIZERS,
         "augment.fill_mode": augment.FILL_MODES,
         "data.resize_method": tuple(data_files.RESIZE_METHODS),
         "data.decoder": data_files.DECODERS, "data.device_cache": data_files.DEVICE_CACHE_MODES}
  spec = models.REGISTRY.get(config.model.name)
  if spec and spec.alphas:  # a backbone with widths
    out["model.alpha"] = spec.alphas
  return out


def _check_patterns(problems, key, patterns):
  for p in patterns:
    try:
      re.compile(p)
    except (re.error, TypeError) as e:
      problems.append(f"{key}: pattern {p!r} is not a valid regex ({e})")


def check_config(config) -> None:
  """Raise ConfigError listing every problem in `config`, or return None."""
  problems: list[str] = []
  _unknown_and_types(config, config_base.get_config(), "config", problems)
  if problems:  # value checks below assume the known keys and types
    raise ConfigError(_message(problems))

  c = config
  values = _leaves(c)
  for key, allowed in choices(c).items():
    if values[key] not in allowed:
      problems.append(f"config.{key}={values[key]!r}: use one of "
                      f"{', '.join(map(repr, allowed))}")

  for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps"):
    if c[key] < 1:
      problems.append(f"config.{key}={c[key]}: must be at least 1")
  if c.head.num_classes is not None and c.head.num_classes < 1:
    problems.append(f"config.head.num_classes={c.head.num_classes}: must be at least 1 "
                    "(1 = sigmoid output for two classes)")
  for key in ("dropout", "hidden_dropout"):
    if not 0.0 <= c.head[key] < 1.0:
      problems.append(f"config.head.{key}={c.head[key]}: must be in [0, 1)")
  if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in c.head.hidden):
    problems.append(f"config.head.hidden={tuple(c.head.hidden)}: widths must be whole numbers, "
                    "at least 1, e.g. --config.head.hidden='(256,)'")

  if not 0 < c.optim.learning_rate < math.inf:
    problems.append(f"config.optim.learning_rate={c.optim.learning_rate}: must be positive "
                    "and finite")
  for key in ("rho", "momentum"):
    if not 0.0 <= c.optim[key] < 1.0:
      problems.append(f"config.optim.{key}={c.optim[key]}: must be in [0, 1)")
  if not 0.0 <= c.optim.weight_decay < math.inf:
    problems.append(f"config.optim.weight_decay={c.optim.weight_decay}: must be 0 or more")
  if not 0.0 <= c.label_smoothing < 1.0:
    problems.append(f"config.label_smoothing={c.label_smoothing}: must be in [0, 1)")
  if not 0.0 <= c.mixup_alpha < math.inf:
    problems.append(f"config.mixup_alpha={c.mixup_alpha}: must be 0 (off) or more")
  if not c.optim.epsilon > 0:
    problems.append(f"config.optim.epsilon={c.optim.epsilon}: must be positive")
  _check_patterns(problems, "config.trainable", c.trainable)
  for i, group in enumerate(c.lr_groups):
    if not (isinstance(group, (tuple, list)) and len(group) == 2):
      problems.append(f"config.lr_groups[{i}]={group!r}: use (pattern, learning_rate) pairs")
      continue
    _check_patterns(problems, f"config.lr_groups[{i}]", [group[0]])
    if not isinstance(group[1], (int, float)) or not 0 < group[1] < math.inf:
      problems.append(f"config.lr_groups[{i}] learning rate {group[1]!r}: must be positive")
  if not c.trainable and not c.lr_groups:
    problems.append("config.trainable: nothing is trainable; name at least one pattern, "
                    "e.g. ('head/.*',)")

  smallest = min_image_size(c.model.name)
  if c.data.image_size < smallest:
    problems.append(f"config.data.image_size={c.data.image_size}: too small for "
                    f"config.model.name={c.model.name!r}, which needs at least {smallest}")
  if not 0.0 <= c.data.val_fraction < 1.0:
    problems.append(f"config.data.val_fraction={c.data.val_fraction}: must be in [0, 1)")
  if c.data.holdout < 0:
    problems.append(f"config.data.holdout={c.data.holdout}: must be 0 or more")
  max_pixels = c.data.max_image_pixels
  if not 1 <= max_pixels <= data_files.MAX_IMAGE_PIXELS_CEILING:
    problems.append(f"config.data.max_image_pixels={max_pixels}: must be in [1, "
                    f"{data_files.MAX_IMAGE_PIXELS_CEILING}] (above that PIL refuses any image "
                    "as a decompression bomb)")

  for key in ("rotation_range", "shear_range", "zoom_range", "width_shift_range",
              "height_shift_range"):
    if c.augment[key] < 0:
      problems.append(f"config.augment.{key}={c.augment[key]}: must be 0 or more")
  if c.augment.zoom_range >= 1:
    problems.append(f"config.augment.zoom_range={c.augment.zoom_range}: must be below 1 "
                    "(zoom is drawn from [1 - z, 1 + z])")
  if problems:
    raise ConfigError(_message(problems))


def unknown_key(dotted: str) -> Optional[str]:
  """None when `dotted` ('optim.learning_rate') names a config field, else one line naming the
  first unknown part and the closest known key: what a --config.KEY=VALUE typo gets."""
  node, path = config_base.get_config(), "config"
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{path}.{part}: unknown key ({path} is a single setting, not a group)"
    if part not in node:
      close = difflib.get_close_matches(part, list(node.keys()), n=1)
      hint = f" (did you mean {path}.{close[0]}?)" if close else ""
      return f"{path}.{part}: unknown key{hint}"
    node, path = node[part], f"{path}.{part}"
  return None


def describe(config) -> str:
  """Every key of `config` with its value and its meaning (config_base.MEANINGS), one a line, in
  the base config's order: what `python -m rpsflax.main --config=... --show_config` prints."""
  values, allowed = _leaves(config), choices(config)
  keys = [k for k in config_base.MEANINGS if k in values] + sorted(set(values) - set(config_base.MEANINGS))
  shown = {k: f"{k} = {values[k]!r}" for k in keys}
  width = min(48, max(map(len, shown.values())))

  def meaning(k):
    text = config_base.MEANINGS.get(k, "(no description)")
    names = [repr(v) for v in allowed.get(k, ())]
    if names and not all(n in text for n in names):  # the allowed values, unless it names them
      text += f" [one of {', '.join(names)}]"
    return text
  return "\n".join(f"{shown[k].ljust(width)}  # {meaning(k)}" for k in keys)


def _leaves(config, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


SHOW_CONFIG_HINT = ("Every key, its value and meaning: python -m rpsflax.main "
                    "--config=configs/rps.py --show_config")


def _message(problems: list[str]) -> str:
  lines = "\n".join(f"  - {p}" for p in problems)
  return (f"invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{lines}\n"
          "Fix the recipe file or the --config.<key>=<value> flag named above. "
          + SHOW_CONFIG_HINT)
