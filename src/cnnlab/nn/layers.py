"""Layers built on cnnlab's operators and the blocks of d2l's models (§7.2, §8.2, §8.6.2, §8.6.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.nn.ops import corr2d


class Conv2D(nn.Module):
    """A learnable single-channel 2-D convolution over :func:`cnnlab.nn.ops.corr2d` (d2l §7.2.3).

    Args:
        kernel_size: (kh, kw) of the kernel; the weight starts uniform in [0, 1) as in the book.

    Shape:
        x: (H, W) -> (H - kh + 1, W - kw + 1).
    """

    def __init__(self, kernel_size):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(kernel_size))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return corr2d(x, self.weight) + self.bias


def white_balance(X: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each image's colour cast removed: every channel standardized over the image, then given the mean over
    the channels of their means and standard deviations (a grey-world white balance that also evens the channels'
    contrast). An image's overall brightness and contrast are kept; its channels become equal where they were
    affine maps of one grey image (a tint). Computed in float32; idempotent up to ``eps``.

    Shape:
        (N, C, H, W) -> (N, C, H, W).
    """
    x = X.float()
    mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), correction=0, keepdim=True) + eps
    return ((x - mean) / std * std.mean(1, keepdim=True) + mean.mean(1, keepdim=True)).to(X.dtype)


def shifted_views(X: torch.Tensor, max_shift: int) -> list[torch.Tensor]:
    """Every shift of each image by up to ``max_shift`` pixels down/up and right/left, the edge pixels repeated
    into the gap: the views that test-time augmentation averages over a net trained on random crops. In
    row-major order of the shift ``(dy, dx)``, from ``(-max_shift, -max_shift)``; the unshifted view is the middle
    one. Pixel ``(i, j)`` of view ``(dy, dx)`` is the image's pixel ``(i + dy, j + dx)``, clamped to the image.

    Shape:
        (N, C, H, W) -> a list of ``(2 * max_shift + 1) ** 2`` tensors (N, C, H, W).
    """
    s = max_shift
    _, _, height, width = X.shape
    padded = F.pad(X, (s, s, s, s), mode="replicate")
    return [padded[:, :, s + dy:s + dy + height, s + dx:s + dx + width]
            for dy in range(-s, s + 1) for dx in range(-s, s + 1)]


# --- blocks ---


