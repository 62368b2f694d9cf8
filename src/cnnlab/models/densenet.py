"""DenseNet: dense blocks that concatenate every layer's output, joined by transition layers (d2l §8.7;
Huang et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.registry import prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn

__all__ = ["DenseBlock", "DenseNet", "conv_block", "densenet", "densenet_small", "transition_block"]


def _bn(in_channels: int | None) -> nn.Module:
    return nn.LazyBatchNorm2d() if in_channels is None else nn.BatchNorm2d(in_channels)


def _conv(in_channels: int | None, out_channels: int, **kw) -> nn.Module:
    return nn.LazyConv2d(out_channels, **kw) if in_channels is None else nn.Conv2d(in_channels, out_channels, **kw)


def conv_block(num_channels: int, in_channels: int | None = None) -> nn.Sequential:
    """BN, ReLU and a 3x3 conv: ResNet's later "pre-activation" order (d2l §8.7.2).

    Args:
        num_channels: output channels of the conv.
        in_channels: channels of the input; None makes the BN and the conv lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, num_channels, H, W).
    """
    return nn.Sequential(_bn(in_channels), nn.ReLU(), _conv(in_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """`num_convs` conv blocks, each fed the block's input concatenated with every earlier output (d2l §8.7.2).

    Args:
        num_convs: number of conv blocks.
        num_channels: output channels of each conv block (the growth rate).
        in_channels: channels of the input; None makes the conv blocks lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, C_in + num_convs * num_channels, H, W).
    """

    def __init__(self, num_convs: int, num_channels: int, in_channels: int | None = None):
        super().__init__()
        layers = []
        for i in range(num_convs):
            c_in = None if in_channels is None else in_channels + i * num_channels
            layers.append(conv_block(num_channels, c_in))
        self.net = nn.Sequential(*layers)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # (N, C + num_channels, H, W): the input grows by each output
        return X


def transition_block(num_channels: int, in_channels: int | None = None) -> nn.Sequential:
    """BN, ReLU, a 1x1 conv to `num_channels` and a 2x2/2 average pool (d2l §8.7.3).

    Args:
        num_channels: output channels (DenseNet halves the width here).
        in_channels: channels of the input; None makes the BN and the conv lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, num_channels, H // 2, W // 2).
    """
    return nn.Sequential(
        _bn(in_channels), nn.ReLU(),
        _conv(in_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )  # fmt: skip


class DenseNet(Classifier):
    """DenseNet as d2l §8.7.4 builds it: a ResNet-style stem, dense blocks with halving transitions between
    them, then BN, ReLU, global average pooling and a linear layer.

    `self.net` holds the stem (child `0`), `dense_blk1`, `tran_blk1`, ..., `dense_blk{len(arch)}` and `last`,
    as in the book.

    Args:
        num_channels: channels of the stem; each dense block adds `num_convs * growth_rate` and each
            transition halves the total (64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248 in the book).
        growth_rate: output channels of each conv block.
        arch: number of conv blocks in each dense block.
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.
        small_stem: a 3x3 stride-1 stem conv (padding 1) instead of 7x7 stride 2, keeping the max pool, so
            that native 28x28 images reach the last dense block at 1x1 (28 -> 14 -> 7 -> 3 -> 1) rather
            than shrinking to nothing; the same sizes the book's stem gives 56x56 images.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes). The stem divides H and W by 4 (by 2 with small_stem),
        rounding up, and each transition by 2 more, rounding down, so the book's (4, 4, 4, 4) needs at
        least 29x29 (15x15 with small_stem).
    """

    def __init__(
        self,
        num_channels: int = 64,
        growth_rate: int = 32,
        arch: Sequence[int] = (4, 4, 4, 4),
        lr: float = 0.1,
        num_classes: int = 10,
        in_channels: int = 1,
        small_stem: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(num_channels=num_channels, growth_rate=growth_rate, arch=arch, lr=lr,
                                  num_classes=num_classes, in_channels=in_channels, small_stem=small_stem)
        self.net = nn.Sequential(self.b1(num_channels, in_channels, small_stem))
        for i, num_convs in enumerate(arch):
            self.net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate, in_channels=num_channels))
            c_in, num_channels = num_channels, num_channels + num_convs * growth_rate
            if i != len(arch) - 1:
                c_in, num_channels = num_channels, num_channels // 2
                self.net.add_module(f"tran_blk{i + 1}", transition_block(num_channels, in_channels=c_in))
        self.net.add_module("last", nn.Sequential(
            nn.BatchNorm2d(num_channels), nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
            nn.Linear(num_channels, num_classes),
        ))  # fmt: skip
        self.net.apply(init_cnn)

    def b1(self, num_channels: int = 64, in_channels: int = 1, small_stem: bool = False) -> nn.Sequential:
        """The stem: conv, BN, ReLU and a 3x3/2 max pool (d2l §8.7.4).

        The book hard-codes 64 channels here while counting the following widths from `num_channels`; the
        stem takes `num_channels`, so that any value adds up (64 gives the book's network).
        """
        kw = dict(kernel_size=3, stride=1, padding=1) if small_stem else dict(kernel_size=7, stride=2, padding=3)
        return nn.Sequential(
            nn.Conv2d(in_channels, num_channels, **kw), nn.BatchNorm2d(num_channels), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )  # fmt: skip


def _densenet(small_stem: bool, *, num_classes, in_channels, image_size, lr, num_channels, growth_rate,
              arch) -> DenseNet:
    model = DenseNet(num_channels, growth_rate, tuple(arch), lr=lr, num_classes=num_classes,
                     in_channels=in_channels, small_stem=small_stem)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("densenet", image_size=96)
def densenet(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 96,
    lr: float = 0.01,
    num_channels: int = 64,
    growth_rate: int = 32,
    arch: Sequence[int] = (4, 4, 4, 4),
) -> DenseNet:
    """The book's DenseNet (d2l §8.7), trained there on Fashion-MNIST resized to 96 with lr 0.01."""
    return _densenet(False, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     lr=lr, num_channels=num_channels, growth_rate=growth_rate, arch=arch)


@register_model("densenet-small", image_size=28)
def densenet_small(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.01,
    num_channels: int = 64,
    growth_rate: int = 32,
    arch: Sequence[int] = (4, 4, 4, 4),
) -> DenseNet:
    """DenseNet with a 3x3 stride-1 stem conv for native 28x28 images (see `DenseNet`'s `small_stem`).

    Same parameters as the book's but for the stem (9 weights per channel instead of 49); one 28x28 image
    costs about a third of the book's at 96x96.
    """
    return _densenet(True, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size, lr=lr, num_channels=num_channels, growth_rate=growth_rate, arch=arch)
