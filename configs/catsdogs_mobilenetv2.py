"""Cats vs dogs as TensorFlow's transfer-learning tutorial: a frozen ImageNet MobileNetV2.

tensorflow.org/tutorials/images/transfer_learning: cats_and_dogs_filtered (2,000 training and
1,000 validation images), 160x160 inputs scaled to [-1, 1] by mobilenet_v2.preprocess_input,
MobileNetV2 (alpha 1.0, the 160x160 ImageNet release, include_top=False) frozen and called with
training=False, global average pooling, dropout 0.2, one logit (binary cross-entropy from
logits), Adam at 1e-4, batch 32, 10 epochs. Augmentation: RandomFlip('horizontal') and
RandomRotation(0.2), that is +-0.2 of a turn (72 degrees) with reflected fill; here as
ImageDataGenerator's rotation_range=72 with fill 'reflect' (the same range; Keras' two layers
draw and interpolate differently). Fine-tuning from layer 100: configs/catsdogs_mobilenetv2_finetune.py.
The frozen base may also run once per view with --config.cached_features.enabled=True and
--config.cached_features.augmented_views=K (K augmented copies per image instead of fresh
augmentation every epoch: not the tutorial's recipe, much less backbone work).

  python scripts/convert_keras_weights.py --model mobilenet_v2 --image-size 160   # once, online
  python -m rpsflax.main --config=configs/catsdogs_mobilenetv2.py \
      --workdir=runs/catsdogs_mobilenetv2 --config.data.dir=../shared/data/catsdogs_filtered \
      --config.weights=weights/mobilenet_v2_1.0_160_notop
"""

from rpsflax import config_base


def get_config():
  c = config_base.get_config()
  c.model.name = "mobilenet_v2"
  c.model.alpha = 1.0
  c.model.bn_trainable = False       # base_model(x, training=False): BN in inference mode
  c.weights = "imagenet"             # the 160x160 release (rpsflax.weights.release_for_config)
  c.preprocess = "mobilenet_v2"
  c.data.tfds_name = "cats_vs_dogs"
  c.data.image_size = 160
  c.data.resize_method = "bilinear"  # image_dataset_from_directory's default, as the tutorial
  c.data.holdout = 0                 # the tutorial's test set is 20% of the validation batches
  c.head.num_classes = 1             # one logit: cat=0, dog=1
  c.head.pooling = "avg"
  c.head.dropout = 0.2
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-4
  c.trainable = ("head/.*",)
  c.augment.enabled = True
  c.augment.horizontal_flip = True
  c.augment.rotation_range = 72.0
  c.augment.fill_mode = "reflect"
  c.batch_size = 32
  c.num_epochs = 10
  return c
