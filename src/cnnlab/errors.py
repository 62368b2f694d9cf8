"""cnnlab's errors: one base class, :class:`UserError`, for everything a user can cause and fix.

The command line catches ``UserError`` alone: it prints the message (one sentence that names the bad value and
how to fix it) and exits with the error's ``exit_code``. Any other exception is a bug, in cnnlab or a library
under it, and is shown as one: a short line and the traceback, exit code 1 (``cnnlab --debug`` re-raises it).

The data, checkpoint, image and config errors are also ``ValueError``\\ s, and the run failures also
``RuntimeError``\\ s, so code written against those built-in types keeps catching them.
"""

from __future__ import annotations

import os

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "RunFolderError", "ImageError",
           "WriteError", "TrainingDiverged", "DistributedRunFailed", "MissingExtra", "RunInterrupted"]


class UserError(Exception):
    """A mistake in the input (arguments, files, data, environment) that the user can fix; the CLI exits 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An impossible setting: a bad option value, an unknown model, recipe or device."""


class DataError(UserError, ValueError):
    """A data file is missing, corrupt or not what it claims; the message names the file and what to do."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be written, read or trusted; the message says which file and why."""


class RunFolderError(UserError, ValueError):
    """A run folder that cannot be created, written or resumed (not a checkpoint problem)."""


class ImageError(UserError, ValueError):
    """An image file that cannot be used; the message names the file and why."""


class MissingExtra(UserError, ImportError):
    """An optional feature whose packages are not installed; the message is the pip command."""


class WriteError(UserError, OSError):
    """A file could not be written (folder missing, read-only, disk full); nothing half-written remains."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"cannot write {path}: {reason}; free some space or choose another folder")
        self.path, self.cause = path, cause


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept (exit code 3)."""

    exit_code = 3


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training run; ``run_dir`` is its folder, None if none was created yet (the CLI says
    what is saved there and how to resume, exit 130)."""

    def __init__(self, run_dir: str | os.PathLike | None):
        super().__init__(run_dir)
        self.run_dir = run_dir


class DistributedRunFailed(UserError, RuntimeError):
    """Another process of a torchrun run died or timed out; the run can continue with ``--resume`` (exit 4)."""

    exit_code = 4
