"""Model zoo: a registry of the architectures pruning papers use.

>>> from prunekit import models
>>> "resnet56" in models.available()
True
"""

from prunekit.models import resnet_cifar as _resnet_cifar  # noqa: F401  (registers resnet*)
from prunekit.models.pretrained import check_state_dict, load_pretrained, read_state_dict
from prunekit.models.registry import available, create, register
from prunekit.models.resnet_cifar import BasicBlock, PadShortcut, ResNetCifar, resnet_cifar

__all__ = [
    "BasicBlock",
    "PadShortcut",
    "ResNetCifar",
    "available",
    "check_state_dict",
    "create",
    "load_pretrained",
    "read_state_dict",
    "register",
    "resnet_cifar",
]
