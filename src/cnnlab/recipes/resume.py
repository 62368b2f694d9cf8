"""Continuing a run by itself: torchrun's elastic restarts and ``cnnlab train --out DIR --resume auto``.

``torchrun --max-restarts=N`` starts the workers again with the same command line after one dies, and
PyTorch's elastic guide expects the script to load its latest checkpoint then. So, under torchrun, a new run
whose ``--out`` folder already holds a ``last.pt`` of the same configuration continues it, as ``--resume DIR``
would; ``--resume auto`` does the same outside torchrun (and starts afresh where there is nothing to continue).
A folder that holds a run of other settings is refused with the differences named, never overwritten.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.models import narrower_model
from cnnlab.recipes.config import TrainConfig
from cnnlab.training import distributed as dist_utils
from cnnlab.training.runfolder import RunFolder

__all__ = ["AUTO", "NEW", "config_differences", "decided_by_budget", "folder_to_resume"]

AUTO = "auto"
# A new run in --out whatever it holds, even under torchrun: the automatic recipe's restart after a divergence,
# whose folder holds the diverged attempt (taken for an elastic restart's, of another lr, it was refused)
NEW = "new"

# Settings that may differ between a run and its continuation: how it is shown and where it was named from.
_FREE = ("progress", "out")


def config_differences(stored: dict, given: dict) -> list[str]:
    """``"name: stored -> given"`` for each setting that differs (a None in ``given`` is "decided later", and so is
    what a ``--budget`` run decided from the setting given: :func:`decided_by_budget`)."""
    names = sorted(set(stored) | set(given))
    return [f"{name}: {stored.get(name)!r} there, {given.get(name)!r} now" for name in names
            if name not in _FREE and given.get(name) is not None and stored.get(name) != given.get(name)
            and not (stored.get("budget") is not None and decided_by_budget(name, stored.get(name), given[name]))]


def decided_by_budget(name: str, there, now) -> bool:
    """Whether a budgeted CPU run could have recorded ``there`` for setting ``name`` when it was given ``now``:
    a narrower form of the model (``cnnlab.models.narrower_model``, any number of steps down) or the batch halved
    (:func:`cnnlab.recipes.budget.budget_batch_size`). So the same ``--budget`` command with ``--resume auto``
    continues its run."""
    if name == "model" and isinstance(now, str):
        while (now := narrower_model(now)) is not None:
            if now == there:
                return True
        return False
    if name == "batch_size" and isinstance(there, int) and isinstance(now, int) and 0 < there < now:
        ratio = now // there
        return now % there == 0 and ratio & (ratio - 1) == 0
    return False


def folder_to_resume(config: TrainConfig, resume: str | None) -> Path | None:
    """The run folder this start continues by itself, or None for a fresh run.

    Args:
        config: the settings of this start (``cnnlab train``'s options).
        resume: ``"auto"`` (``--resume auto``) or None (then only an elastic start under torchrun continues).

    Raises:
        ConfigError: ``--resume auto`` without ``--out``, or the folder holds a run of other settings.
    """
    if resume == AUTO and config.out is None:
        raise ConfigError("--resume auto continues the run in --out DIR; give --out DIR (or --resume DIR)")
    if config.out is None or (resume != AUTO and not dist_utils.launched_by_torchrun()):
        return None
    folder = RunFolder(config.out)
    if not folder.last.is_file():
        return None  # nothing finished there yet: a fresh start
    differences = config_differences(folder.read_config(), config.to_dict())
    if differences:
        raise ConfigError(f"{folder.path} holds a run of other settings ({'; '.join(differences)}); continue it "
                          "with `cnnlab train --resume DIR`, or give another --out folder")
    return folder.path
