"""The base config every recipe in configs/ starts from, and a loader for sibling recipes.

Every field a researcher may change lives here with its default (`get_config`) and its one-line
meaning (`MEANINGS`, what `python -m rpsflax.main --config=... --show_config` prints); recipes
override a few. Keep this file free of logic: checks of values live in `rpsflax.config_check`.
"""

import importlib.util
import pathlib

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: backbone + head (see rpsflax/models/__init__.py).
  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg16"
  c.model.alpha = 1.0
  # BatchNorm (resnet50, mobilenet_v2): False (Keras' fine-tuning guide, base(x, training=False))
  # keeps every BN layer in inference mode: moving statistics normalise and never change, while
  # its gamma/beta train if config.trainable says so. True: a BN layer whose gamma matches
  # config.trainable / lr_groups runs in training mode in train steps (batch statistics, moving
  # statistics updated), as Keras' base(x) with that layer trainable; frozen ones stay in
  # inference mode (Keras: a BN layer with trainable=False always does).
  c.model.bn_trainable = False
  c.model.dtype = "float32"
  c.head = ml_collections.ConfigDict()
  c.head.num_classes = 3
  c.head.pooling = "max"
  c.head.dropout = 0.5
  c.head.hidden = ()
  c.head.hidden_activation = "relu"
  c.head.hidden_dropout = 0.0

  c.weights = "imagenet"
  # Warm start: '' or the --workdir of a finished run of the same model (backbone and head). Its
  # best checkpoint's parameters and BatchNorm statistics replace the weights above when this run
  # starts fresh (a resumed run uses its own checkpoint); optimizer state and epochs start anew.
  # Fine-tuning from a trained head, as the Keras blog does: configs/catsdogs_vgg16_finetune.py.
  c.init_from = ""
  c.preprocess = "vgg16"

  # Data: a local folder (DIR/train/<class>/..., or flat Kaggle-style names), else TFDS.
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""
  c.data.tfds_name = "rock_paper_scissors"
  c.data.tfds_data_dir = ""
  c.data.image_size = 224
  c.data.resize_method = "nearest"
  c.data.decoder = "pil"
  c.data.val_fraction = 0.2
  c.data.holdout = 0
  c.data.cache = True
  # Keep the decoded images (or cached features) on the devices and run each epoch there as a few
  # jitted calls (rpsflax/resident.py): 'auto' where they fit a budget of the device memory,
  # 'on' whatever the budget, 'off' to feed batches from the host. Needs config.data.cache.
  c.data.device_cache = "auto"
  c.data.max_image_pixels = 89_478_485  # PIL's default
  c.data.num_parallel_calls = -1

  # Augmentation, with ImageDataGenerator's meaning (ranges in degrees; shifts in pixels
  # when >= 1, as fractions of the size when < 1). Applied to training batches only.
  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.rotation_range = 0.0
  c.augment.width_shift_range = 0.0
  c.augment.height_shift_range = 0.0
  c.augment.shear_range = 0.0
  c.augment.zoom_range = 0.0
  c.augment.horizontal_flip = False
  c.augment.vertical_flip = False
  c.augment.fill_mode = "nearest"
  c.augment.cval = 0.0

  # Optimisation. Parameters matching `trainable` (regexes over 'backbone/block5_conv1/kernel'
  # style paths) train at optim.learning_rate; `lr_groups` pairs (pattern, learning_rate)
  # train at their own rate; everything else is frozen (no gradient computed).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "rmsprop"
  c.optim.learning_rate = 1e-3      # Keras RMSprop default
  c.optim.rho = 0.9
  c.optim.momentum = 0.0
  c.optim.epsilon = 1e-7
  c.optim.weight_decay = 0.0
  c.trainable = ("head/.*",)
  c.lr_groups = ()

  # Training loss regularisers (train steps only; evaluation reports the plain loss).
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0

  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 20
  c.log_every_steps = 10

  # Cached features (rpsflax/features.py): with the backbone frozen, run it once per image (and on
  # `augmented_views` augmented copies of each training image), store the features in the workdir
  # and train the head on them for every epoch. The checkpoint is the full model, as usual.
  c.cached_features = ml_collections.ConfigDict()
  c.cached_features.enabled = False
  c.cached_features.augmented_views = 0
  c.cached_features.dir = ""

  # Multi-host: jax.distributed.initialize() when True or when RPSFLAX_DISTRIBUTED=1; fields left
  # at their defaults are read by JAX from the launcher's environment (SLURM, Open MPI, ...).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c


