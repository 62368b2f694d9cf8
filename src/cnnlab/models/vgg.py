"""VGG: a network read from a table of blocks (d2l §8.2; Simonyan & Zisserman 2014)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.registry import MODERN_RECIPE, prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn
from cnnlab.nn.layers import vgg_block

__all__ = ["VGG", "VGG11_ARCH", "VGG_SMALL_ARCH", "vgg11", "vgg_small"]

# (num_convs, out_channels) per block.
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
# d2l §8.2.3's narrower VGG-11 (channels / 4) that trains on Fashion-MNIST in reasonable time.
VGG_SMALL_ARCH = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))


class VGG(Classifier):
    """VGG from an architecture table of `(num_convs, out_channels)` blocks (d2l §8.2.2).

    Args:
        arch: one `(num_convs, out_channels)` pair per block, e.g. `VGG11_ARCH`.
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels; None makes the first conv lazy, as in the book.

    Shape:
        (N, C, H, W) -> (N, num_classes). The first Linear is lazy because its width,
        `arch[-1][1] * ceil(H / 32) * ceil(W / 32)`, depends on the image size: run one forward before
        counting parameters or building the optimizer.
    """

    def __init__(
        self,
        arch: Sequence[tuple[int, int]],
        lr: float = 0.1,
        num_classes: int = 10,
        in_channels: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(arch=arch, lr=lr, num_classes=num_classes, in_channels=in_channels)
        conv_blks = []
        for num_convs, out_channels in arch:
            conv_blks.append(vgg_block(num_convs, out_channels, in_channels))
            in_channels = out_channels
        # The seed writes nn.Linear(4096), which is not a valid call (nn.Linear needs in_features): the
        # book's code uses LazyLinear. Only the first needs to be lazy; the others' inputs are known.
        self.net = nn.Sequential(
            *conv_blks, nn.Flatten(),
            nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )  # fmt: skip
        self.net.apply(init_cnn)


@register_model("vgg11", image_size=32, **MODERN_RECIPE)
def vgg11(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 224, lr: float = 0.05
) -> VGG:
    """VGG-11 (d2l §8.2.2; Simonyan & Zisserman 2014, configuration A), for `in_channels` x `image_size`.

    The first Linear's width follows the image size: 25088 inputs at 224, 512 at 28.
    """
    model = VGG(VGG11_ARCH, lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("vgg-small", image_size=32, **MODERN_RECIPE)
def vgg_small(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 224, lr: float = 0.05
) -> VGG:
    """The narrow VGG-11 that d2l §8.2.3 trains on Fashion-MNIST resized to 224 (with lr 0.01 and plain SGD;
    cnnlab's recipe trains it at 32x32 with momentum and one-cycle at lr 0.05)."""
    model = VGG(VGG_SMALL_ARCH, lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
