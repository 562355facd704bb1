"""Rock-Paper-Scissors with cached VGG16 features: configs/rps.py, the backbone run once per view.

The backbone is frozen in the recipe, so its features are computed once (the clean image plus
`augmented_views` augmented copies of each training image, with the recipe's augmentation) and
stored in WORKDIR/features; the head then trains on them for all 20 epochs, each epoch drawing
one view per image. 5 backbone passes per training image instead of 20 (one per epoch); the
checkpoint is the full model, so rpsflax.predict and --mode=evaluate work as for configs/rps.py.

  python -m rpsflax.main --config=configs/rps_cached.py --workdir=runs/rps_cached \
      --config.data.dir=/path/to/rps --config.weights=weights/vgg16_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "rps").get_config()
  c.cached_features.enabled = True
  c.cached_features.augmented_views = 4  # + the clean view: each epoch draws one of 5 per image
  return c
