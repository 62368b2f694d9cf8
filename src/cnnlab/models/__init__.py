"""The model zoo: LeNet (d2l §7.6), VGG (§8.2), ResNet (§8.6), and a registry to build them by name.

Builders are plain functions registered under a name; `list_models()` shows the names and
`create_model(name, **kwargs)` builds one. Note that, as in torchvision, the builder `lenet` shadows the
submodule of the same name as an attribute of this package; import classes from `cnnlab.models.lenet` with
`from ... import`.
"""

from cnnlab.models.fastnet import FastNet, fastnet  # noqa: F401 (registers 'fastnet')
from cnnlab.models.lenet import LeNet, LeNetReLU, lenet, lenet_relu
from cnnlab.models.registry import create_model, list_models, prepare_model, register_model
from cnnlab.models.resnet import (
    RESNET18_ARCH,
    RESNET34_ARCH,
    ResNet,
    ResNet18,
    resnet18,
    resnet18_small,
    resnet34,
)
from cnnlab.models.vgg import VGG, VGG11_ARCH, VGG_SMALL_ARCH, vgg11, vgg_small

__all__ = [
    "RESNET18_ARCH",
    "RESNET34_ARCH",
    "VGG11_ARCH",
    "VGG_SMALL_ARCH",
    "VGG",
    "LeNet",
    "LeNetReLU",
    "ResNet",
    "ResNet18",
    "create_model",
    "lenet",
    "lenet_relu",
    "list_models",
    "prepare_model",
    "register_model",
    "resnet18",
    "resnet18_small",
    "resnet34",
    "vgg11",
    "vgg_small",
]
