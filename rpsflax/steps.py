"""The pure steps: TrainState, the train/eval/predict functions, and their jit-compiled forms.

- `make_train_step` / `make_eval_step` build pure functions of (state, batch[, rng]); they run
  augmentation and preprocessing on device (`prepare_images`) and return metrics as on-device
  sums. The epoch loop (rpsflax.train), cached features (rpsflax.features), evaluation and the
  benchmark all call these, so every path computes exactly the same thing.
- Freezing is free: the step splits the parameters by label (`rpsflax.optim`) and differentiates
  only the trainable ones; frozen ones are closed over as constants (so a frozen backbone costs
  one forward pass) and carried into the new state untouched (bit-identical).
- Sharding: batches are sharded on their first axis over the 1-D 'data' mesh, the state is
  replicated, and `jit` inserts the cross-device reductions (`compile_steps`).
- Determinism: every random number of step s comes from fold_in(train_rng, s), so a run resumed
  at any step replays exactly.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh

from rpsflax import augment, models, optim, preprocess
from rpsflax.sharding import abstract_like, data_sharding, replicated

_NO_STEP = np.iinfo(np.int32).max  # "no non-finite step seen" in the min-accumulated metric



@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. The optimizer itself is rebuilt from the config
  (`optim.create_optimizer`), so a checkpoint is plain arrays."""
  step: jax.Array          # int32 scalar: number of optimizer steps taken
  params: Any              # the model's 'params' collection
  opt_state: Any           # optax.multi_transform state (no entries for frozen params)
  # BatchNorm moving statistics ('batch_stats'; {} for models without BN). Never differentiated;
  # a train step updates them only for BN layers in training mode (models.bn_training_layers).
  batch_stats: Any = dataclasses.field(default_factory=dict)


def model_variables(params, batch_stats) -> dict:
  """The variables `model.apply` takes: params, plus batch_stats when the model has BN."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}

# ---------------------------------------------------------------------------------------------
# State


def init_variables(config, model, rng) -> dict:
  """{'params', 'batch_stats'} of a random init ('batch_stats' {} for models without BN) for
  `config.data.image_size` inputs (jit-compiled: op-by-op init of VGG16 is slower on a CPU)."""
  size = config.data.image_size
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  v = jax.jit(lambda rng, x: model.init(rng, x, train=False))(rng, x)
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

def abstract_params(config, model) -> dict:
  """Shapes and dtypes of `init_variables`'s params (nothing computed)."""
  size = config.data.image_size
  return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False)["params"],
                        jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def create_train_state(config, model, rng=None, params=None, batch_stats=None) -> TrainState:
  """A fresh TrainState; `params` and `batch_stats` (e.g. with loaded weights) or random ones
  from `rng`."""
  if params is None:
    if rng is None:
      raise ValueError("create_train_state: pass rng or params")
    v = init_variables(config, model, rng)
    params, batch_stats = v["params"], v["batch_stats"]
  tx = optim.create_optimizer(config, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats=batch_stats or {})

def abstract_train_state(config, model, sharding=None) -> TrainState:
  """Shapes and dtypes of `create_train_state` (nothing computed): a checkpoint restore target."""
  abstract = jax.eval_shape(lambda rng: create_train_state(config, model, rng),
                            jax.random.PRNGKey(0))
  return abstract_like(abstract, sharding) if sharding is not None else abstract

# ---------------------------------------------------------------------------------------------
# Loss, metrics and the steps


def per_example_loss(logits, labels, num_classes: int):
  """(loss [B], predicted class [B]): softmax cross-entropy, or sigmoid BCE for num_classes == 1.

  Computed from logits (Keras computes from probabilities, clipped at 1e-7; the same loss
  wherever that clip does not bite, and stable where it would).
  """
  labels = labels.astype(jnp.int32)
  if num_classes == 1:
    z = logits[:, 0]
    loss = optax.sigmoid_binary_cross_entropy(z, labels.astype(jnp.float32))
    pred = (z > 0).astype(jnp.int32)  # sigmoid(z) > 0.5, Keras' binary accuracy threshold
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return loss, pred

def soft_targets(labels, num_classes: int, smoothing: float):
  """float32 targets [B, C] (or [B] for a sigmoid head): (1 - e) * one_hot + e / classes."""
  classes = max(2, num_classes)
  if num_classes == 1:
    return labels.astype(jnp.float32) * (1.0 - smoothing) + smoothing / classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / classes


def soft_target_loss(logits, targets, num_classes: int):
  """Per-example cross-entropy against soft targets (`soft_targets`, possibly mixed)."""
  if num_classes == 1:
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
  return optax.softmax_cross_entropy(logits, targets)