def vgg_block(num_convs: int, out_channels: int, in_channels: int | None = None) -> nn.Sequential:
    """`num_convs` 3x3 convs with ReLU, then a 2x2 max pool (d2l §8.2.1; Simonyan & Zisserman 2014).

    Args:
        num_convs: number of conv + ReLU pairs.
        out_channels: channels of every conv in the block.
        in_channels: channels of the block's input; None makes the first conv lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, out_channels, ceil(H / 2), ceil(W / 2)).
    """
    # The seed writes nn.Conv2d(out_channels, out_channels) for every conv, which breaks on the first conv
    # of each block (its input has the previous block's width). What it means is: the first conv takes the
    # block's input, the others take `out_channels`.
    first = (
        nn.LazyConv2d(out_channels, kernel_size=3, padding=1)
        if in_channels is None
        else nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    )
    layers: list[nn.Module] = [first, nn.ReLU()]
    for _ in range(num_convs - 1):
        layers += [nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
    # ceil_mode=True only differs from the book's floor on odd sizes, so 224 -> 7 and 96 -> 3 are unchanged,
    # while a native 28x28 Fashion-MNIST image survives five blocks (28, 14, 7, 4, 2, 1) instead of
    # shrinking to zero at the fifth (7 -> 3 -> 1 -> 0).
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """The residual block of ResNet: two 3x3 conv + BN, plus the input (d2l §8.6.2; He et al. 2016).

    As in the book, the convs keep their biases and the optional 1x1 projection shortcut has no BN, so
    parameter counts match d2l, not torchvision.

    Args:
        num_channels: output channels of both 3x3 convs.
        use_1x1conv: project the shortcut with a strided 1x1 conv; needed when the shape changes.
        strides: stride of the first 3x3 conv (and of the 1x1 shortcut).
        in_channels: channels of the input; None makes the input-facing convs lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, num_channels, ceil(H / strides), ceil(W / strides)).
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, in_channels: int | None = None):
        super().__init__()
        if not use_1x1conv and (strides != 1 or (in_channels is not None and in_channels != num_channels)):
            raise ValueError(
                f"Residual(num_channels={num_channels}, strides={strides}, in_channels={in_channels}) "
                "changes the input's shape, so the shortcut cannot be added; pass use_1x1conv=True."
            )

        def conv(out_channels: int, kernel_size: int, stride: int) -> nn.Module:
            padding = kernel_size // 2
            if in_channels is None:
                return nn.LazyConv2d(out_channels, kernel_size, stride=stride, padding=padding)
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

        self.conv1 = conv(num_channels, 3, strides)
        # conv2 and both BNs see `num_channels` channels whatever the input, so they need not be lazy.
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = conv(num_channels, 1, strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = torch.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return torch.relu(Y + X)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv, each with BN, plus the input (d2l §8.6.5).

    After Xie et al. (2017). As in the book, `groups` is the number of channels in each group (RegNet's group
    width g), not the number of groups: the 3x3 conv has `bot_channels // groups` groups, so
    `ResNeXtBlock(32, 16, 1)` splits its 32 bottleneck channels into 2 groups of 16. The convs keep their
    biases and the optional 1x1 projection shortcut has its own BN, as in the book.

    Args:
        num_channels: output channels of the block.
        groups: channels per group of the 3x3 conv (the group width); it must divide the bottleneck width.
        bot_mul: bottleneck width as a multiple of `num_channels`: `bot_channels = round(num_channels * bot_mul)`.
        use_1x1conv: project the shortcut with a strided 1x1 conv + BN; needed when the shape changes.
        strides: stride of the 3x3 conv (and of the 1x1 shortcut).
        in_channels: channels of the input; None makes the input-facing convs and BNs lazy, as in the book.

    Shape:
        (N, C_in, H, W) -> (N, num_channels, ceil(H / strides), ceil(W / strides)).
    """

    def __init__(self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False,
                 strides: int = 1, in_channels: int | None = None):
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        if groups < 1 or bot_channels % groups:
            raise ValueError(
                f"ResNeXtBlock: groups={groups} (channels per group) must divide the bottleneck width "
                f"round({num_channels} * {bot_mul}) = {bot_channels}; pick groups among its divisors."
            )
        if not use_1x1conv and (strides != 1 or (in_channels is not None and in_channels != num_channels)):
            raise ValueError(
                f"ResNeXtBlock(num_channels={num_channels}, strides={strides}, in_channels={in_channels}) "
                "changes the input's shape, so the shortcut cannot be added; pass use_1x1conv=True."
            )

        def conv(out_channels: int, stride: int) -> nn.Module:  # a 1x1 conv that reads the block's input
            if in_channels is None:
                return nn.LazyConv2d(out_channels, kernel_size=1, stride=stride)
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)

        self.conv1 = conv(bot_channels, 1)
        self.conv2 = nn.Conv2d(bot_channels, bot_channels, kernel_size=3, stride=strides, padding=1,
                               groups=bot_channels // groups)
        self.conv3 = nn.Conv2d(bot_channels, num_channels, kernel_size=1)
        # Every BN follows a conv whose width is known, so none needs to be lazy (the book's are).
        self.bn1 = nn.BatchNorm2d(bot_channels)
        self.bn2 = nn.BatchNorm2d(bot_channels)
        self.bn3 = nn.BatchNorm2d(num_channels)
        self.conv4 = conv(num_channels, strides) if use_1x1conv else None
        self.bn4 = nn.BatchNorm2d(num_channels) if use_1x1conv else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = torch.relu(self.bn1(self.conv1(X)))
        Y = torch.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return torch.relu(Y + X)
