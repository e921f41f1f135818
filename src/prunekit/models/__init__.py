"""Model zoo: a registry of the architectures pruning papers use.

>>> from prunekit import models
>>> "resnet56" in models.available()
True
"""

from prunekit.models import digits_cnn as _digits_cnn  # noqa: F401  (registers digits_cnn)
from prunekit.models import lenet as _lenet  # noqa: F401  (registers lenet300_100, lenet5)
from prunekit.models import mobilenetv2_cifar as _mobilenetv2_cifar  # noqa: F401  (registers mobilenetv2)
from prunekit.models import resnet_cifar as _resnet_cifar  # noqa: F401  (registers resnet*)
from prunekit.models import vgg_cifar as _vgg_cifar  # noqa: F401  (registers vgg*_bn)
from prunekit.models.digits_cnn import DigitsCNN
from prunekit.models.lenet import LeNet5, LeNet300100
from prunekit.models.mobilenetv2_cifar import InvertedResidual, MobileNetV2Cifar
from prunekit.models.pretrained import check_state_dict, load_pretrained, read_state_dict
from prunekit.models.registry import available, create, register
from prunekit.models.resnet_cifar import BasicBlock, PadShortcut, ResNetCifar, resnet_cifar
from prunekit.models.vgg_cifar import VGGCifar

__all__ = [
    "BasicBlock",
    "DigitsCNN",
    "InvertedResidual",
    "LeNet300100",
    "LeNet5",
    "MobileNetV2Cifar",
    "PadShortcut",
    "ResNetCifar",
    "VGGCifar",
    "available",
    "check_state_dict",
    "create",
    "load_pretrained",
    "read_state_dict",
    "register",
    "resnet_cifar",
]
