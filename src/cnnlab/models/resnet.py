"""ResNet built from d2l's residual blocks (d2l §8.6; He et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from cnnlab.models.registry import MODERN_RECIPE, prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn
from cnnlab.nn.layers import Residual

__all__ = ["RESNET18_ARCH", "RESNET34_ARCH", "ResNet", "ResNet18", "resnet18", "resnet18_small", "resnet34"]

# (num_residuals, num_channels) per stage.
RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))
RESNET34_ARCH = ((3, 64), (4, 128), (6, 256), (3, 512))


class ResNet(Classifier):
    """ResNet from an architecture table of `(num_residuals, num_channels)` stages (d2l §8.6.3).

    `self.net` holds `b1` (the stem), `b2`, ... (one per stage) and `last` (global average pool, linear),
    as in the book.

    Args:
        arch: one `(num_residuals, num_channels)` pair per stage, e.g. `RESNET18_ARCH`.
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        small_stem: use a 3x3 stride-1 conv stem with no max pool, as CIFAR ResNets do, so 28x28 images are
            not cut to 7x7 before the first stage; False keeps the book's 7x7/2 conv + 3x3/2 max pool.
        in_channels: image channels; None makes the stem's conv lazy, as in the book. The stages' input
            widths follow from `arch`, so they are never lazy.

    Shape:
        (N, C, H, W) -> (N, num_classes); the book's stem divides H and W by 4, each stage after the first
        by 2 more.
    """

    def __init__(
        self,
        arch: Sequence[tuple[int, int]],
        lr: float = 0.1,
        num_classes: int = 10,
        small_stem: bool = False,
        in_channels: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(arch=arch, lr=lr, num_classes=num_classes, small_stem=small_stem,
                                  in_channels=in_channels)
        # The stem's width is the first stage's (64 in the book, which hard-codes it): the first stage has
        # no projection shortcut, so any other width could not be added to its input.
        width = arch[0][1]
        self.net = nn.Sequential()
        self.net.add_module("b1", self.b1(width, in_channels, small_stem))
        for i, (num_residuals, num_channels) in enumerate(arch):
            block = self.block(num_residuals, num_channels, first_block=(i == 0), in_channels=width)
            self.net.add_module(f"b{i + 2}", block)
            width = num_channels
        # The seed writes nn.Linear(num_classes), which is not a valid call; the width is the last stage's.
        self.net.add_module(
            "last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(width, num_classes))
        )
        self.net.apply(init_cnn)

    def b1(self, out_channels: int = 64, in_channels: int | None = None, small_stem: bool = False) -> nn.Sequential:
        """The stem: conv, BN, ReLU, and (book stem only) a 3x3/2 max pool (d2l §8.6.3)."""
        if small_stem:
            kw = dict(kernel_size=3, stride=1, padding=1)
        else:
            kw = dict(kernel_size=7, stride=2, padding=3)
        if in_channels is None:
            conv = nn.LazyConv2d(out_channels, **kw)
        else:
            conv = nn.Conv2d(in_channels, out_channels, **kw)
        layers = [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]
        if not small_stem:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        return nn.Sequential(*layers)

    def block(
        self, num_residuals: int, num_channels: int, first_block: bool = False, in_channels: int | None = None
    ) -> nn.Sequential:
        """One stage: residual blocks of `num_channels`, halving the size unless it is the first (d2l §8.6.3).

        The first stage follows the stem's max pool, which has already halved the size.
        """
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True, strides=2, in_channels=in_channels))
            else:
                blk.append(Residual(num_channels, in_channels=in_channels))
            in_channels = num_channels
        return nn.Sequential(*blk)


class ResNet18(ResNet):
    """ResNet-18: four stages of two residual blocks (d2l §8.6.3).

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        small_stem: see `ResNet`.
        in_channels: image channels; None makes the stem's conv lazy.

    Shape:
        (N, C, H, W) -> (N, num_classes); 11,178,378 parameters for 1 channel and 10 classes.
    """

    def __init__(
        self, lr: float = 0.1, num_classes: int = 10, small_stem: bool = False, in_channels: int | None = None
    ):
        super().__init__(RESNET18_ARCH, lr, num_classes, small_stem, in_channels)


def _resnet(arch: Sequence[tuple[int, int]], small_stem: bool, *, image_size, **kwargs: Any) -> ResNet:
    model = ResNet(arch, small_stem=small_stem, **kwargs)
    return prepare_model(model, in_channels=kwargs["in_channels"], image_size=image_size)


@register_model("resnet18", image_size=96, **MODERN_RECIPE)
def resnet18(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 96, lr: float = 0.05
) -> ResNet:
    """The book's ResNet-18 (d2l §8.6.3) with its 7x7/2 stem, trained there on 96x96 Fashion-MNIST."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, lr=lr)
    return _resnet(RESNET18_ARCH, False, **kwargs)


@register_model("resnet18-small", image_size=28, augment=True, label_smoothing=0.1, **MODERN_RECIPE)
def resnet18_small(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.05
) -> ResNet:
    """ResNet-18 with a 3x3 stride-1 stem and no max pool, for native 28x28 or 32x32 images (CIFAR style)."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, lr=lr)
    return _resnet(RESNET18_ARCH, True, **kwargs)


@register_model("resnet34", image_size=96, **MODERN_RECIPE)
def resnet34(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 96, lr: float = 0.05
) -> ResNet:
    """ResNet-34 (He et al. 2016, table 1) from d2l's residual blocks, with the book's stem."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, lr=lr)
    return _resnet(RESNET34_ARCH, False, **kwargs)
