"""GoogLeNet: a stem and nine Inception blocks (d2l §8.4; Szegedy et al. 2015).

The class keeps the book's spelling, `GoogleNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn

__all__ = ["GOOGLENET_B3", "GOOGLENET_B4", "GOOGLENET_B5", "GoogleNet", "Inception", "googlenet"]

# (c1, (c2 reduce, c2), (c3 reduce, c3), c4) per Inception block, as d2l §8.4.2 lists them.
InceptionSpec = tuple[int, tuple[int, int], tuple[int, int], int]
GOOGLENET_B3: tuple[InceptionSpec, ...] = ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64))
GOOGLENET_B4: tuple[InceptionSpec, ...] = (
    (192, (96, 208), (16, 48), 64),
    (160, (112, 224), (24, 64), 64),
    (128, (128, 256), (24, 64), 64),
    (112, (144, 288), (32, 64), 64),
    (256, (160, 320), (32, 128), 128),
)
GOOGLENET_B5: tuple[InceptionSpec, ...] = ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128))


class Inception(nn.Module):
    """The Inception block: four parallel branches concatenated along the channels (d2l §8.4.1).

    Branch 1 is a 1x1 conv; branch 2 a 1x1 conv then a 3x3; branch 3 a 1x1 conv then a 5x5; branch 4 a
    3x3 max pool (stride 1) then a 1x1 conv. Every conv is followed by ReLU and keeps the height and width.

    Args:
        c1: channels of branch 1.
        c2, c3: (reduction, output) channels of branches 2 and 3.
        c4: channels of branch 4.
        in_channels: channels of the input; None makes the input-facing convs lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, c1 + c2[1] + c3[1] + c4, H, W).
    """

    def __init__(self, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int, in_channels: int | None = None):
        super().__init__()

        def conv(out_channels: int, **kw) -> nn.Module:  # a conv that reads the block's input
            if in_channels is None:
                return nn.LazyConv2d(out_channels, **kw)
            return nn.Conv2d(in_channels, out_channels, **kw)

        self.out_channels = c1 + c2[1] + c3[1] + c4
        self.b1_1 = conv(c1, kernel_size=1)
        self.b2_1 = conv(c2[0], kernel_size=1)
        self.b2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.b3_1 = conv(c3[0], kernel_size=1)
        self.b3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = conv(c4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


def _inceptions(specs: Sequence[InceptionSpec], in_channels: int) -> list[Inception]:
    blocks = []
    for spec in specs:
        blocks.append(Inception(*spec, in_channels=in_channels))
        in_channels = blocks[-1].out_channels
    return blocks


class GoogleNet(Classifier):
    """GoogLeNet as d2l §8.4.2 builds it: modules `b1` to `b5`, then a linear layer.

    `b1` is a 7x7/2 conv and a 3x3/2 max pool; `b2` a 1x1 and a 3x3 conv and a max pool; `b3`, `b4` and
    `b5` hold 2, 5 and 2 Inception blocks, the first two ending with a 3x3/2 max pool and `b5` with global
    average pooling. One image channel and 10 classes, and no auxiliary classifiers, as in the book.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); H and W are divided by 32 (rounding up) before the global
        pool, so any size from 1x1 works and every parameter exists before the first forward pass.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes, in_channels=in_channels)
        self.net = nn.Sequential(
            self.b1(in_channels), self.b2(), self.b3(), self.b4(), self.b5(), nn.Linear(1024, num_classes)
        )
        self.net.apply(init_cnn)

    def b1(self, in_channels: int = 1) -> nn.Sequential:
        """The stem: a 7x7 stride-2 conv with 64 channels, ReLU and a 3x3/2 max pool."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )  # fmt: skip

    def b2(self) -> nn.Sequential:
        """A 1x1 conv (64) and a 3x3 conv (192), each with ReLU, then a 3x3/2 max pool."""
        return nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )  # fmt: skip

    def b3(self) -> nn.Sequential:
        """Two Inception blocks, 192 -> 256 -> 480 channels, then a 3x3/2 max pool."""
        return nn.Sequential(*_inceptions(GOOGLENET_B3, 192), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b4(self) -> nn.Sequential:
        """Five Inception blocks, 480 -> 512, 512, 512, 528, 832 channels, then a 3x3/2 max pool."""
        return nn.Sequential(*_inceptions(GOOGLENET_B4, 480), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b5(self) -> nn.Sequential:
        """Two Inception blocks, 832 -> 832 -> 1024 channels, global average pooling and flattening."""
        return nn.Sequential(*_inceptions(GOOGLENET_B5, 832), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


@register_model("googlenet", image_size=96)
def googlenet(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 96, lr: float = 0.01
) -> GoogleNet:
    """The book's GoogLeNet (d2l §8.4), trained there on Fashion-MNIST resized to 96 with lr 0.01.

    It also takes native 28x28 images (the stem cuts them to 7x7), so it needs no small variant.
    """
    model = GoogleNet(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
