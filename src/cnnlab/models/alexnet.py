"""AlexNet as d2l builds it for Fashion-MNIST (d2l §8.1; Krizhevsky, Sutskever & Hinton 2012)."""

from __future__ import annotations

from torch import nn

from cnnlab.models.registry import prepare_model, register_model
from cnnlab.nn.classifier import Classifier, init_cnn

__all__ = ["AlexNet", "alexnet", "alexnet_small"]


class AlexNet(Classifier):
    """AlexNet as in d2l §8.1.2: five ReLU convs, three 3x3/2 max pools, two 4096-wide dropout layers.

    One image channel and 10 classes instead of ImageNet's 3 and 1000, and no local response normalization
    or two-GPU split, as in the book.

    Args:
        lr: learning rate for `configure_optimizers`.
        num_classes: number of output logits.
        in_channels: image channels.
        small_stem: replace the 11x11 stride-4 first conv by a 3x3 stride-1 one (padding 1), so that native
            28x28 images pass the three max pools (28 -> 13 -> 6 -> 2) instead of shrinking to nothing; the
            rest of the network is the book's. False keeps the book's stem, which needs at least 65x65.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes). The first Linear is lazy, as in the book, because its
        width (256 * 5 * 5 = 6400 at 224x224) follows the image size: run one forward (the registry
        builders do) before counting parameters or building the optimizer.
    """

    def __init__(self, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1, small_stem: bool = False):
        super().__init__()
        self.save_hyperparameters(lr=lr, num_classes=num_classes, in_channels=in_channels, small_stem=small_stem)
        stem = dict(kernel_size=3, stride=1, padding=1) if small_stem else dict(kernel_size=11, stride=4, padding=1)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 96, **stem), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(),
            nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )  # fmt: skip
        self.net.apply(init_cnn)


@register_model("alexnet", image_size=224)
def alexnet(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 224, lr: float = 0.01
) -> AlexNet:
    """The book's AlexNet (d2l §8.1), trained there on Fashion-MNIST resized to 224 with lr 0.01."""
    model = AlexNet(lr=lr, num_classes=num_classes, in_channels=in_channels)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("alexnet-small", image_size=28)
def alexnet_small(
    *, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, lr: float = 0.01
) -> AlexNet:
    """AlexNet with a 3x3 stride-1 first conv for native 28x28 images (see `AlexNet`'s `small_stem`).

    At 28x28 its flattened features are 256 * 2 * 2 = 1024 wide (6400 for the book's at 224), and one image
    costs about a quarter of the book's FLOPs at 224.
    """
    model = AlexNet(lr=lr, num_classes=num_classes, in_channels=in_channels, small_stem=True)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
