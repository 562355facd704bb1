"""Rock-Paper-Scissors with a frozen ImageNet ResNet50: configs/rps.py with the backbone swapped.

ResNet50 is a quarter of VGG16's cost (3.9 against 15.3 GMAC per 224x224 image, see
scripts/backbone_macs.py) and better on ImageNet (Keras' table: 0.749 against 0.713 top-1). Its
BatchNorm layers stay in inference mode (config.model.bn_trainable=False, Keras' fine-tuning
guide), so the frozen backbone computes the same function every step, and
--config.cached_features.enabled=True (with --config.cached_features.augmented_views=K) runs it
once per view instead, as configs/rps_cached.py does for VGG16.

  python scripts/convert_keras_weights.py --model resnet50      # once, online (md5-checked)
  python -m rpsflax.main --config=configs/rps_resnet50.py --workdir=runs/rps_resnet50 \
      --config.data.dir=/path/to/rps --config.weights=weights/resnet50_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.load_sibling(__file__, "rps").get_config()
  c.model.name = "resnet50"
  c.preprocess = "resnet50"   # Keras' resnet50.preprocess_input: caffe mode, as VGG16
  # Global average pooling, ResNet50's own (Keras' avg_pool before its top): its conv5 features
  # are post-ReLU sums of a residual stack, where a max over 7x7 is dominated by outliers.
  c.head.pooling = "avg"
  c.model.bn_trainable = False
  return c
