"""Your own folder of class subfolders, with rps.py's recipe (a frozen ImageNet VGG16 and a new
head), the head sized by the data: one output per class folder found.

  python -m rpsflax.main --config=configs/folder.py --workdir=runs/mine \
      --config.data.dir=/path/to/folder --config.weights=/path/to/vgg16_notop.h5
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "rps").get_config()
  c.head.num_classes = None  # one output per class found in config.data.dir
  c.data.tfds_name = ""      # a folder, never a TFDS download
  return c
