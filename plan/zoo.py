"""Built-in networks: ``digits``, ``lenet5``, ``alexnet``, ``vgg16``, ``vgg19``.

* ``digits`` is :func:`fpdeep.plan.network.digits_cnn`, the 8×8 digits CNN.
* ``lenet5``: LeNet-5 on 32×32 grey images (6 and 16 5×5 convs, 120-84-10 FC),
  with ReLU and max-pool in place of the original's tanh and sub-sampling.
* ``alexnet``: the single-tower AlexNet of torchvision (64-192-384-256-256
  channels, no LRN) on 3×224×224: about 0.71 GMAC forward and 61.1 M weights.
  Its 11×11/4 first conv and 3×3/2 pools are planning-only layers
  (see :meth:`Network.gateware_unsupported`).
* ``vgg16``, ``vgg19``: configurations D and E of Simonyan & Zisserman on
  3×224×224: about 15.5 and 19.6 GMAC forward, 138.4 M and 143.7 M weights.
"""

from .errors import FpdeepError
from .network import (Conv2d, ReLU, MaxPool2d, Linear, SoftmaxCrossEntropy, Network,
                      digits_cnn)

__all__ = ["get", "NAMES", "digits", "lenet5", "alexnet", "vgg16", "vgg19"]


def digits():
    return digits_cnn()


def lenet5():
    return Network("lenet5", (1, 32, 32), [
        Conv2d("conv1", 1, 6, kernel=5), ReLU("relu1"), MaxPool2d("pool1"),
        Conv2d("conv2", 6, 16, kernel=5), ReLU("relu2"), MaxPool2d("pool2"),
        Linear("fc1", 400, 120), ReLU("relu3"),
        Linear("fc2", 120, 84), ReLU("relu4"),
        Linear("fc3", 84, 10),
        SoftmaxCrossEntropy("loss"),
    ])


def alexnet():
    return Network("alexnet", (3, 224, 224), [
        Conv2d("conv1", 3, 64, kernel=11, padding=2, stride=4), ReLU("relu1"),
        MaxPool2d("pool1", size=3, stride=2),
        Conv2d("conv2", 64, 192, kernel=5, padding=2), ReLU("relu2"),
        MaxPool2d("pool2", size=3, stride=2),
        Conv2d("conv3", 192, 384, kernel=3, padding=1), ReLU("relu3"),
        Conv2d("conv4", 384, 256, kernel=3, padding=1), ReLU("relu4"),
        Conv2d("conv5", 256, 256, kernel=3, padding=1), ReLU("relu5"),
        MaxPool2d("pool5", size=3, stride=2),
        Linear("fc6", 256 * 6 * 6, 4096), ReLU("relu6"),
        Linear("fc7", 4096, 4096), ReLU("relu7"),
        Linear("fc8", 4096, 1000),
        SoftmaxCrossEntropy("loss"),
    ])


def _vgg(name, blocks):
    layers, channels = [], 3
    for block, (count, width) in enumerate(blocks, start=1):
        for index in range(1, count + 1):
            layers += [Conv2d(f"conv{block}_{index}", channels, width, kernel=3, padding=1),
                       ReLU(f"relu{block}_{index}")]
            channels = width
        layers.append(MaxPool2d(f"pool{block}"))
    layers += [Linear("fc6", 512 * 7 * 7, 4096), ReLU("relu6"),
               Linear("fc7", 4096, 4096), ReLU("relu7"),
               Linear("fc8", 4096, 1000), SoftmaxCrossEntropy("loss")]
    return Network(name, (3, 224, 224), layers)


def vgg16():
    return _vgg("vgg16", [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)])


def vgg19():
    return _vgg("vgg19", [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)])


_BUILDERS = {"digits": digits, "lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16,
             "vgg19": vgg19}
NAMES = list(_BUILDERS)


def get(name):
    """A fresh copy of the built-in network ``name``.

    Raises
    ------
    FpdeepError
        If there is no such network.
    """
    try:
        return _BUILDERS[str(name).lower()]()
    except KeyError:
        raise FpdeepError(f"unknown network {name!r}; choose one of {', '.join(NAMES)} "
                          f"or give a .json/.yaml/.onnx file") from None
