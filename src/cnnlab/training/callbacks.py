"""Trainer hooks, named as Lightning's callbacks are: subclass :class:`Callback` and override what you need.

``Trainer(callbacks=[...])`` calls, on rank 0 and every other rank alike (a callback that writes files checks
``trainer.is_main``):

- ``on_fit_start(trainer, model)``: after set-up (and after a resumed run's state is loaded; ``trainer.epoch``
  is then the number of epochs already done);
- ``on_train_epoch_end(trainer, model, row)``: after each epoch's validation, with the epoch's metrics row
  (``epoch``, ``train_loss``, ``val_loss``, ``val_acc``, ``lr``, ``images_per_s``, ``seconds``, ``elapsed``);
- ``on_save_checkpoint(trainer, state)``: before a checkpoint dict is written; add plain values to ``state``;
- ``on_fit_end(trainer, model)``: after the last epoch, also when there was nothing left to train;
- ``on_exception(trainer, model, exc)``: instead of ``on_fit_end`` when ``fit`` raises (after ``on_fit_start`` was
  called, Ctrl-C included), before the exception propagates: release what the callback holds.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Callback", "EpochEndFunction"]


class Callback:
    """Base class of the trainer's hooks; every method does nothing."""

    def on_fit_start(self, trainer, model) -> None:
        """Called once set-up is done, before the first epoch of this call to ``fit``."""

    def on_train_epoch_end(self, trainer, model, row: dict) -> None:
        """Called after each epoch with its metrics row."""

    def on_save_checkpoint(self, trainer, state: dict) -> None:
        """Called with each checkpoint dict before it is written."""

    def on_fit_end(self, trainer, model) -> None:
        """Called when ``fit`` has trained its last epoch."""

    def on_exception(self, trainer, model, exc: BaseException) -> None:
        """Called when ``fit`` raises ``exc`` (a diverged loss, a data error, Ctrl-C); ``fit`` then re-raises it."""


class EpochEndFunction(Callback):
    """A plain ``(trainer, row)`` function as a callback: the ``on_epoch_end=`` shorthand."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_train_epoch_end(self, trainer, model, row: dict) -> None:
        self.fn(trainer, row)
