"""A tiny Rock-Paper-Scissors run for smoke tests and the end-to-end test: seconds on a CPU.

VGG16 at 32x32 (the smallest input its five pools accept), batch 8, 2 epochs, random backbone
weights unless --config.weights names a file. Point it at any folder of class subfolders:

  python -m rpsflax.main --config=configs/rps_tiny.py --workdir=/tmp/rps_tiny \
      --config.data.dir=../shared/data/rps
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "rps").get_config()
  c.weights = ""                # random init; the e2e test passes a converted folder instead
  c.data.image_size = 32
  c.data.val_fraction = 0.25
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_epochs = 2
  c.log_every_steps = 2
  return c
