"""Cats vs dogs with the tutorial's small convnet, trained from scratch.

This file states what differs from the base config; the head's dropout 0.5, RMSprop and the
'nearest' fill come from the base.

  python -m rpsflax.main --config=configs/catsdogs.py --workdir=runs/catsdogs \
      --config.data.dir=/path/to/dogs-vs-cats
"""

from rpsflax import config_base


def get_config():
  c = config_base.get_config()
  c.model.name = "cnn"
  c.weights = ""                     # from scratch
  c.preprocess = "rescale"           # 1/255
  c.data.tfds_name = "cats_vs_dogs"
  c.data.image_size = 150
  c.data.holdout = 1000              # a seeded 1,000 kept aside for the final evaluation
  c.data.val_fraction = 0.25         # the remaining 24,000 -> 18,000 train / 6,000 validation
  c.head.num_classes = 1             # sigmoid; dog = 1, cat = 0
  c.head.pooling = "flatten"
  c.head.hidden = (512,)
  c.optim.learning_rate = 1e-4
  c.trainable = (".*",)
  c.batch_size = 128
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.augment.rotation_range = 40.0
  c.augment.width_shift_range = 0.2    # fraction of the width
  c.augment.height_shift_range = 0.2
  c.augment.shear_range = 0.2
  c.augment.zoom_range = 0.2
  c.augment.horizontal_flip = True
  return c
