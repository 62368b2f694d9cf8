"""Network in Network: blocks of a conv and two 1x1 convs, and no dense layer (d2l §8.3; Lin et al. 2013)."""

from __future__ import annotations

from torch import nn

from cnnlab.models.registry import prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn

__all__ = ["NiN", "nin", "nin_block", "nin_small"]


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int,
              in_channels: int | None = None) -> nn.Sequential:
    """A NiN block: a conv, then two 1x1 convs acting as a per-pixel MLP, each with ReLU (d2l §8.3.1).

    Args:
        out_channels: channels of all three convs.
        kernel_size, strides, padding: of the first conv (the book's argument names).
        in_channels: channels of the input; None makes the first conv lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, out_channels, (H + 2 padding - kernel_size) // strides + 1, same for W).
    """
    first = (
        nn.LazyConv2d(out_channels, kernel_size, strides, padding)
        if in_channels is None
        else nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding)
    )
    return nn.Sequential(
        first, nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )  # fmt: skip


class NiN(Classifier):
    """NiN as in d2l §8.3.2: four NiN blocks with max pools, the last one `num_classes` wide, then global
    average pooling in place of dense layers.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits (the width of the last block).
        in_channels: image channels.
        small_stem: make the first block's conv 3x3 stride 1 (padding 1) instead of 11x11 stride 4, so that
            native 28x28 images pass the three max pools (28 -> 13 -> 6 -> 2); the rest is the book's. False
            keeps the book's block, which needs at least 67x67.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); no layer depends on H and W, so every parameter exists
        before the first forward pass.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1, small_stem: bool = False):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes, in_channels=in_channels, small_stem=small_stem)
        stem = (3, 1, 1) if small_stem else (11, 4, 0)  # kernel_size, strides, padding
        self.net = nn.Sequential(
            nin_block(96, *stem, in_channels=in_channels),
            nn.MaxPool2d(3, stride=2),
            nin_block(256, kernel_size=5, strides=1, padding=2, in_channels=96),
            nn.MaxPool2d(3, stride=2),
            nin_block(384, kernel_size=3, strides=1, padding=1, in_channels=256),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            nin_block(num_classes, kernel_size=3, strides=1, padding=1, in_channels=384),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
        self.net.apply(init_cnn)


@register_model("nin", image_size=224)
def nin(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 224, lr: float = 0.05
) -> NiN:
    """The book's NiN (d2l §8.3), trained there on Fashion-MNIST resized to 224 with lr 0.05."""
    model = NiN(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("nin-small", image_size=28)
def nin_small(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.05
) -> NiN:
    """NiN with a 3x3 stride-1 first conv for native 28x28 images (see `NiN`'s `small_stem`)."""
    model = NiN(lr=lr, num_classes=num_classes, in_channels=in_channels, small_stem=True)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
