"""AnyNet and RegNetX-32: networks from the RegNet design space (d2l §8.8; Radosavovic et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.registry import prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn
from cnnlab.nn.layers import ResNeXtBlock

__all__ = ["REGNETX32_ARCH", "AnyNet", "RegNetX32", "regnetx32"]

# (depth, num_channels, groups, bot_mul) per stage: d2l §8.8.3's RegNetX with 32 stem channels, group
# width 16 and no bottleneck (bot_mul 1), two stages of depths 4 and 6 and widths 32 and 80.
REGNETX32_ARCH = ((4, 32, 16, 1), (6, 80, 16, 1))


class AnyNet(Classifier):
    """The AnyNet design space of d2l §8.8.1: a stem, stages of ResNeXt blocks, and a head.

    The stem is a 3x3 stride-2 conv with BN and ReLU; each stage starts with a stride-2 `ResNeXtBlock`
    with a projection shortcut, followed by `depth - 1` shape-keeping ones; the head is global average
    pooling and a linear layer. `self.net` holds child `0` (the stem), `stage1`, `stage2`, ... and `head`.

    Args:
        arch: one `(depth, num_channels, groups, bot_mul)` tuple per stage; `groups` is the group width
            (channels per group), as in `ResNeXtBlock`.
        stem_channels: output channels of the stem.
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); the stem and each stage halve H and W (rounding up).
    """

    def __init__(
        self,
        arch: Sequence[tuple[int, int, int, float]],
        stem_channels: int,
        lr: float = 0.1,
        num_classes: int = 10,
        in_channels: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters(arch=arch, stem_channels=stem_channels, lr=lr, num_classes=num_classes,
                                  in_channels=in_channels)
        self.net = nn.Sequential(self.stem(stem_channels, in_channels))
        width = stem_channels
        for i, s in enumerate(arch):
            self.net.add_module(f"stage{i + 1}", self.stage(*s, in_channels=width))
            width = s[1]
        self.net.add_module("head", nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(width, num_classes)
        ))  # fmt: skip
        self.net.apply(init_cnn)

    def stem(self, num_channels: int, in_channels: int = 1) -> nn.Sequential:
        """A 3x3 stride-2 conv, BN and ReLU (d2l §8.8.1)."""
        return nn.Sequential(
            nn.Conv2d(in_channels, num_channels, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(num_channels), nn.ReLU(),
        )  # fmt: skip

    def stage(self, depth: int, num_channels: int, groups: int, bot_mul: float,
              in_channels: int | None = None) -> nn.Sequential:
        """`depth` ResNeXt blocks; the first halves the size and projects its shortcut (d2l §8.8.1)."""
        blk = [ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv=True, strides=2, in_channels=in_channels)]
        for _ in range(depth - 1):
            blk.append(ResNeXtBlock(num_channels, groups, bot_mul, in_channels=num_channels))
        return nn.Sequential(*blk)


class RegNetX32(AnyNet):
    """RegNetX-32, the small RegNetX that d2l §8.8.3 trains on Fashion-MNIST: `REGNETX32_ARCH`, 32 stem channels.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); 96x96 images leave the stages at 12x12.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1):
        super().__init__(REGNETX32_ARCH, 32, lr, num_classes, in_channels)


@register_model("regnetx32", image_size=96)
def regnetx32(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 96, lr: float = 0.05
) -> RegNetX32:
    """The book's RegNetX-32 (d2l §8.8.3), trained there on Fashion-MNIST resized to 96 with lr 0.05.

    It also takes native 28x28 images (the stem and the two stages leave them at 4x4).
    """
    model = RegNetX32(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
