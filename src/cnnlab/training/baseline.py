"""A baseline beside every result: a linear classifier on the raw pixels (multinomial logistic regression), in
torch, trained in seconds on the same split as the network (issue 23, item 5).

If a CNN does not beat it clearly, the CNN did not earn its cost: the final line of ``cnnlab train --images`` and
the HTML report show both.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["BASELINE_FILE", "MAX_BASELINE_IMAGES", "BaselineResult", "chance_warning", "describe_baseline",
           "fit_linear", "fit_standardized", "fixed_subset", "linear_baseline", "read_baseline", "save_baseline"]

BASELINE_FILE = "baseline.json"  # in the run folder, beside config.json

_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # the L2 strengths tried; chosen on the validation split
# The most training images the baseline is fitted on (a fixed random subset above it): its L-BFGS costs time in
# proportion. Measured on Fashion-MNIST as a folder (54,000 training images, 2-core Xeon): all of them took 18.8 s
# (0.843), a third of a --budget 60s; 10,000 took 2.7 s (0.835), 5,000 1.8 s (0.825).
MAX_BASELINE_IMAGES = 10_000


@dataclass(frozen=True)
class BaselineResult:
    """The linear baseline's test accuracy, on how many images, its L2 strength and its seconds."""

    accuracy: float
    count: int
    weight_decay: float
    seconds: float
    fit_on: int = 0  # training images it was fitted on (at most MAX_BASELINE_IMAGES)
    train_images: int = 0  # training images there were

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "count": self.count, "weight_decay": self.weight_decay,
                "seconds": self.seconds, "fit_on": self.fit_on, "train_images": self.train_images}

    def describe(self, network_accuracy: float) -> str:
        """The line printed beside the network's test accuracy."""
        return describe_baseline(self.to_dict(), network_accuracy)


def describe_baseline(saved: dict, network_accuracy: float) -> str:
    """The baseline's line from its saved form (:meth:`BaselineResult.to_dict`, or an older file without the
    subset's fields)."""
    line = f"linear baseline on the raw pixels: test accuracy {saved['accuracy']:.4f}"
    if "count" in saved:
        line += f" on the same {saved['count']:,} images"
    if "seconds" in saved:
        line += f" ({saved['seconds']:.1f} s)"
    line += f"; the network: {network_accuracy:.4f}"
    fit_on, total = int(saved.get("fit_on", 0)), int(saved.get("train_images", 0))
    if 0 < fit_on < total:
        line += f" (the baseline fitted on a random {fit_on:,} of the {total:,} training images)"
    return line


def save_baseline(run_dir: str | os.PathLike, result: BaselineResult) -> Path:
    """Write ``result`` to the run folder (atomically), so that a resumed run and its report can show it."""
    from cnnlab.atomic import atomic_write

    path = Path(run_dir) / BASELINE_FILE
    with atomic_write(path, "w") as f:
        f.write(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def read_baseline(run_dir: str | os.PathLike) -> dict | None:
    """The baseline saved in a run folder (:func:`save_baseline`); None where there is none or it is unreadable."""
    try:
        saved = json.loads((Path(run_dir) / BASELINE_FILE).read_text())
        describe_baseline(saved, 0.0)  # every field it prints is of its kind (a hand-edited file may not be)
        return saved
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _features(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).to(torch.float32).cpu() / 255  # (N, C*H*W)


def fixed_subset(images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``count`` of the images with their labels (all where there are no more), the same every time: a
    replayed or resumed run fits and scores the same."""
    if len(labels) <= count:
        return images, labels
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:count]
    return images[keep.to(images.device)], labels[keep.to(labels.device)]


def fit_linear(X: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
               max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression ``X @ W.T + b`` by full-batch L-BFGS with an L2 penalty on ``W`` (deterministic).

    Shape:
        ``X`` (N, D) standardized features, ``y`` (N,) -> ``W`` (K, D), ``b`` (K,).
    """
    W = torch.zeros(num_classes, X.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(X @ W.T + b, y) + weight_decay / 2 * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def fit_standardized(X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor, num_classes: int,
                     val_cost) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """:func:`fit_linear` on features standardized by the training set's mean and std (one L2 strength then fits
    every feature's scale), with the L2 strength of :data:`_WEIGHT_DECAYS` whose ``val_cost(logits, yv)`` on the
    standardized validation features is lowest (the first on a tie).

    Returns:
        ``(W, b, mean, std, weight_decay)``: the logits of features ``F`` are ``((F - mean) / std) @ W.T + b``.
    """
    # A feature that hardly varies (a corner pixel) is scaled as if it varied a hundredth as much as the median
    # feature: standardized to unit spread, its rounding noise would take weights in the tens, whose products then
    # cancel in float32 (an ONNX export of the head differed from PyTorch by 6e-4)
    mean, std = X.mean(0), X.std(0)
    std = std.clamp(min=max(1e-3, 0.01 * float(std.median())))
    X, Xv = (X - mean) / std, (Xv - mean) / std
    best = None
    for weight_decay in _WEIGHT_DECAYS:
        W, b = fit_linear(X, y, num_classes, weight_decay)
        cost = val_cost(Xv @ W.T + b, yv)
        if best is None or cost < best[0]:
            best = (cost, W, b, weight_decay)
    _, W, b, weight_decay = best
    return W, b, mean, std, weight_decay


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def linear_baseline(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                    test: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> BaselineResult:
    """Fit the linear classifier on ``train`` (uint8 images, labels; a fixed random :data:`MAX_BASELINE_IMAGES`
    of them where there are more), pick its L2 strength on ``val``, and score it once on ``test``."""
    start = time.perf_counter()
    images, labels = fixed_subset(*train, MAX_BASELINE_IMAGES)
    y, yt = labels.cpu(), test[1].cpu()
    W, b, mean, std, wd = fit_standardized(_features(images), y, _features(val[0]), val[1].cpu(), num_classes,
                                           lambda logits, yv: -_accuracy(logits, yv))
    accuracy = _accuracy(((_features(test[0]) - mean) / std) @ W.T + b, yt)
    return BaselineResult(accuracy, len(yt), wd, time.perf_counter() - start, len(y), len(train[1]))


def chance_warning(accuracy: float, class_counts, class_names) -> str | None:
    """A warning when ``accuracy`` is within 0.05 of chance (always answering the most frequent class, from the
    test split's ``class_counts``), saying what to try; None otherwise."""
    counts = torch.as_tensor(class_counts).flatten()
    chance = float(counts.max()) / max(1, int(counts.sum()))
    if accuracy >= chance + 0.05:
        return None
    guess = class_names[int(counts.argmax())]
    return (f"warning: test accuracy {accuracy:.4f} is within 0.05 of chance ({chance:.4f}, always answering "
            f"{guess!r}): the model learned next to nothing. Try `cnnlab lr-find` and a lower --lr, more --epochs, "
            "a BatchNorm model (with --images and no --model: the automatic recipe), more images per class, and "
            "check that the class folders really differ")
