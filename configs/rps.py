"""Rock-Paper-Scissors with a frozen ImageNet VGG16: the Keras tutorial's recipe.

The base config (rpsflax/config_base.py) is this recipe's model, head, optimizer, batch size and
epochs (VGG16 with ImageNet weights, max pooling, dropout 0.5, RMSprop 1e-3, batch 32, 20
epochs); this file adds the tutorial's augmentation.

  python -m rpsflax.main --config=configs/rps.py --workdir=runs/rps \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.get_config()
  c.augment.rotation_range = 10.0
  c.augment.zoom_range = 0.1
  c.augment.width_shift_range = 10.0   # pixels
  c.augment.height_shift_range = 10.0  # pixels
  c.augment.horizontal_flip = True
  return c
