"""The model zoo: LeNet (d2l §7.6), AlexNet (§8.1), VGG (§8.2), NiN (§8.3), GoogLeNet (§8.4), LeNet with
batch norm (§8.5), ResNet (§8.6), DenseNet (§8.7), AnyNet/RegNetX-32 (§8.8), and a registry to build them by name."""

# Builders are plain functions registered under a name; `list_models()` shows the names and
# `create_model(name, **kwargs)` builds one. As in torchvision, the builder `lenet` shadows the submodule of the
# same name as an attribute of this package; import classes from `cnnlab.models.lenet` with `from ... import`.

from cnnlab.models.alexnet import AlexNet, alexnet, alexnet_small
from cnnlab.models.densenet import DenseBlock, DenseNet, conv_block, densenet, densenet_small, transition_block
from cnnlab.models.fastnet import FastNet, fastnet  # noqa: F401 (registers 'fastnet')
from cnnlab.models.googlenet import GoogleNet, Inception, googlenet
from cnnlab.models.lenet import (
    BNLeNet,
    BNLeNetScratch,
    LeNet,
    LeNetReLU,
    lenet,
    lenet_bn,
    lenet_bn_scratch,
    lenet_relu,
)
from cnnlab.models.nin import NiN, nin, nin_block, nin_small
from cnnlab.models.registry import (
    MODERN_RECIPE,
    cam_layer,
    check_model_name,
    create_model,
    list_models,
    model_recipe,
    narrower_model,
    prepare_model,
    register_model,
)
from cnnlab.models.regnet import REGNETX32_ARCH, AnyNet, RegNetX32, regnetx32
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
from cnnlab.nn.layers import ResNeXtBlock  # re-exported: AnyNet is built from it

__all__ = [
    "MODERN_RECIPE",
    "REGNETX32_ARCH",
    "RESNET18_ARCH",
    "RESNET34_ARCH",
    "VGG11_ARCH",
    "VGG_SMALL_ARCH",
    "VGG",
    "AlexNet",
    "AnyNet",
    "BNLeNet",
    "BNLeNetScratch",
    "DenseBlock",
    "DenseNet",
    "GoogleNet",
    "Inception",
    "LeNet",
    "LeNetReLU",
    "NiN",
    "RegNetX32",
    "ResNeXtBlock",
    "ResNet",
    "ResNet18",
    "alexnet",
    "alexnet_small",
    "check_model_name",
    "conv_block",
    "create_model",
    "densenet",
    "densenet_small",
    "googlenet",
    "lenet",
    "lenet_bn",
    "lenet_bn_scratch",
    "lenet_relu",
    "cam_layer",
    "list_models",
    "model_recipe",
    "narrower_model",
    "nin",
    "nin_block",
    "nin_small",
    "prepare_model",
    "regnetx32",
    "register_model",
    "resnet18",
    "resnet18_small",
    "resnet34",
    "transition_block",
    "vgg11",
    "vgg_small",
]
