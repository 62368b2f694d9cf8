"""A data module that makes several passes over its training images per epoch: :class:`RepeatedPasses`.

A small folder trained for thousands of steps (the automatic recipe, :mod:`cnnlab.recipes.auto`) would otherwise
be validated and checkpointed after every pass, hundreds of times. The passes are recorded in the run's config
(``passes``), so a resumed or replayed run rebuilds the same epochs and the same batches.
"""

from __future__ import annotations

__all__ = ["RepeatedPasses"]


class RepeatedPasses:
    """A data module whose training loader makes ``passes`` seeded passes per epoch (validation stays one pass),
    so that a small folder trained for thousands of steps is validated a dozen times, not hundreds."""

    def __init__(self, data, passes: int):
        self.data, self.passes = data, passes

    def __getattr__(self, name):  # everything else (classes, settings, val/test loaders) is the folder's
        return getattr(self.data, name)

    def to(self, device):
        self.data.to(device)
        return self

    def train_dataloader(self):
        return _Passes(self.data.train_dataloader(), self.passes)


class _Passes:
    def __init__(self, loader, passes: int):
        self.loader, self.passes, self._epoch = loader, passes, 0

    def __len__(self) -> int:
        return len(self.loader) * self.passes

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def shard(self, rank: int, world_size: int):
        self.loader.shard(rank, world_size)
        return self

    def __iter__(self):
        for p in range(self.passes):  # pass p of epoch e is the inner loader's epoch e * passes + p
            self.loader.set_epoch(self._epoch * self.passes + p)
            yield from self.loader
        self._epoch += 1
