"""Rock-Paper-Scissors with a frozen ImageNet VGG16: the Keras tutorial's recipe.

  python -m rpsflax.main --config=configs/rps.py --workdir=runs/rps \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.get_config()
  c.model.name = "vgg16"
  c.weights = "imagenet"
  c.preprocess = "vgg16"
  c.data.tfds_name = "rock_paper_scissors"
  c.data.image_size = 224
  c.head.num_classes = 3
  c.head.pooling = "max"
  c.head.dropout = 0.5
  c.optim.name = "rmsprop"
  c.optim.learning_rate = 1e-3
  c.trainable = ("head/.*",)
  c.batch_size = 32
  c.num_epochs = 20
  c.augment.rotation_range = 10.0
  c.augment.zoom_range = 0.1
  c.augment.width_shift_range = 10.0   # pixels
  c.augment.height_shift_range = 10.0  # pixels
  c.augment.horizontal_flip = True
  c.augment.vertical_flip = False
  c.augment.fill_mode = "nearest"
  return c
