"""The run folder: the one place that knows what a run writes and how it is read back.

A run folder holds ``config.json`` (the settings it was started with), ``metrics.csv`` and ``metrics.jsonl``
(one row per epoch), ``curves.png``, and the checkpoints ``last.pt`` (every epoch) and ``best.pt`` (the epoch
of highest validation accuracy). Every file is written by :func:`cnnlab.atomic.atomic_write` (temporary file,
fsync, rename, fsync of the folder), so a crash or a full disk leaves each file whole, old or new.

:class:`RunFolder` is also a trainer callback: ``Trainer(run_dir=...)`` adds one, and after each epoch it
writes the checkpoints and metrics, on rank 0 only under torchrun. ``cnnlab evaluate``, ``report``, ``viz``
and ``--resume`` read runs through it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.errors import CheckpointError, RunFolderError, UserError
from cnnlab.training import distributed as dist_utils
from cnnlab.training import runlock
from cnnlab.training.baseline import BASELINE_FILE
from cnnlab.training.callbacks import Callback
from cnnlab.training.checkpoint import current_names, resolve_checkpoint, save_checkpoint

__all__ = ["RunFolder", "METRIC_FIELDS", "RUN_FILES", "RUN_FOLDERS", "set_up_run_folder"]

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "images_per_s", "seconds", "elapsed")
# During training curves.png is redrawn at most this often: a draw costs ~0.25 s on 2 CPU cores (12 validations
# of a 25 s automatic run spent 3 s drawing); the first epoch's and the finished run's curves are always drawn.
CURVES_EVERY_S = 10.0
# What a run writes into its folder and reads back. A new run in a folder that holds an earlier run's removes
# them before it writes its config.json: the earlier baseline printed beside the new accuracy, the earlier
# best.pt scored (or last.pt resumed) under the new config before the new run's first epoch replaced them, or
# two runs' TensorBoard events drawn as one, are answers that belong to another run.
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "curves.png", BASELINE_FILE)
RUN_FOLDERS = ("tensorboard",)


class RunFolder(Callback):
    """A run's folder: its files' paths, their writers and readers, and the per-epoch writing as a callback.

    Args:
        path: the folder (it need not exist until :meth:`create`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._saved_finished = True  # whether the last.pt this object wrote knew that the run had finished
        self._curves_drawn_at: float | None = None  # time.monotonic() of this object's last draw of curves.png
        self._curves_rows = 0  # the epochs that draw showed
        self.replaced: list[str] = []  # what create() removed of an earlier run in this folder

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    # ---- creating and reading --------------------------------------------------------------------

    def create(self, config: dict | None = None, exclusive: bool = False) -> RunFolder:
        """Make the folder, hold its lock, check that it takes files, and write ``config.json`` if given.

        The lock (:mod:`cnnlab.training.runlock`) is taken before anything is written and held until
        :meth:`release`, or until the process ends, however it ends.

        A new run's ``config`` first removes an earlier run's files (:data:`RUN_FILES`, :data:`RUN_FOLDERS`),
        listed in :attr:`replaced`.

        Args:
            config: the run's settings for ``config.json`` (None: keep the one there, as a resume does).
            exclusive: the folder must not exist yet (a default name; see :meth:`create_new`).

        Raises:
            FileExistsError: ``exclusive`` and the folder exists.
            RunFolderBusy: another live process is writing the folder (nothing was written).
            RunFolderError: the folder cannot be created or written into.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=not exclusive)
        except FileExistsError:
            if exclusive:
                raise
            raise RunFolderError(f"cannot create run folder {self.path}: a file of that name exists; choose "
                                 "another --out folder") from None
        except OSError as exc:
            raise RunFolderError(f"cannot create run folder {self.path}: {exc.strerror or exc}; choose another "
                                 "--out folder") from None
        runlock.acquire(self.path)
        try:
            probe = self.path / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
            if config is not None:
                self.replaced = self._remove_earlier_run()
                with atomic_write(self.config_file, "w") as f:  # a kill never leaves half a config
                    f.write(json.dumps(config, indent=2) + "\n")
        except OSError as exc:
            self.release()
            reason = exc.strerror or str(exc)
            raise RunFolderError(f"cannot write into run folder {self.path}: {reason}; choose another --out "
                                 "folder") from None
        return self

    def _remove_earlier_run(self) -> list[str]:
        """Remove the files and folders an earlier run wrote here; their names."""
        removed = []
        for name in RUN_FILES:
            path = self.path / name
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(name)
        for name in RUN_FOLDERS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():  # a link's target is not the run's to delete
                shutil.rmtree(path)
                removed.append(name + "/")
        return removed

    @classmethod
    def create_new(cls, base: str | os.PathLike, config: dict | None = None) -> RunFolder:
        """Create a folder no other run has: ``base``, else ``base-1``, ``base-2``... (Lightning's version_N).

        The name is taken by an exclusive ``mkdir``, so two runs started in the same second (the default name
        holds the time to the second) get two folders, never one.
        """
        base = Path(base)
        for n in range(10_000):
            folder = cls(base if n == 0 else base.with_name(f"{base.name}-{n}"))
            try:
                return folder.create(config, exclusive=True)
            except FileExistsError:
                continue
        raise RunFolderError(f"10,000 run folders named {base}-N exist already; choose an --out folder")

    def release(self) -> None:
        """Let go of the folder's lock taken by :meth:`create` (a no-op if not held)."""
        runlock.release(self.path)

    def read_config(self) -> dict:
        """The settings the run was started with, as stored (the caller checks the fields).

        Raises:
            RunFolderError: no such folder, or no readable ``config.json`` in it.
        """
        if not self.path.is_dir():
            raise RunFolderError(f"no such run folder: {self.path}")
        if not self.config_file.is_file():
            raise RunFolderError(f"{self.path} is not a cnnlab run folder (no config.json); give the folder "
                                 "that `cnnlab train --out` wrote")
        try:
            values = json.loads(self.config_file.read_text())
        except (ValueError, OSError) as exc:
            raise RunFolderError(f"{self.config_file} is not a valid run config: {exc}") from None
        if not isinstance(values, dict):
            raise RunFolderError(f"{self.config_file} is not a valid run config: not a JSON object")
        return current_names(values)  # an older run's names (resize) as today's (image_size)

    def checkpoint(self, prefer: str = "best") -> Path:
        """The checkpoint to use: ``best.pt``, else ``last.pt`` (``prefer="last"``: the other way round)."""
        return resolve_checkpoint(self.path, prefer)

    def history(self) -> list[dict]:
        """The per-epoch metrics rows of ``metrics.jsonl`` ([] before the first epoch)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise RunFolderError(f"{path} has a line that is not JSON ({line[:40]!r}); the run folder "
                                         "is damaged, train it again") from None
        return rows

    # ---- writing -----------------------------------------------------------------------------------

    def save(self, state: dict, is_best: bool) -> None:
        """Write ``last.pt`` and, for a best epoch, ``best.pt``."""
        # best.pt first: a crash between the two writes then redoes this epoch (resume reads last.pt) and
        # rewrites best.pt, instead of leaving a best.pt that misses its best epoch forever.
        if is_best:
            save_checkpoint(state, self.best)
        save_checkpoint(state, self.last)

    def write_metrics(self, rows: list[dict], draw: bool = True) -> None:
        """Rewrite ``metrics.csv``, ``metrics.jsonl`` and (if ``draw``) ``curves.png`` from all rows so far."""
        # Rewritten whole each epoch (small), so a resumed run's files never hold rows of epochs that were
        # lost in a crash.
        with atomic_write(self.path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with atomic_write(self.path / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        if draw:
            self.draw_curves(rows)

    def draw_curves(self, rows: list[dict]) -> None:
        """Draw ``curves.png`` from ``rows``."""
        from cnnlab.visual.plotting import plot_curves  # matplotlib only once there is something to draw

        plot_curves(rows, self.path / "curves.png")
        self._curves_drawn_at, self._curves_rows = time.monotonic(), len(rows)

    # ---- as a trainer callback ---------------------------------------------------------------------

    def on_fit_start(self, trainer, model) -> None:
        if trainer.is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def on_train_epoch_end(self, trainer, model, row: dict) -> None:
        if trainer.is_main:
            state = trainer.state_dict()
            self.save(state, is_best=trainer.is_best_epoch)
            self._saved_finished = state.get("finished", False)
            due = self._curves_drawn_at is None or time.monotonic() - self._curves_drawn_at >= CURVES_EVERY_S
            self.write_metrics(trainer.history, draw=due)

    def on_fit_end(self, trainer, model) -> None:
        # A budget's clock can end the run after its last checkpoint was written (cnnlab.recipes.budget's
        # BudgetKeeper re-plans after it): last.pt says so, so that a resume finds nothing left to do.
        if trainer.is_main and trainer.finished and not self._saved_finished:
            self.save(trainer.state_dict(), is_best=False)
            self._saved_finished = True
        if trainer.is_main and self._curves_rows < len(trainer.history):
            self.draw_curves(trainer.history)


def set_up_run_folder(folder: RunFolder | None, config: dict | None, default_dir: Path, state: dict | None,
                      ctx: dist_utils.DistContext, log=None) -> RunFolder:
    """Rank 0 creates and locks the run folder (and writes ``config.json`` for a new run, whose ``config`` is
    given); every rank learns its path.

    ``folder`` None: a new run without ``--out``, in a folder named after ``default_dir`` that rank 0 chooses.
    Where a new run replaces an earlier one in its folder, ``log`` says what was removed.
    """
    error, path = None, None
    if ctx.is_main:
        try:
            if folder is None:  # a default name: taken exclusively, the next free one on a collision
                folder = RunFolder.create_new(default_dir, config)
            else:
                folder.create(config)
            path = str(folder.path)
        except UserError as exc:
            error = exc
        if folder is not None and folder.replaced and log is not None:
            log(f"a new run in {folder.path}: the earlier run's {', '.join(folder.replaced)} removed (`cnnlab "
                f"train --resume {folder.path}` continues a run instead)")
    # One exchange settles the set-up for all ranks: rank 0's folder (the default name holds a timestamp that
    # could differ between ranks), whether rank 0 could create it (so no rank waits for a rank 0 that gave
    # up), and which checkpoint epoch each rank loaded (they must all resume from the same one).
    seen = dist_utils.all_gather_object((path, error, state.get("epoch") if state else None), ctx)
    if seen[0][1] is not None:
        raise seen[0][1]
    if not ctx.is_main:
        folder = RunFolder(seen[0][0])
    epochs = [epoch for _, _, epoch in seen]
    if len(set(epochs)) > 1:
        folder.release()  # the caller never learns of this folder: let go of it here
        raise CheckpointError(f"the processes of this run found different checkpoints in {folder.path} (epoch "
                              f"by rank: {epochs}); on several machines the run folder must be on a filesystem "
                              "they all share, at the same path")
    return folder
