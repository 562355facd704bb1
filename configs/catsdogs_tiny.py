"""A tiny cats-vs-dogs run for smoke tests and the end-to-end test: seconds on a CPU.

The tutorial's convnet and recipe (configs/catsdogs.py) at 64x64 (the smallest input its four
conv/pool stages accept is 46), batch 8, 2 epochs, a holdout of 20. Point it at a folder of
Kaggle-style names (DIR/train/cat.1.jpg) or class subfolders (DIR/train/cats/):

  python -m rpsflax.main --config=configs/catsdogs_tiny.py --workdir=/tmp/catsdogs_tiny \
      --config.data.dir=../shared/data/catsdogs
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "catsdogs").get_config()
  c.data.image_size = 64
  c.data.holdout = 20
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_epochs = 2
  c.log_every_steps = 5
  return c
