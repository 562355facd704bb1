"""TensorFlow's transfer-learning tutorial, fine-tuning part: MobileNetV2 from layer 100 on.

As the tutorial: base_model.trainable = True, then its first 100 layers (Keras' layer list,
input layer included) frozen again, RMSprop at a tenth of the rate (1e-5) for the head and the
unfrozen layers, 10 more epochs. Keras' layers[100:] begins at block_11_depthwise, so the
trainable backbone layers are block_11's depthwise and project convs and their BN, blocks 12-16
and Conv_1 (tests/test_bn_semantics.py holds this pattern against Keras' own layer list).
The base is still called with training=False, so every BatchNorm stays in inference mode
(config.model.bn_trainable=False) while the gamma/beta of the unfrozen ones train.

The tutorial continues from the frozen run's trained head; this project starts the head from its
initialisation (as configs/catsdogs_vgg16_finetune.py), and the low rate keeps the unfrozen layers
from being wiped out by its first large gradients.
"""

from rpsflax import config_base

# Keras MobileNetV2's layers[100:] with weights (layers[98:100] are block_11_expand and its BN).
FROM_LAYER_100 = r"^backbone/(block_11_(depthwise|project)|block_1[2-6]_|Conv_1)"


def get_config():
  c = config_base.load_sibling(__file__, "catsdogs_mobilenetv2").get_config()
  c.optim.name = "rmsprop"
  c.optim.learning_rate = 1e-5       # base_learning_rate / 10
  c.trainable = ("head/.*", FROM_LAYER_100)
  c.model.bn_trainable = False
  c.num_epochs = 10
  return c
