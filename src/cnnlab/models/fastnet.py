"""FastNet: a small BatchNorm VGG-style net for the best time to accuracy on a CPU (``--recipe fast``).

After the speed-run CIFAR-10 trainers (Keller Jordan's airbench, tysam-code's hlb-CIFAR10): a 3x3 stem, then
groups of ``conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU`` that halve the size and double the width,
global max pooling and a linear classifier. Pooling right after the group's first conv puts most of the
work at the lower resolution, and no residual connections are needed at this depth.

``fastnet-flip`` (``--recipe fast``) is FastNet 24-48-96 that in eval mode averages the logits of each image
and its mirror image (test-time flip averaging, as airbench does): the training data are flipped at random,
so the net has learned both views; the second view costs one more forward pass per evaluated image, about 5%
of a training epoch when validating on 10k images. ``fastnet-wide`` (``--recipe fast-long``) is the same
a third wider. The widths and the flip were chosen on a validation split of the training images
(benchmarks/tune_recipes.py). ``fastnet-slim`` is FastNet 16-32-64 with flip averaging, ~0.45x the work per image:
the form a ``--budget`` too short for five epochs of the others narrows them to (each registers its narrower
form; :data:`cnnlab.recipes.budget.MIN_BUDGET_EPOCHS`).

``fastnet-auto`` may carry a linear classifier on its input pixels (``pixel_blend``): in eval mode its output is
the log of the mixture ``(1 - w) softmax(net) + w softmax(pixel_head)``, an average of the two models'
probabilities. The automatic recipe fits the head after training and chooses ``w`` on the validation split
(:mod:`cnnlab.recipes.blend`); on a few hundred images a linear model can hold what the net has not learned.
With ``white_balance`` it first removes each colour image's cast (:func:`cnnlab.nn.layers.white_balance`), for
folders whose colour does not tell the class (:mod:`cnnlab.recipes.colour`); net and head see the balanced image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.registry import MODERN_RECIPE, prepare_model, register_model
from cnnlab.nn import layers
from cnnlab.nn.classifier import Classifier, init_cnn
from cnnlab.nn.ops import size_pair

__all__ = ["FASTNET_SLIM_WIDTHS", "FASTNET_WIDTHS", "FASTNET_WIDE_WIDTHS", "FastNet", "fastnet", "fastnet_auto",
           "blend_logits", "fastnet_flip", "fastnet_slim", "fastnet_wide", "sized_widths"]

FASTNET_WIDTHS = (24, 48, 96)  # stem, then one conv group per further width
FASTNET_WIDE_WIDTHS = (32, 64, 128)  # 1.8x the parameters and FLOPs, ~1.6x the time per image on a CPU
FASTNET_SLIM_WIDTHS = (16, 32, 64)  # 0.44x the FLOPs, ~0.5x the time per image on a CPU


def _conv_bn(in_channels: int, out_channels: int, pool: bool) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, ceil_mode=True))  # 28 -> 14 -> 7 -> 4
    return layers + [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class FastNet(Classifier):
    """A BatchNorm VGG-style net from a table of widths: ``widths[0]`` for the stem, one group per later width.

    Args:
        widths: channels of the stem and of each conv group.
        lr: learning rate for ``configure_optimizers``.
        num_classes: number of output logits.
        in_channels: image channels.
        flip_tta: in eval mode, return the mean of the logits of the input and of its left-right mirror.
        pixel_features: with ``pixel_blend``, the size of a flattened input (``in_channels * H * W``).
        pixel_blend: in eval mode, the share ``w`` of a linear classifier on the flattened input
            (``pixel_head``) in the mixture of probabilities (:func:`blend_logits`); 0: the net alone.
        white_balance: remove each image's colour cast before the net and the head (:meth:`balanced_input`).
        shift_tta: in eval mode, the mean of the net's probabilities over every shift of the input by up to
            this many pixels (:func:`cnnlab.nn.layers.shifted_views`; 1: nine views), for a net trained on random
            crops; its log as logits. With ``flip_tta`` too, over their mirror images as well.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); each group halves H and W (rounding up).
    """

    def __init__(
        self, widths: Sequence[int] = FASTNET_WIDTHS, lr: float = 0.1, num_classes: int = 10, in_channels: int = 1,
        flip_tta: bool = False, pixel_features: int = 0, pixel_blend: float = 0.0, white_balance: bool = False,
        shift_tta: int = 0,
    ):
        super().__init__()
        if not 0 <= pixel_blend < 1 or (pixel_blend and pixel_features < 1):
            raise ValueError(f"pixel_blend must be in [0, 1) with pixel_features > 0, got {pixel_blend!r} with "
                             f"{pixel_features!r}")
        self.save_hyperparameters(widths=widths, lr=lr, num_classes=num_classes, in_channels=in_channels,
                                  flip_tta=flip_tta, pixel_blend=pixel_blend, white_balance=white_balance,
                                  shift_tta=shift_tta)
        blocks = _conv_bn(in_channels, widths[0], pool=False)
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=False):
            blocks += _conv_bn(c_in, c_out, pool=True) + _conv_bn(c_out, c_out, pool=False)
        self.net = nn.Sequential(
            *blocks,
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (N, widths[-1])
            nn.Linear(widths[-1], num_classes),
        )  # fmt: skip
        self.net.apply(init_cnn)
        # Fitted after training (by L-BFGS, not by the optimizer): zeros until its weights are loaded
        self.pixel_head = nn.Linear(pixel_features, num_classes) if pixel_blend else None
        if self.pixel_head is not None:
            nn.init.zeros_(self.pixel_head.weight)
            nn.init.zeros_(self.pixel_head.bias)

    def balanced_input(self, X: torch.Tensor) -> torch.Tensor:
        """The input as the net and the pixel head read it: each image's colour cast removed with
        ``white_balance`` (:func:`cnnlab.nn.layers.white_balance`), else as given."""
        return layers.white_balance(X) if self.white_balance else X

    def forward(self, X):
        X = self.balanced_input(X)
        if self.training:
            return self.net(X)
        return self._blended(X, self._test_time_logits(X))

    def single_view(self, X: torch.Tensor) -> torch.Tensor:
        """The eval-mode output on the input as given, with no test-time views: what Grad-CAM reads, as each
        view runs the net's layers once (and a layer hook would keep the last view's activations)."""
        X = self.balanced_input(X)
        return self._blended(X, self.net(X))

    def _test_time_logits(self, X: torch.Tensor) -> torch.Tensor:
        """The net's logits, averaged over the test-time views (``shift_tta``, ``flip_tta``) where there are any."""
        # float32 before averaging: under bf16 autocast two bf16 logits can tie where their mean does not
        if self.shift_tta:  # the mean of the views' probabilities
            views = layers.shifted_views(X, self.shift_tta)
            views += [view.flip(-1) for view in views] if self.flip_tta else []
            # A pass of the net per view: one batch of all nine took 11x one view's time (its activations
            # leave the cache), nine passes 9x
            log_probs = torch.stack([self.net(view).float().log_softmax(1) for view in views])
            return log_probs.logsumexp(0) - math.log(len(views))
        return (self.net(X).float() + self.net(X.flip(-1)).float()) / 2 if self.flip_tta else self.net(X)

    def _blended(self, X: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.pixel_head is not None:
            return blend_logits(logits, self.pixel_head(X.flatten(1).float()), self.pixel_blend)
        return logits


def blend_logits(net_logits: torch.Tensor, head_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """``log((1 - weight) softmax(net_logits) + weight softmax(head_logits))``, computed stably in float32: logits
    whose softmax is the mixture of the two models' probabilities (so a loss or an argmax reads them as any)."""
    mixed = torch.stack([net_logits.float().log_softmax(1) + math.log1p(-weight),
                         head_logits.float().log_softmax(1) + math.log(weight)])
    return mixed.logsumexp(0)


@register_model("fastnet")
def fastnet(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.1,
    widths: Sequence[int] = FASTNET_WIDTHS,
    flip_tta: bool = False,
) -> FastNet:
    """FastNet 24-48-96 for ``in_channels`` x ``image_size`` inputs (28x28 Fashion-MNIST)."""
    model = FastNet(tuple(widths), lr=lr, num_classes=num_classes, in_channels=in_channels, flip_tta=flip_tta)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("fastnet-flip", narrower="fastnet-slim")
def fastnet_flip(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.1,
    widths: Sequence[int] = FASTNET_WIDTHS,
    flip_tta: bool = True,
) -> FastNet:
    """FastNet 24-48-96 with test-time flip averaging (the mean of the logits of an image and its mirror image
    in eval mode): the model of ``--recipe fast``."""
    model = FastNet(tuple(widths), lr=lr, num_classes=num_classes, in_channels=in_channels, flip_tta=flip_tta)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("fastnet-wide", narrower="fastnet-flip")
def fastnet_wide(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.1,
    widths: Sequence[int] = FASTNET_WIDE_WIDTHS,
    flip_tta: bool = True,
) -> FastNet:
    """FastNet 32-64-128 with test-time flip averaging: the model of ``--recipe fast-long``."""
    model = FastNet(tuple(widths), lr=lr, num_classes=num_classes, in_channels=in_channels, flip_tta=flip_tta)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


@register_model("fastnet-slim")
def fastnet_slim(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.1,
    widths: Sequence[int] = FASTNET_SLIM_WIDTHS,
    flip_tta: bool = True,
) -> FastNet:
    """FastNet 16-32-64 with test-time flip averaging: the net a short ``--budget`` narrows the fast recipes to."""
    model = FastNet(tuple(widths), lr=lr, num_classes=num_classes, in_channels=in_channels, flip_tta=flip_tta)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)


def sized_widths(image_size: int | tuple[int, int]) -> tuple[int, ...]:
    """FastNet's widths for an input size: two conv groups up to 16 px (8 -> 2, 16 -> 4 before the global
    pool), three above (32 -> 4), so the last group always sees a few pixels, never one. Above 16 px the stem
    is 16 wide: each group's first conv runs at its input's resolution, so this keeps a 32 px image at ~22M
    multiply-adds (32-64-128-256: ~90M), and the automatic recipe's steps, not its width, buy the accuracy."""
    side = min(size_pair(image_size))
    return (32, 64, 128) if side <= 16 else (16, 32, 64, 128)


@register_model("fastnet-auto", **MODERN_RECIPE)
def fastnet_auto(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    lr: float = 0.1,
    pixel_blend: float = 0.0,
    white_balance: bool = False,
    shift_tta: int = 0,
) -> FastNet:
    """FastNet sized to the input (:func:`sized_widths`), no flip averaging: the net of the automatic recipe for
    your own images (``cnnlab train --images DIR``, :mod:`cnnlab.recipes.auto`). ``pixel_blend``: the share of a
    linear classifier on the input pixels in its eval-mode output; ``white_balance``: each image's colour cast
    removed first; ``shift_tta``: eval-mode logits averaged over shifts of the input (see :class:`FastNet`)."""
    height, width = size_pair(image_size)
    model = FastNet(sized_widths(image_size), lr=lr, num_classes=num_classes, in_channels=in_channels,
                    pixel_features=in_channels * height * width, pixel_blend=pixel_blend,
                    white_balance=white_balance, shift_tta=shift_tta)
    return prepare_model(model, in_channels=in_channels, image_size=image_size)
