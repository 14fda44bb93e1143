"""keras-mobilenets: MobileNet V1-V4 for Keras 3 on TensorFlow, JAX and PyTorch.

Importing the package registers its layers with Keras, which is what loading
a saved `.keras` file of one of these models needs.

Example:
    >>> from keras_mobilenets import create_mobilenetv4
    >>> model = create_mobilenetv4("conv_small", num_classes=10)
"""

from keras_mobilenets import layers, weights
from keras_mobilenets.features import count_macs, feature_pyramid
from keras_mobilenets.mobilenet_v1 import create_mobilenetv1
from keras_mobilenets.mobilenet_v2 import create_mobilenetv2
from keras_mobilenets.mobilenet_v3 import create_mobilenetv3
from keras_mobilenets.mobilenet_v4 import create_mobilenetv4
from keras_mobilenets.mobilenet_v5 import create_mobilenetv5

__version__ = "0.2.0"
__all__ = [
    "count_macs",
    "create_mobilenetv1",
    "create_mobilenetv2",
    "create_mobilenetv3",
    "create_mobilenetv4",
    "create_mobilenetv5",
    "feature_pyramid",
    "layers",
    "weights",
]
