"""Whether an image folder's colour cast is noise to its classes: the automatic recipe's white balance.

A colour set may be tinted at random: photos under different light, scans on different paper, Fashion-MNIST
coloured at random in our own collection. The cast then varies more between images than between classes, and a
net of a few hundred images spends its capacity on it. Where the cast says nothing of the class, the automatic
recipe removes it from every image (:func:`cnnlab.nn.layers.white_balance`, inside the model, so that prediction
and export do the same); where it may (the sky of a landscape, a ripe fruit), the images stay as they are.

The test, on the training images alone: each image's cast is its chromaticity, the logarithms of its channel
means less their mean (brightness left out: the balance keeps it); a vote of its :data:`NEIGHBOURS` nearest
neighbours in that space, each image left out of its own vote, predicts the class. The same vote with the labels
shuffled (:data:`SHUFFLES` times) is what chance gives; the cast is noise where the vote is within
:data:`SPREADS` standard deviations of chance (a weaker link is below what a few hundred images can tell, and
fewer than :data:`MIN_IMAGES` images keep their colour). On the own-image collection (docs/own-images.md):
photos-32, whose colour is the class, 0.85 against 0.25 +- 0.01; fashion-64-colour, tinted at random, 0.25
against 0.20 +- 0.03.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.training.baseline import fixed_subset

__all__ = ["MIN_IMAGES", "NEIGHBOURS", "SHUFFLES", "SPREADS", "CastTest", "cast_test", "chromaticity"]

NEIGHBOURS = 15  # votes per image: a smooth estimate of the class shares around it
MIN_IMAGES = 100  # fewer cannot tell a weak link of colour and class from none: the images stay as they are
SHUFFLES = 20  # votes with shuffled labels: chance's mean and spread, whatever the class shares
SPREADS = 3.0  # standard deviations above chance's mean from which the vote is taken to know the class
MAX_IMAGES = 4000  # the vote compares every pair: a random subset of larger folders


@dataclass(frozen=True)
class CastTest:
    """The vote's accuracy from the colour cast alone, its mean and standard deviation with shuffled labels
    (chance), and the number of images voted on."""

    accuracy: float
    chance: float
    spread: float
    images: int

    @property
    def cast_is_noise(self) -> bool:
        return self.images >= MIN_IMAGES and self.accuracy <= self.chance + SPREADS * self.spread

    def describe(self) -> str:
        verdict = "noise, removed from every image" if self.cast_is_noise else "kept"
        return (f"colour cast: {verdict} (a nearest-neighbour vote on it alone {self.accuracy:.2f}, chance "
                f"{self.chance:.2f} +- {self.spread:.2f}, {self.images:,} training images)")


def chromaticity(images: torch.Tensor) -> torch.Tensor:
    """Each image's log channel means less their mean over the channels: its cast, whatever its brightness.

    Shape:
        (N, C, H, W) uint8 or float in [0, 1] -> (N, C).
    """
    means = images.float().mean((2, 3))
    means = means / 255 if images.dtype == torch.uint8 else means
    logs = (means + 1 / 255).log()  # a black channel stays finite
    return logs - logs.mean(1, keepdim=True)


def cast_test(images: torch.Tensor, labels: torch.Tensor) -> CastTest:
    """How well the colour cast alone tells the class: a leave-one-out vote of :data:`NEIGHBOURS` neighbours in
    :func:`chromaticity` against the same vote with shuffled labels, on at most :data:`MAX_IMAGES` images (a
    fixed random subset; the shuffles are seeded too: a resumed or replayed run decides the same)."""
    images, labels = fixed_subset(images, labels, MAX_IMAGES)
    images, labels = images.cpu(), labels.cpu()
    if len(labels) < 2:
        return CastTest(1.0, 1.0, 0.0, len(labels))
    points = chromaticity(images).double()
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))  # each image left out of its own vote
    nearest = distances.topk(min(NEIGHBOURS, len(labels) - 1), largest=False).indices
    classes = int(labels.max()) + 1

    def vote(truth: torch.Tensor) -> float:
        counts = torch.nn.functional.one_hot(truth[nearest], classes).sum(1)
        return float((counts.argmax(1) == truth).double().mean())

    generator = torch.Generator().manual_seed(0)
    shuffled = torch.tensor([vote(labels[torch.randperm(len(labels), generator=generator)])
                             for _ in range(SHUFFLES)], dtype=torch.float64)
    return CastTest(vote(labels), float(shuffled.mean()), float(shuffled.std()), len(labels))