def mix_batch(rng, x, targets, mask, alpha: float):
  """Mixup: (x, targets) blended with a shuffled copy of the batch, lambda ~ Beta(alpha, alpha)
  once per batch. Rows whose partner is padding keep their own example (lambda 1)."""
  perm_rng, lam_rng = jax.random.split(rng)
  perm = jax.random.permutation(perm_rng, x.shape[0])
  lam = jax.random.beta(lam_rng, alpha, alpha)
  lam = jnp.where(mask[perm], lam, 1.0)
  lx = lam.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  lt = lam.reshape((-1,) + (1,) * (targets.ndim - 1))
  return lx * x + (1 - lx) * x[perm], lt * targets + (1 - lt) * targets[perm]


def num_outputs(config) -> int:
  """Rows/columns of the confusion matrix: 2 for a sigmoid head."""
  return max(2, int(config.head.num_classes))

def prepare_images(config, images, rng=None):
  """uint8 batch -> the model's input: augmentation (when rng is given and enabled), then the
  config's preprocessing, in the compute dtype. Shared by the steps, cached features and the
  benchmark so all three see exactly the same input."""
  dtype = models.compute_dtype(config)
  if rng is not None and config.augment.enabled:
    images = augment.augment_batch(rng, images, config.augment)
  return preprocess.get_preprocessor(config.preprocess)(images, dtype=dtype)

def make_train_step(config, model, *, on_features: bool = False) -> Callable:
  """train_step(state, batch, rng) -> (state, metrics), pure; jit it (see `compile_steps`).

  `rng` is the run's training key; the step folds in state.step, so it is the same every call.
  metrics: loss_sum (float32), correct, count (int32, real examples only), nonfinite (1 when the
  loss or gradient norm is NaN/inf) and first_nonfinite_step.
  on_features=True: batch['image'] holds cached backbone features (rpsflax.features) and only
  the head runs (no augmentation, no preprocessing).
  """
  config = config.copy_and_resolve_references()  # read at trace time: later edits must not leak in
  num_classes = int(config.head.num_classes)
  # BN layers in training mode update their moving statistics: only then is batch_stats mutable
  # (a frozen BN backbone stays one forward pass that writes nothing).
  bn_updates = bool(models.bn_training_layers(config)) and not on_features
  smoothing = float(config.label_smoothing)
  mixup = float(config.mixup_alpha)

  def train_step(state: TrainState, batch, rng):
    # What trains, and how: labels and optimizer are pure functions of (config, param
    # structure), built at trace time.
    label_tree = optim.param_labels(state.params, config)
    tx = optim.create_optimizer(config, state.params)
    trainable, frozen = optim.split_by_label(state.params, label_tree)

    step_rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(step_rng)
    x = batch["image"] if on_features else prepare_images(config, batch["image"], aug_rng)
    labels = batch["label"]
    mask = batch["mask"]
    maskf = mask.astype(jnp.float32)
    targets = None  # hard labels (the exact Keras loss) unless smoothing or mixup asks otherwise
    if smoothing or mixup:
      targets = soft_targets(labels.astype(jnp.int32), num_classes, smoothing)
      if mixup:  # its own stream: the augmentation and dropout draws stay as without mixup
        x, targets = mix_batch(jax.random.fold_in(step_rng, 2), x, targets, mask, mixup)

    def loss_fn(trainable_params):
      params = optim.merge(trainable_params, frozen)
      variables = model_variables(params, state.batch_stats)
      new_stats = state.batch_stats
      if bn_updates:
        logits, updated = model.apply(variables, x, train=True, rngs={"dropout": dropout_rng},
                                      mutable=["batch_stats"])
        new_stats = updated["batch_stats"]
      else:
        logits = model.apply(variables, x, train=True, rngs={"dropout": dropout_rng},
                             method="classify" if on_features else None)
      loss, pred = per_example_loss(logits, labels, num_classes)
      if targets is not None:
        loss = soft_target_loss(logits, targets, num_classes)
      loss_sum = jnp.sum(loss * maskf)
      count = jnp.sum(maskf)
      return loss_sum / jnp.maximum(count, 1.0), (loss_sum, pred, new_stats)

    (loss, (loss_sum, pred, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable)

    # multi_transform wants the full tree; the zeros for frozen leaves feed set_to_zero and are
    # dead code after it, so XLA drops them.
    zeros = {k: jnp.zeros_like(v) for k, v in frozen.items()}
    updates, opt_state = tx.update(optim.merge(grads, zeros), state.opt_state, state.params)
    flat_updates = traverse_util.flatten_dict(updates)
    new_trainable = {k: (v + flat_updates[k]).astype(v.dtype) for k, v in trainable.items()}
    new_params = optim.merge(new_trainable, frozen)  # frozen leaves: the very same arrays

    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    metrics = {
        "loss_sum": loss_sum,
        "correct": jnp.sum((pred == labels.astype(jnp.int32)) & mask).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "nonfinite": (~finite).astype(jnp.int32),
        "first_nonfinite_step": jnp.where(finite, _NO_STEP, state.step).astype(jnp.int32),
    }
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state,
                              batch_stats=new_stats)
    return new_state, metrics

  return train_step

