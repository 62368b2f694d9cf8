"""Telling a diverging run from a learning one, early: the checks behind :class:`cnnlab.errors.TrainingDiverged`.

Three signs, each of which the issue's failed runs showed (train loss 5.1 -> 9.4 within the first epoch, a
validation loss of 495 against ln 10 = 2.3 at chance): a loss that is no longer finite, a training loss that grows
tenfold within an epoch, and a validation loss far above chance level, ``ln K`` for ``K`` classes, which is what a
network that predicts the uniform distribution scores.
"""

from __future__ import annotations

import math

from cnnlab.errors import TrainingDiverged

__all__ = ["GROWTH", "SETTLE_STEPS", "LossWatch", "chance_loss", "divergence_error", "val_loss_far_above_chance"]

# A loss window this many times its epoch's lowest is divergence, not noise: batch-to-batch noise of a learning
# network stays within 2-3x.
GROWTH = 10.0


class LossWatch:
    """The mean training loss of windows of steps within one epoch, against the lowest window seen so far.

    A window must also be above ``floor`` (chance level, ``ln K``): a loss of 0.002 that rises to 0.03 late in a
    long run is noise around a fit, not divergence.
    """

    def __init__(self, growth: float = GROWTH, floor: float = 0.0):
        self.growth, self.floor = growth, floor
        self.lowest = math.inf

    def check(self, window_loss: float) -> str | None:
        """The reason the run diverged, or None: fed the mean loss of each window of steps, in order."""
        if not math.isfinite(window_loss):
            return f"the training loss became {window_loss}"
        if window_loss > max(self.growth * self.lowest, self.floor):
            return (f"the training loss grew from {self.lowest:.3g} to {window_loss:.3g} within the epoch "
                    f"(more than {self.growth:g}x)")
        self.lowest = min(self.lowest, window_loss)
        return None


def chance_loss(num_classes: int) -> float:
    """The cross-entropy of guessing uniformly among ``num_classes`` classes, ln K (0 for fewer than two)."""
    return math.log(num_classes) if num_classes > 1 else 0.0


# Optimizer steps before a finite validation loss can mean divergence: BatchNorm's running statistics (momentum
# 0.1) are 57% of the way from their initial values after 8 steps and 96% after 30.
SETTLE_STEPS = 30


def val_loss_far_above_chance(val_loss: float, num_classes: int, steps: int | None = None) -> str | None:
    """The reason a validation loss means divergence, or None: above ``max(3 ln K, ln K + 3)``.

    Chance level is ``ln K``; a network that learned nothing sits there, one that learned anything below it.
    Three times chance (and 3 nats above it, for K = 2) is past anything a learning network shows, once its
    BatchNorm statistics have settled: ``steps`` (the optimizer steps taken) below :data:`SETTLE_STEPS` excuse a
    finite loss. Measured: ``--recipe fast --num-train 2048 --epochs 3 --lr 0.05`` validated at 33.4 after its
    first epoch's 8 steps, in eval mode with running statistics still near their initial values, while it was
    learning (the same run reached 0.60 accuracy in 4 epochs). A loss that is not finite is divergence at once.
    """
    if num_classes < 2:
        return None
    chance = math.log(num_classes)
    if math.isfinite(val_loss) and steps is not None and steps < SETTLE_STEPS:
        return None
    if not math.isfinite(val_loss) or val_loss > max(3 * chance, chance + 3):
        return (f"the validation loss is {val_loss:.3g}, far above chance level (ln {num_classes} = "
                f"{chance:.2f})")
    return None


def divergence_error(reason: str, epoch: int, lr: float, last_checkpoint=None) -> TrainingDiverged:
    """The error that stops a diverged run: what went wrong in which epoch, the rate, and the checkpoint kept
    (named only if it exists: in epoch 1 there is none yet)."""
    where = (f"; {last_checkpoint} keeps the last good epoch"
             if last_checkpoint is not None and last_checkpoint.is_file() else "")
    return TrainingDiverged(f"{reason} in epoch {epoch + 1}: training diverged; try a lower --lr (the rate was "
                            f"{lr:.3g} at that point){where}")
