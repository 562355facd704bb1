"""The recipe of tests/test_reliability.py: the cats-vs-dogs convnet at 48x48 with a frozen
backbone, 3 classes, batch 4 (5 steps per epoch on 18 training images), 2 epochs. Dropout and
augmentation stay on, so a resumed run has randomness to replay exactly. Seconds on a CPU.

  python -m rpsflax.main --config=tests/reliability_recipe.py --workdir=W --config.data.dir=D
"""

from rpsflax import config_base


def get_config():
  c = config_base.get_config()
  c.model.name = "cnn"
  c.weights = ""
  c.preprocess = "rescale"
  c.data.image_size = 48
  c.data.val_fraction = 0.25
  c.head.num_classes = 3
  c.head.dropout = 0.5
  c.augment.enabled = True
  c.augment.rotation_range = 10.0
  c.augment.horizontal_flip = True
  c.trainable = ("head/.*",)
  c.batch_size = 4
  c.eval_batch_size = 4
  c.num_epochs = 2
  c.log_every_steps = 2
  return c
