"""LeNet-5 as d2l writes it, and a modern ReLU/max-pool variant (d2l §7.6; LeCun et al. 1998)."""

from __future__ import annotations

from torch import nn

from cnnlab.classifier import Classifier
from cnnlab.models.registry import prepare_model, register_model

__all__ = ["LeNet", "LeNetReLU", "lenet", "lenet_relu"]


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
        self.save_hyperparameters()
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
        self.save_hyperparameters()
        self.net = _lenet_net(num_classes, nn.ReLU, nn.MaxPool2d)


@register_model("lenet")
def lenet(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.1
) -> LeNet:
    """The book's LeNet-5 (d2l §7.6), materialized for `in_channels` x `image_size` inputs (at least 12)."""
    model = LeNet(lr=lr, num_classes=num_classes)
    return prepare_model(model, "lenet", in_channels=in_channels, image_size=image_size, num_classes=num_classes, lr=lr)


@register_model("lenet-relu")
def lenet_relu(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.1
) -> LeNetReLU:
    """LeNet-5 with ReLU and max pooling, materialized for `in_channels` x `image_size` inputs."""
    model = LeNetReLU(lr=lr, num_classes=num_classes)
    return prepare_model(
        model, "lenet-relu", in_channels=in_channels, image_size=image_size, num_classes=num_classes, lr=lr
    )
