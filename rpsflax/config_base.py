"""The base config every recipe in configs/ starts from, and a loader for sibling recipes.

Every field a researcher may change lives here with its default; recipes override a few.
Keep this file free of logic: checks of values live in `rpsflax.config_check`.
"""

import importlib.util
import pathlib

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: backbone + head (see rpsflax/models/__init__.py).
  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg16"            # 'vgg16' | 'resnet50' | 'mobilenet_v2' | 'cnn'
  c.model.alpha = 1.0               # mobilenet_v2 width (Keras' alpha); ignored by the others
  # BatchNorm (resnet50, mobilenet_v2): False (Keras' fine-tuning guide, base(x, training=False))
  # keeps every BN layer in inference mode: moving statistics normalise and never change, while
  # its gamma/beta train if config.trainable says so. True: a BN layer whose gamma matches
  # config.trainable / lr_groups runs in training mode in train steps (batch statistics, moving
  # statistics updated), as Keras' base(x) with that layer trainable; frozen ones stay in
  # inference mode (Keras: a BN layer with trainable=False always does).
  c.model.bn_trainable = False
  c.model.dtype = "float32"         # computation dtype: 'float32' | 'bfloat16' (params stay float32)
  c.head = ml_collections.ConfigDict()
  c.head.num_classes = 3            # 1 means a sigmoid output (binary cross-entropy)
  c.head.pooling = "max"            # 'max' | 'avg' | 'flatten'
  c.head.dropout = 0.5
  c.head.hidden = ()                # e.g. (256,) for one hidden dense layer
  c.head.hidden_activation = "relu"
  c.head.hidden_dropout = 0.0

  # Weights: 'imagenet' (download the Keras release), a converted folder (weights/<name>/),
  # a Keras .h5/.weights.h5/.keras file (converted on the fly), or '' for random init.
  c.weights = "imagenet"
  # Warm start: '' or the --workdir of a finished run of the same model (backbone and head). Its
  # best checkpoint's parameters and BatchNorm statistics replace the weights above when this run
  # starts fresh (a resumed run uses its own checkpoint); optimizer state and epochs start anew.
  # Fine-tuning from a trained head, as the Keras blog does: configs/catsdogs_vgg16_finetune.py.
  c.init_from = ""
  c.preprocess = "vgg16"            # 'vgg16' (Keras caffe mode) | 'rescale' (1/255) | 'none'

  # Data: a local folder (DIR/train/<class>/..., or flat Kaggle-style names), else TFDS.
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""
  c.data.tfds_name = "rock_paper_scissors"
  c.data.tfds_data_dir = ""         # '' = TFDS default (~/tensorflow_datasets)
  c.data.image_size = 224
  c.data.resize_method = "nearest"  # Keras flow_from_directory's default interpolation
  c.data.val_fraction = 0.2         # seeded split of train when there is no validation folder
  c.data.holdout = 0                # examples drawn (seeded) before anything else, for a final test
  c.data.cache = True               # keep decoded, resized images in memory
  # Keep the decoded images (or cached features) on the devices and run each epoch there as a few
  # jitted calls (rpsflax/resident.py): 'auto' where they fit a budget of the device memory,
  # 'on' whatever the budget, 'off' to feed batches from the host. Needs config.data.cache.
  c.data.device_cache = "auto"
  c.data.max_image_pixels = 89_478_485  # width x height an image may declare (its header is read
                                        # first; larger ones are skipped undecoded). PIL's default
  c.data.num_parallel_calls = -1    # tf.data.AUTOTUNE

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
  c.augment.fill_mode = "nearest"   # 'nearest' | 'constant' | 'reflect' | 'wrap'
  c.augment.cval = 0.0

  # Optimisation. Parameters matching `trainable` (regexes over 'backbone/block5_conv1/kernel'
  # style paths) train at optim.learning_rate; `lr_groups` pairs (pattern, learning_rate)
  # train at their own rate; everything else is frozen (no gradient computed).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "rmsprop"          # 'rmsprop' | 'adam' | 'sgd'
  c.optim.learning_rate = 1e-3      # Keras RMSprop default
  c.optim.rho = 0.9
  c.optim.momentum = 0.0
  c.optim.epsilon = 1e-7
  c.optim.weight_decay = 0.0        # L2 on trainable params, added to the gradient (coupled)
  c.trainable = ("head/.*",)
  c.lr_groups = ()

  # Training loss regularisers (train steps only; evaluation reports the plain loss).
  c.label_smoothing = 0.0           # targets (1 - e) * one_hot + e / classes
  c.mixup_alpha = 0.0               # > 0: mix each batch with a shuffled copy, lambda ~ Beta(a, a)
                                    # (on cached features when the head trains on them)

  c.batch_size = 32                 # global batch, split across devices
  c.eval_batch_size = 64
  c.num_epochs = 20
  c.log_every_steps = 10

  # Cached features (rpsflax/features.py): with the backbone frozen, run it once per image (and on
  # `augmented_views` augmented copies of each training image), store the features in the workdir
  # and train the head on them for every epoch. The checkpoint is the full model, as usual.
  c.cached_features = ml_collections.ConfigDict()
  c.cached_features.enabled = False
  c.cached_features.augmented_views = 0   # K: augmented views per training image, besides the clean one
  c.cached_features.dir = ""              # '' = WORKDIR/features

  # Multi-host: jax.distributed.initialize() when True or when RPSFLAX_DISTRIBUTED=1; fields left
  # at their defaults are read by JAX from the launcher's environment (SLURM, Open MPI, ...).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c


def load_sibling(config_file: str, name: str):
  """Load configs/<name>.py next to `config_file` (a recipe's __file__) as a module."""
  path = pathlib.Path(config_file).resolve().parent / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"rpsflax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
