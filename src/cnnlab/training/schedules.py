"""Learning-rate schedules laid out over optimizer steps or over the clock (budgeted training).

A schedule here is a shape ``factor(progress)`` on ``progress`` in [0, 1], and a *progress source* says how far
the run is: :class:`StepProgress` counts optimizer steps (``step / total_steps``), :class:`ClockProgress` reads
the clock (training seconds used / training seconds planned, with an injectable clock for tests), and
:class:`ReplayProgress` reads back the progress a budgeted run recorded, so that a run of the same number of steps
takes exactly the same learning rates without a clock. The Trainer asks its source once per step and hands the
value to :class:`ProgressLR`.

Budgeted training follows Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural Network Training Under
Resource Constraints" (ICLR 2020): a schedule that decays to zero exactly when the budget ends, linear decay being
the most robust shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["SHAPES", "ClockProgress", "ProgressLR", "ReplayProgress", "StepProgress", "epochs_for_steps",
           "lr_factor"]

SHAPES = ("constant", "linear", "onecycle", "cosine")


def lr_factor(shape: str, progress: float, warmup: float = 0.0) -> float:
    """The learning rate's multiple of its peak at ``progress`` in [0, 1] for a schedule ``shape``.

    ``warmup`` is the share of the run spent rising linearly from 0 to the peak (for 'linear' and 'onecycle');
    after it 'linear' and 'onecycle' fall linearly, 'cosine' along a half cosine, to exactly 0 at progress 1.
    'onecycle' is the one-cycle policy (Smith & Topin 2019) with both halves linear, warming up for 25% when
    ``warmup`` is 0.
    """
    p = min(max(progress, 0.0), 1.0)
    if shape == "constant":
        return 1.0
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "onecycle" and warmup <= 0:
        warmup = 0.25
    if shape not in ("linear", "onecycle"):
        raise ValueError(f"unknown schedule shape {shape!r}; known: {', '.join(SHAPES)}")
    if p < warmup:
        # Start above zero: the first step must move the weights (1/25 of the peak, as OneCycleLR's div_factor).
        return max(p / warmup, 0.04)
    return (1.0 - p) / (1.0 - warmup) if warmup < 1 else 0.0


class StepProgress:
    """Progress as optimizer steps taken over ``total_steps``."""

    def __init__(self, total_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        return min(1.0, step / self.total_steps)

    def done(self, step: int, progress: float) -> bool:
        return step >= self.total_steps


class ReplayProgress:
    """The per-step progress a budgeted run recorded: its ``len(trace)`` steps replayed without the clock."""

    def __init__(self, trace: Sequence[float]):
        self.trace = [float(p) for p in trace]
        if not self.trace:
            raise ValueError("a replay needs the progress of at least one step")
        self.total_steps = len(self.trace)

    def __call__(self, step: int) -> float:
        return self.trace[min(step, self.total_steps) - 1] if step > 0 else 0.0

    def done(self, step: int, progress: float) -> bool:
        return step >= self.total_steps


class ClockProgress:
    """Progress as training seconds used over training seconds planned: the clock-driven (budgeted) schedule.

    The clock runs only between :meth:`resume` and :meth:`pause` (the Trainer pauses it for validation, whose
    passes the budget plan reserves apart), so the learning rate reaches zero exactly when the planned training
    time is used up. ``start_progress`` continues a resumed run where its checkpoint stopped;
    :meth:`replan` changes the planned seconds mid-run (keeping the progress made so far) when the rest of the
    budget turns out larger or smaller than planned.

    Args:
        seconds: the training time planned, in seconds.
        clock: a function returning seconds (``time.perf_counter``; tests pass a fake one).
        start_progress: the progress already made before this clock started.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter, start_progress: float = 0.0):
        if not seconds > 0:
            raise ValueError(f"the planned training time must be positive, got {seconds} s")
        self.seconds, self.clock = float(seconds), clock
        self.base = float(start_progress)  # progress made before the current stretch of running
        self.used = 0.0  # seconds run in earlier stretches at the current plan
        self._since: float | None = None
        self.paused_at = 0.0

    @property
    def running(self) -> bool:
        return self._since is not None

    def resume(self) -> None:
        if self._since is None:
            self._since = self.clock()

    def pause(self) -> None:
        if self._since is not None:
            self.paused_at = self.clock()
            self.used += self.paused_at - self._since
            self._since = None

    def elapsed(self) -> float:
        """Training seconds used at the current plan."""
        return self.used + (self.clock() - self._since if self._since is not None else 0.0)

    def __call__(self, step: int = 0) -> float:
        return min(1.0, self.base + (1.0 - self.base) * self.elapsed() / self.seconds)

    def replan(self, seconds: float) -> None:
        """Spread what is left of the run over ``seconds`` more training seconds from now."""
        running = self.running
        self.base, self.used = self(), 0.0
        self.seconds = max(float(seconds), 1e-3)
        self._since = self.clock() if running else None

    def finish(self) -> None:
        """End the run now (the time left is too short for another step and its validation)."""
        self.base, self.used = 1.0, 0.0

    def done(self, step: int, progress: float) -> bool:
        return progress >= 1.0 or self.base >= 1.0


class ProgressLR:
    """Set every parameter group's learning rate to ``peak * lr_factor(shape, progress, warmup)``.

    Stepped once per optimizer step with the run's progress (which the Trainer reads from its source, and under
    torchrun takes from rank 0, so that all ranks use the same rate). Its state is plain values, for checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shape: str = "linear", warmup: float = 0.0):
        if shape not in SHAPES:
            raise ValueError(f"unknown schedule shape {shape!r}; known: {', '.join(SHAPES)}")
        self.optimizer, self.shape, self.warmup = optimizer, shape, warmup
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.progress = 0.0
        self._apply()

    def _apply(self) -> None:
        factor = lr_factor(self.shape, self.progress, self.warmup)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self, progress: float) -> None:
        self.progress = float(progress)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"shape": self.shape, "warmup": self.warmup, "base_lrs": list(self.base_lrs),
                "progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.progress = float(state["progress"])
        self._apply()


def epochs_for_steps(total_steps: int, steps_per_epoch: int) -> int:
    """Passes over the data that ``total_steps`` optimizer steps need (the last one possibly cut short)."""
    return max(1, -(-int(total_steps) // max(1, int(steps_per_epoch))))
