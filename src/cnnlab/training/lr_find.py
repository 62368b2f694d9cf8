"""The learning-rate range test (Smith 2015, "Cyclical learning rates"; fastai's ``lr_find``, Lightning's
``Tuner.lr_find``): train a few dozen steps with an exponentially growing learning rate and read a safe one off
the smoothed loss.

The model, its BatchNorm statistics and torch's RNG are restored afterwards, so the test leaves no trace on
the run that follows it (``cnnlab lr-find``, ``cnnlab train --lr auto`` and the automatic recipe).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cnnlab.training.runtime import autocast, pick_device

__all__ = ["LRFinder", "descent_edge", "lr_find", "suggest_lr"]


@dataclass
class LRFinder:
    """What a range test saw: each step's learning rate, raw and smoothed loss, and the rates read off them.

    ``suggestion`` is the larger of the steepest descent of the smoothed loss and a tenth of the rate at its
    minimum (fastai's ``lr_min``): never above the minimum, so never where the loss explodes. The steepest
    descent alone sits at the start of a short test, where the loss falls because the net is learning at all,
    not because that rate is good (measured: 7e-4 on scikit-learn's digits, whose minimum is at 0.06).
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step (the loss read included)
    steepest: float = float("nan")
    minimum: float = float("nan")
    suggestion: float = float("nan")
    edge: float = float("nan")  # descent_edge: where 90% of the smoothed loss's fall is done
    stopped_early: bool = False

    @property
    def seconds_per_step(self) -> float:
        """The median step time after the first five (which pay for allocations and kernel choices)."""
        times = self.step_seconds[5:] or self.step_seconds
        return statistics.median(times) if times else float("nan")

    def to_dict(self) -> dict:
        return {"lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed, "steepest": self.steepest,
                "minimum": self.minimum, "suggestion": self.suggestion, "edge": self.edge,
                "stopped_early": self.stopped_early}


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 5) -> tuple[float, float, float]:
    """``(steepest, minimum, suggestion)`` from a range test's rates and smoothed losses.

    ``minimum`` is the rate at the lowest smoothed loss, ``steepest`` the rate (before that minimum) where the
    loss falls fastest per factor of learning rate, ``suggestion = max(steepest, minimum / 10)`` (<= minimum).
    """
    if len(lrs) < skip_start + 3:
        raise ValueError(f"a range test needs at least {skip_start + 3} steps to suggest a rate, got {len(lrs)}")
    i_min = min(range(skip_start, len(smoothed)), key=smoothed.__getitem__)
    minimum = lrs[i_min]
    lo = max(1, skip_start)
    if i_min - lo < 2:  # the loss only rose: the smallest tried rate is the one safe answer
        return lrs[0], minimum, max(lrs[0], minimum / 10)
    logs = [math.log(lr) for lr in lrs]
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(lo, i_min)]
    steepest = lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)]
    return steepest, minimum, max(steepest, minimum / 10)


def descent_edge(lrs: list[float], smoothed: list[float], fraction: float = 0.9, skip_start: int = 5) -> float:
    """The first rate at which the smoothed loss has done ``fraction`` of its fall, from its value at step
    ``skip_start`` to its lowest (the rate itself where it never falls).

    Read off where the curve flattens rather than at its lowest point: the bottom of a range test's curve is
    flat and noisy, so its argmin jumps with the float rounding of the thread count and with the seed. Measured
    on 30 tests (photos-32, fashion-64-colour, fashion-28-200; seeds 0-4; 1 and 2 threads, the same batches),
    the rate read here differed between 1 and 2 threads by 0.09 decades on average (0.31 at worst), a third of
    the argmin's by 0.22 (1.02 at worst), at about the same level (medians 0.010-0.016 against 0.010-0.011).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    tail, rates = smoothed[skip_start:], lrs[skip_start:]
    if not tail:
        raise ValueError(f"a range test needs more than {skip_start} steps, got {len(lrs)}")
    lowest = min(tail)
    threshold = lowest + (1 - fraction) * (tail[0] - lowest)
    return next(lr for lr, value in zip(rates, tail, strict=True) if value <= threshold)


def lr_find(model, loader, optimizer: Callable, start_lr: float = 1e-5, end_lr: float = 10.0,
            num_steps: int = 100, beta: float = 0.9, diverge: float = 4.0, device=None,
            autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> LRFinder:
    """Run the range test on ``model`` with batches from ``loader`` (cycled) and return an :class:`LRFinder`.

    Args:
        model: a classifier with ``training_step(batch) -> loss`` (:class:`cnnlab.Classifier`).
        loader: an iterable of ``(X, y)`` batches; it is iterated again when it runs out.
        optimizer: ``params -> Optimizer`` (:func:`cnnlab.recipes.optim.make_optimizer`); its rate is set each step.
        start_lr, end_lr: the rates of the first and the last step, growing by a constant factor.
        num_steps: steps at most (100, as fastai and Lightning).
        beta: the loss's exponential moving average (bias-corrected); a smaller beta lags less.
        diverge: stop once the smoothed loss exceeds ``diverge`` times its lowest value (or is not finite).
        device: where to train; default the model's.
        autocast_dtype, channels_last: as the :class:`~cnnlab.training.trainer.Trainer` will train (the test
            also times a step for the automatic recipe, so it runs the same kernels).

    Returns:
        The rates and losses seen, with ``steepest``, ``minimum`` and ``suggestion`` (:func:`suggest_lr`).
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr must be positive and below end_lr, got {start_lr} and {end_lr}")
    device = pick_device(device) if device is not None else next(model.parameters()).device
    saved_model, saved_rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    opt = optimizer(model.parameters())
    result, avg, best = LRFinder(), 0.0, math.inf
    factor = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        batches = _cycle(loader)
        for step in range(num_steps):
            tick = time.perf_counter()
            lr = start_lr * factor**step
            for group in opt.param_groups:
                group["lr"] = lr
            value = _train_step(model, opt, next(batches), device, autocast_dtype, channels_last)
            result.step_seconds.append(time.perf_counter() - tick)
            avg = beta * avg + (1 - beta) * value if math.isfinite(value) else math.inf
            smooth = avg / (1 - beta ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smooth)
            best = min(best, smooth)
            if not math.isfinite(smooth) or smooth > diverge * best:
                result.stopped_early = True
                break
    finally:
        model.load_state_dict(saved_model)
        torch.set_rng_state(saved_rng)
    result.steepest, result.minimum, result.suggestion = suggest_lr(result.lrs, _finite(result.smoothed))
    result.edge = descent_edge(result.lrs, _finite(result.smoothed))
    return result


def _train_step(model, opt, batch, device, autocast_dtype, channels_last: bool) -> float:
    """One optimizer step of the range test on ``batch``; its loss."""
    X, y = batch
    X = X.to(device)
    if channels_last:
        X = X.contiguous(memory_format=torch.channels_last)
    with autocast(device, autocast_dtype):
        loss = model.training_step((X, y.to(device)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _cycle(loader):
    while True:
        yield from loader


def _finite(values: list[float]) -> list[float]:
    # A last, exploded value stays in the record but must not win the minimum.
    return [v if math.isfinite(v) else math.inf for v in values]
