"""Rock-Paper-Scissors, then fine-tune VGG16's last block: configs/rps.py plus block5 unfrozen.

The head trains at optim.learning_rate as in the recipe; block5's convolutions train too, at their
own small learning rate so the ImageNet features move without being wiped out. Blocks 1-4 stay
frozen (and free: no gradient is computed for them).

  python -m rpsflax.main --config=configs/rps_finetune.py --workdir=runs/rps_finetune \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "rps").get_config()
  c.trainable = ("head/.*",)
  c.lr_groups = (("backbone/block5_.*", 1e-5),)
  return c
