"""LeNet-5 as d2l writes it, a modern ReLU/max-pool variant (d2l §7.6; LeCun et al. 1998), and LeNet with
batch normalization, from scratch and concise (d2l §8.5.4-8.5.5; Ioffe & Szegedy 2015)."""

from __future__ import annotations

from torch import nn

from cnnlab.models.registry import MODERN_RECIPE, prepare_model, register_model
from cnnlab.nn.batchnorm import BatchNorm
from cnnlab.nn.classifier import Classifier, init_cnn

__all__ = ["BNLeNet", "BNLeNetScratch", "LeNet", "LeNetReLU", "lenet", "lenet_bn", "lenet_bn_scratch", "lenet_relu"]


def _lenet_net(num_classes: int, activation: type[nn.Module], pool: type[nn.Module]) -> nn.Sequential:
    # Lazy layers as in the book: the first Linear's width (16 * 5 * 5 at 28x28) depends on the image size,
    # so a dry forward (Classifier.apply_init, or the registry builders) must precede the optimizer.
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5, padding=2), activation(),
        pool(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), activation(),
        pool(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.LazyLinear(120), activation(),
        nn.LazyLinear(84), activation(),
        nn.LazyLinear(num_classes),
    )  # fmt: skip


class LeNet(Classifier):
    """The LeNet-5 model exactly as d2l §7.6 builds it: sigmoid activations and average pooling.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.

    Shape:
        (N, C, H, W) -> (N, num_classes); 61,706 parameters on 1x28x28 with 10 classes.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes)
        self.net = _lenet_net(num_classes, nn.Sigmoid, nn.AvgPool2d)


class LeNetReLU(Classifier):
    """LeNet-5 with the modern choices of d2l §7.6's exercises: ReLU activations and max pooling.

    Same shapes and parameter count as `LeNet`; it trains much faster with plain SGD because ReLU does not
    saturate.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.

    Shape:
        (N, C, H, W) -> (N, num_classes).
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes)
        self.net = _lenet_net(num_classes, nn.ReLU, nn.MaxPool2d)


def _bn_lenet_net(num_classes: int, in_channels: int, norm2d, norm1d) -> nn.Sequential:
    # The book's order: each conv or linear layer, then BN, then the activation. Unlike LeNet, the first
    # conv has no padding (28 -> 24 -> 12 -> 8 -> 4). The first Linear stays lazy: its width, 16 * 4 * 4 at
    # 28x28, follows the image size.
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5), norm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), norm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.LazyLinear(120), norm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), norm1d(84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


class BNLeNetScratch(Classifier):
    """LeNet with the from-scratch `BatchNorm` layer of d2l §8.5.4 after every conv and hidden linear layer.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels (the book's convs are lazy; only the first Linear is here).

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); 44,878 parameters on 1x28x28 with 10 classes.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes, in_channels=in_channels)
        self.net = _bn_lenet_net(
            num_classes, in_channels, lambda c: BatchNorm(c, num_dims=4), lambda c: BatchNorm(c, num_dims=2)
        )
        self.net.apply(init_cnn)  # the eager layers; the lazy Linear is initialized once materialized


class BNLeNet(Classifier):
    """LeNet with torch's `nn.BatchNorm2d` / `nn.BatchNorm1d`: d2l §8.5.5's concise version of `BNLeNetScratch`.

    The same network, parameter count and running statistics as `BNLeNetScratch` (cnnlab's `BatchNorm`
    updates the moving variance as torch does), with torch's fused kernels.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes).
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes, in_channels=in_channels)
        self.net = _bn_lenet_net(num_classes, in_channels, nn.BatchNorm2d, nn.BatchNorm1d)
        self.net.apply(init_cnn)  # the eager layers; the lazy Linear is initialized once materialized


@register_model("lenet")
def lenet(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.1
) -> LeNet:
    """The book's LeNet-5 (d2l §7.6), materialized for `in_channels` x `image_size` inputs (at least 12)."""
    return prepare_model(LeNet(lr=lr, num_classes=num_classes), in_channels=in_channels, image_size=image_size)


@register_model("lenet-relu", **MODERN_RECIPE)
def lenet_relu(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.05
) -> LeNetReLU:
    """LeNet-5 with ReLU and max pooling, materialized for `in_channels` x `image_size` inputs."""
    return prepare_model(LeNetReLU(lr=lr, num_classes=num_classes), in_channels=in_channels, image_size=image_size)


# The BatchNorm LeNets train in fp32 and NCHW: for networks this small, bf16 autocast and channels_last cost
# more in casts and layout changes around BatchNorm than they save (AMD EPYC, 2 cores, 30-batch epochs against
# the plain loop: lenet-bn 0.95x in fp32 NCHW, 0.79x with both; lenet-bn-scratch 1.02x and 0.84x).
# `--bf16` and `--channels-last` still turn them on.
_SMALL_BN = dict(image_size=28, bf16=False, channels_last=False)


@register_model("lenet-bn", **_SMALL_BN)
def lenet_bn(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.1
) -> BNLeNet:
    """LeNet with torch's batch normalization (d2l §8.5.5), trained there with lr 0.1 on 28x28 images."""
    model = BNLeNet(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("lenet-bn-scratch", **_SMALL_BN)
def lenet_bn_scratch(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.1
) -> BNLeNetScratch:
    """LeNet with the from-scratch `BatchNorm` (d2l §8.5.4), trained there with lr 0.1 on 28x28 images."""
    model = BNLeNetScratch(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
