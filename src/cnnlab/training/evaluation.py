"""One evaluation for everything that reports an accuracy: the end of ``cnnlab train``, ``cnnlab evaluate``,
the HTML report and the benchmarks.

:func:`evaluate` runs a model over a loader in full precision and eval mode; :func:`evaluate_checkpoint`
rebuilds a run's model from its checkpoint and evaluates it on the test split, with the input settings the
run trained with. The trainer's per-epoch validation (under the run's autocast) is only a progress figure:
the accuracy a run is known by is this one, so every command prints the same number for the same checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.nn.classifier import device_of, eval_mode

__all__ = ["EvalResult", "best_two_validation_mean", "evaluate", "validate", "validation_totals",
           "within_one_standard_error"]


@dataclass
class EvalResult:
    """Loss, accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""

    loss: float
    accuracy: float
    count: int
    confusion: torch.Tensor

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return self.confusion.diagonal().double() / totals


def evaluate(model: nn.Module, loader, device: torch.device | str | None = None,
             num_classes: int | None = None) -> EvalResult:
    """Evaluate ``model`` in fp32 on every batch of ``loader``: mean loss, accuracy and the confusion matrix.

    The model's train/eval mode is restored afterwards, also after an error.

    Args:
        model: a classifier returning logits.
        loader: yields ``(X, y)`` batches.
        device: where to compute; default the model's device.
        num_classes: the confusion matrix's size; default ``model.num_classes``, else 10.
    """
    device = torch.device(device) if device is not None else device_of(model)
    num_classes = num_classes or getattr(model, "num_classes", None) or 10
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    count = 0
    with eval_mode(model), torch.inference_mode():
        for X, y in loader:
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(X).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            confusion += torch.bincount(y * num_classes + logits.argmax(dim=1), minlength=num_classes**2)
            count += y.numel()
    confusion = confusion.reshape(num_classes, num_classes).cpu()
    correct = int(confusion.diagonal().sum())
    return EvalResult(loss=float(loss_sum) / max(count, 1), accuracy=correct / max(count, 1), count=count,
                      confusion=confusion)


def validate(model: nn.Module, loader, device: torch.device, autocast_dtype: torch.dtype | None = None,
             channels_last: bool = False, ctx=None) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader`` from the model's ``validation_step`` (the Trainer's per-epoch
    validation, d2l §3.4), summed over the ranks of ``ctx`` under torchrun."""
    loss, accuracy, _ = validation_totals(model, loader, device, autocast_dtype, channels_last, ctx)
    return loss, accuracy


def validation_totals(model: nn.Module, loader, device: torch.device, autocast_dtype: torch.dtype | None = None,
                      channels_last: bool = False, ctx=None) -> tuple[float, float, int]:
    """:func:`validate`'s mean loss and accuracy, and the number of examples they are over."""
    from cnnlab.training import distributed as dist_utils
    from cnnlab.training.runtime import autocast

    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with eval_mode(model), torch.inference_mode(), autocast(device, autocast_dtype):
        for X, y in loader:
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            loss_sum, correct, count = model.validation_step((X, y))
            sums += torch.stack([loss_sum.double(), correct.double(), count.double()])
    sums = dist_utils.all_reduce_sum(sums, ctx if ctx is not None else dist_utils.current())
    return float(sums[0] / sums[2]), float(sums[1] / sums[2]), int(sums[2])


def best_two_validation_mean(accuracies: list[float]) -> float:
    """The accuracy that :func:`within_one_standard_error` holds later epochs to: the best mean of two
    consecutive validations (the first alone while it is the only one); -1 for none.

    The maximum of a dozen noisy validations is inflated by its own noise, and one lucky epoch then vetoes all
    that follow: on the own-image collection (60 and 20 validation images) an epoch-1 score of 0.933 and an
    epoch-2 score of 0.80 stood above a dozen later epochs at 0.87 and 0.65, and best.pt scored 0.730 and 0.597
    on the test split where the last epoch scored 0.847 and 0.727. A mean of two neighbours halves the noise's
    variance; of the 24 runs of docs/own-images.md, these two changed their choice, no other.
    """
    if len(accuracies) < 2:
        return accuracies[0] if accuracies else -1.0
    return max((a + b) / 2 for a, b in zip(accuracies, accuracies[1:], strict=False))


def within_one_standard_error(accuracy: float, best: float, count: int) -> bool:
    """Whether a later epoch's validation ``accuracy`` is as good as the ``best`` so far, by the one-standard-error
    rule (Breiman et al., *Classification and Regression Trees*, 1984): within ``sqrt(p (1 - p) / n)`` of it, the
    noise of an accuracy ``p`` measured on ``n`` images.

    The Trainer keeps such an epoch as ``best.pt``: it trained longer, at a lower rate where the schedule decays,
    and on a small validation split (60 images: a standard error of 0.05) the strict maximum is mostly noise.
    On Fashion-MNIST's 10,000 test images the margin is 0.003.
    """
    if best < 0:
        return True
    margin = math.sqrt(max(best * (1 - best), 0.0) / max(count, 1))
    return accuracy >= best - margin