# One line per field: what it means (and its values), printed by --show_config beside the value.
# The paragraphs above the groups in get_config say why; these say what.
MEANINGS = {
    "seed": "seeds the initial parameters, the data order and splits, augmentation and dropout",
    "model.name": "backbone, one file each in rpsflax/models/ (cnn: the Keras blog's small "
                  "convnet)",
    "model.alpha": "mobilenet_v2 width (Keras' alpha); ignored by the others",
    "model.bn_trainable": "BatchNorm of trainable layers in training mode (batch statistics) when "
                          "True; False keeps every BN layer in inference mode, as Keras' guide",
    "model.dtype": "computation dtype (parameters stay float32)",
    "head.num_classes": "outputs: one per class; 1 = a sigmoid output for two classes (binary "
                        "cross-entropy); None = one per class found in the data (configs/folder.py)",
    "head.pooling": "how the backbone's feature map is reduced: 'max' | 'avg' | 'flatten'",
    "head.dropout": "dropout rate before the output layer",
    "head.hidden": "widths of hidden dense layers before the output, e.g. (256,)",
    "head.hidden_activation": "activation of the hidden dense layers",
    "head.hidden_dropout": "dropout rate after each hidden dense layer",
    "weights": "'imagenet' (download the Keras release), a converted folder (weights/<name>/), a "
               "Keras .h5/.weights.h5/.keras file, or '' for random initialisation",
    "init_from": "'' or the --workdir of a finished run of the same model: its best checkpoint "
                 "replaces `weights` (then neither read nor downloaded) in a fresh run (a warm "
                 "start)",
    "preprocess": "input scaling: a backbone's name (its Keras application's mode), 'rescale' "
                  "(1/255) or 'none'",
    "data.dir": "a folder of images: DIR/train/<class>/..., flat Kaggle-style names, or DIR "
                "itself; '' = the TFDS data set below",
    "data.tfds_name": "TensorFlow Datasets name, used when data.dir is ''",
    "data.tfds_data_dir": "where TFDS keeps its data ('' = ~/tensorflow_datasets)",
    "data.image_size": "images are resized to this square size (pixels)",
    "data.decoder": "'pil' (PIL in worker processes; no TensorFlow import) | 'tf' (tf.data): "
                    "the same pixels, Keras' load_img's",
    "data.resize_method": "interpolation ('nearest': Keras flow_from_directory's default)",
    "data.val_fraction": "seeded share of train held out for validation when there is no "
                         "validation folder",
    "data.holdout": "examples drawn (seeded) before anything else, for a final test",
    "data.cache": "keep decoded, resized images in memory",
    "data.device_cache": "keep the data on the devices, epochs as a few jitted calls: 'auto' "
                         "(where it fits) | 'on' | 'off'; needs data.cache",
    "data.max_image_pixels": "width x height an image may declare (header read first; larger "
                             "ones are skipped undecoded)",
    "data.num_parallel_calls": "decoding threads (-1 = tf.data.AUTOTUNE)",
    "augment.enabled": "augment training batches (never evaluation ones)",
    "augment.rotation_range": "random rotation, degrees (ImageDataGenerator's meaning)",
    "augment.width_shift_range": "random horizontal shift: pixels when >= 1, fraction of the "
                                 "width when < 1",
    "augment.height_shift_range": "random vertical shift: pixels when >= 1, fraction of the "
                                  "height when < 1",
    "augment.shear_range": "random shear, degrees",
    "augment.zoom_range": "random zoom, drawn from [1 - z, 1 + z]",
    "augment.horizontal_flip": "random left-right flips",
    "augment.vertical_flip": "random up-down flips",
    "augment.fill_mode": "pixels shifted in from outside: 'nearest' | 'constant' | 'reflect' | "
                         "'wrap'",
    "augment.cval": "the value fill_mode='constant' fills with",
    "optim.name": "optimizer: 'rmsprop' | 'adam' | 'sgd'",
    "optim.learning_rate": "learning rate of the parameters matching `trainable`",
    "optim.rho": "RMSprop's decay of the squared-gradient average",
    "optim.momentum": "momentum (RMSprop, SGD)",
    "optim.epsilon": "added to denominators (RMSprop, Adam)",
    "optim.weight_decay": "L2 on the trainable parameters, added to the gradient (coupled); 0: off",
    "trainable": "regexes over parameter paths ('backbone/block5_conv1/kernel'); the rest is "
                 "frozen unless lr_groups names it",
    "lr_groups": "(pattern, learning_rate) pairs that train at their own rate",
    "label_smoothing": "e: training targets (1 - e) * one_hot + e / classes; 0: off",
    "mixup_alpha": "> 0: mix each training batch with a shuffled copy, lambda ~ Beta(a, a) (on "
                   "cached features when the head trains on them); 0: off",
    "batch_size": "global training batch, split across devices",
    "eval_batch_size": "global evaluation batch",
    "num_epochs": "epochs to train; a finished run asked for more resumes",
    "log_every_steps": "progress bar and TensorBoard every this many steps",
    "cached_features.enabled": "with a frozen backbone, run it once per image and train the "
                               "head on stored features",
    "cached_features.augmented_views": "augmented copies of each training image whose features "
                                       "are stored, besides the clean one",
    "cached_features.dir": "where the features are stored ('' = WORKDIR/features)",
    "distributed.initialize": "call jax.distributed.initialize() (also when "
                              "RPSFLAX_DISTRIBUTED=1)",
    "distributed.coordinator_address": "host:port of process 0 ('' = from the launcher)",
    "distributed.num_processes": "number of processes (0 = from the launcher)",
    "distributed.process_id": "this process' index (-1 = from the launcher)",
}


def load_sibling(config_file: str, name: str):
  """Load configs/<name>.py next to `config_file` (a recipe's __file__) as a module."""
  path = pathlib.Path(config_file).resolve().parent / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"rpsflax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
