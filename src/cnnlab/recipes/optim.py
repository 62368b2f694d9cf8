"""Optimizers and learning-rate schedules, built from a :class:`~cnnlab.recipes.config.TrainConfig`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cnnlab.training.schedules import ProgressLR

if TYPE_CHECKING:
    from cnnlab.recipes.config import TrainConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "linear_schedule", "make_optimizer", "make_scheduler"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine", "linear")
LINEAR_WARMUP = 0.1  # the share of a 'linear' schedule spent warming up


def make_optimizer(config: TrainConfig):
    """``params -> Optimizer`` for the configured optimizer (foreach kernels: one launch per group)."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay

    def build(params):
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd, foreach=True)
        if name == "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd,
                                   foreach=True)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd, foreach=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)

    return build


def progress_shape(config: TrainConfig) -> str:
    """The schedule's shape over the run's progress: a budget (or its replay) decays even a constant rate to zero
    at its end, linearly (Li, Yumer & Ramanan, ICLR 2020)."""
    if config.schedule == "constant" and (config.budget is not None or config.replay is not None):
        return "linear"
    return config.schedule


def make_scheduler(config: TrainConfig, by_progress: bool = False):
    """``(optimizer, steps_per_epoch, epochs) -> scheduler`` stepped per batch, or None for a constant LR.

    ``by_progress``: the run counts steps or the clock (``--steps``, ``--budget``, a floor of steps): a
    :class:`~cnnlab.training.schedules.ProgressLR` of the schedule's shape, which the Trainer steps with the
    run's progress. Otherwise, an epoch-counted run, torch's schedulers over ``epochs * steps_per_epoch`` steps.
    """
    if by_progress:
        shape = progress_shape(config)
        # A 'linear' schedule asked for warms up as its step-counted form does (linear_schedule); a constant rate
        # that a budget decays to zero starts at its rate, as it always did.
        warmup = LINEAR_WARMUP if config.schedule == "linear" else 0.0
        return lambda optimizer, steps_per_epoch, epochs: ProgressLR(optimizer, shape, warmup)
    if config.schedule == "constant":
        return None

    def build(optimizer, steps_per_epoch, epochs):
        total = max(1, steps_per_epoch * epochs)
        if total < 8:
            # OneCycleLR needs at least one step up and one down; a run this short just keeps its LR.
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        if config.schedule == "linear":
            return linear_schedule(optimizer, total)
        if config.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                       pct_start=0.25)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)

    return build


def linear_schedule(optimizer, total_steps: int, warmup: float = LINEAR_WARMUP):
    """Linear warm-up from a tenth of the rate over ``warmup`` of the steps, then linear decay to zero at the
    last step (budgeted training, Li, Yumer & Ramanan, ICLR 2020: linear decay was the most robust), per batch.

    Laid out in optimizer steps, not epochs: the automatic recipe (:mod:`cnnlab.recipes.auto`) gives a small
    folder thousands of them.
    """
    up = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < up:
            return 0.1 + 0.9 * step / up
        return max(0.0, (total_steps - step) / max(1, total_steps - up))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