def make_eval_step(config, model, *, on_features: bool = False) -> Callable:
  """eval_step(state, batch) -> metrics: loss_sum, correct, count and confusion [C, C] (true, pred).

  `state` is anything with `.params` (a TrainState, or a restored one without optimizer state).
  on_features=True: batch['image'] holds cached backbone features; only the head runs.
  """
  config = config.copy_and_resolve_references()
  num_classes = int(config.head.num_classes)
  c = num_outputs(config)

  def eval_step(state, batch):
    x = batch["image"] if on_features else prepare_images(config, batch["image"])
    variables = model_variables(state.params, getattr(state, "batch_stats", {}))
    logits = model.apply(variables, x, train=False, method="classify" if on_features else None)
    labels = batch["label"].astype(jnp.int32)
    mask = batch["mask"]
    loss, pred = per_example_loss(logits, labels, num_classes)
    true_1h = jax.nn.one_hot(labels, c, dtype=jnp.int32) * mask[:, None].astype(jnp.int32)
    pred_1h = jax.nn.one_hot(pred, c, dtype=jnp.int32)
    return {
        "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0)),
        "correct": jnp.sum((pred == labels) & mask).astype(jnp.int32),
        "count": jnp.sum(mask).astype(jnp.int32),
        "confusion": jnp.einsum("bi,bj->ij", true_1h, pred_1h),
    }

  return eval_step

def make_predict_fn(config, model, batch_stats=None) -> Callable:
  """predict(params, images uint8 [B,H,W,3]) -> probabilities [B, C] over the class names.

  A sigmoid head gives [1 - p, p] so column i is always class i. `batch_stats`: the BatchNorm
  statistics of a BN model's state, closed over.
  """
  config = config.copy_and_resolve_references()
  stats = batch_stats or {}

  def predict(params, images):
    logits = model.apply(model_variables(params, stats), prepare_images(config, images),
                         train=False)
    if config.head.num_classes == 1:
      p = jax.nn.sigmoid(logits[:, 0])
      return jnp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  return jax.jit(predict)

def combine_metrics(acc, new):
  """Accumulate step metrics on device: sums, and min for first_* keys."""
  if acc is None:
    return new
  return {k: (jnp.minimum(acc[k], v) if k.startswith("first_") else acc[k] + v)
          for k, v in new.items()}

accumulate = jax.jit(combine_metrics)

def zero_metrics(classes: int = 0, *, train: bool) -> dict:
  """The identity of `combine_metrics` for the train (or eval) step's metrics: zero sums, and
  "no non-finite step" for first_nonfinite_step; the eval step's confusion is [classes, classes]
  (`num_outputs`). Loops that sum on device start from it."""
  out = {"loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
         "count": jnp.zeros((), jnp.int32)}
  if train:
    out.update(nonfinite=jnp.zeros((), jnp.int32),
               first_nonfinite_step=jnp.full((), _NO_STEP, jnp.int32))
  else:
    out["confusion"] = jnp.zeros((classes, classes), jnp.int32)
  return out

def summarize(sums: dict) -> dict:
  """Host-side means from metric sums: loss, accuracy, num_examples."""
  count = int(sums["count"])
  return {"loss": float(sums["loss_sum"]) / count if count else float("nan"),
          "accuracy": float(sums["correct"]) / count if count else float("nan"),
          "num_examples": count}

# ---------------------------------------------------------------------------------------------
# Compiled for a mesh


@dataclasses.dataclass(frozen=True)
class Steps:
  """The steps of one run, built once (`compile_steps`) and passed where needed: jit-compiled,
  and the pure functions under them for loops that compile their own (rpsflax.resident)."""
  train: Callable      # (state, batch, rng) -> (state, metrics); the state is donated
  eval: Callable       # (state, batch) -> metric sums and confusion
  on_features: bool    # whether batch['image'] holds cached backbone features (head only)
  pure_train: Callable  # make_train_step's function that `train` compiles
  pure_eval: Callable   # make_eval_step's function that `eval` compiles
  classes: int         # rows and columns of the eval step's confusion matrix (`num_outputs`)


def compile_steps(config, model, mesh: Mesh, *, on_features: bool = False) -> Steps:
  """The train and eval steps for `mesh`: state replicated (and donated), batch sharded on 'data'.

  on_features=True: the head-only steps that train on cached features (rpsflax.features).
  """
  repl, data = replicated(mesh), data_sharding(mesh)
  train_step = make_train_step(config, model, on_features=on_features)
  eval_step = make_eval_step(config, model, on_features=on_features)
  train = jax.jit(train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                  donate_argnums=(0,))
  evaluate = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
  return Steps(train=train, eval=evaluate, on_features=on_features, pure_train=train_step,
               pure_eval=eval_step, classes=num_outputs(config))
