"""The Trainer's options in three groups, each a small frozen dataclass: how the weights are updated
(:class:`Optimization`), how fast and how exactly each step runs (:class:`Speed`), and what the run shows while it
trains (:class:`Display`).

``Trainer(max_epochs=10, speed=Speed(channels_last=True), display=Display(progress=False))``: a group left out
keeps every default, and a field left out of a group keeps its own, as Lightning's and fastai's trainers do with
their flat arguments; grouped, a call says which part of the run each setting is about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab.errors import ConfigError

__all__ = ["Display", "Optimization", "Speed", "or_defaults"]


@dataclass(frozen=True)
class Optimization:
    """How the weights are updated: the optimizer, its learning-rate schedule and gradient clipping.

    Args:
        optimizer: ``params -> Optimizer``; None uses ``model.configure_optimizers()`` (the book's way).
        scheduler: ``(optimizer, steps_per_epoch, max_epochs) -> LR scheduler`` stepped every batch, or None.
        clip_grad_norm: clip the global gradient norm to this value (0 disables).
    """

    optimizer: Callable | None = None
    scheduler: Callable | None = None
    clip_grad_norm: float = 0.0


@dataclass(frozen=True)
class Speed:
    """How fast each step runs, and what that may cost in exactness: precision, memory layout, compiling, kernels.

    Args:
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision, None for full precision.
        channels_last: store images and conv weights NHWC (faster convolutions on many CPUs and GPUs).
        compile: run the training step through ``torch.compile`` (pays for its compile time, tens of seconds,
            only on long runs; needs a C++ compiler on the CPU, Triton on a GPU).
        deterministic: deterministic kernels during ``fit``; None means "when seeded, on the CPU".
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    deterministic: bool | None = None


@dataclass(frozen=True)
class Display:
    """What the run shows while it trains: a progress bar, a line per epoch and the book's live figure.

    Args:
        progress: show a tqdm bar per epoch.
        log: where the per-epoch line goes (``print`` by default; None for silence).
        board: the live figure of the book's ``fit`` (see :mod:`cnnlab.visual.board`): 'auto' draws it in a
            Jupyter notebook and nothing elsewhere; None never draws; or an object with ``step(loss)``,
            ``epoch(row)`` and ``close()``.
    """

    progress: bool = True
    log: Callable[[str], None] | None = print
    board: Any = "auto"


def or_defaults(group, kind: type, name: str):
    """``group`` as given, or the defaults of ``kind`` for None; anything else (a dict, a flat value) is refused."""
    if group is None:
        return kind()
    if not isinstance(group, kind):
        raise ConfigError(f"{name} must be a cnnlab.training.{kind.__name__}(...), got {group!r:.80}")
    return group
