"""Test-only stand-in for ``python -m cnnlab``: the same program, which SIGKILLs itself at one exact point.

Deterministic fault injection for tests/test_hostile.py: instead of a kill sent from outside at a lucky
moment, the process kills itself where the test says, every time. Only this script patches anything (in its
own process); the library has no test hooks.

Environment:
    CNNLAB_TEST_KILL: ``POINT:EPOCH`` (epochs counted from 1), one of
        ``step:E:S``            after the S-th optimizer step of epoch E (mid-epoch, before its checkpoints);
        ``last-pt-write:E``     inside the write of epoch E's last.pt: half of the serialized checkpoint is
                                written to the temporary file and fsynced, then the kill, before os.replace;
        ``between-checkpoints:E`` after the first of epoch E's two checkpoint writes (best.pt, then last.pt),
                                before the second; an epoch that writes only last.pt is not a match;
        ``metrics:E``           while epoch E's curves.png is drawn (after its last.pt, metrics.csv and .jsonl).
        Unset: no kill. A point never reached means no kill: the process then ends as cnnlab would.
"""

import io
import os
import signal
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import cnnlab.training.runfolder
import cnnlab.training.trainer
import cnnlab.visual.plotting
from cnnlab.cli.main import main

POINT, *WHERE = os.environ.get("CNNLAB_TEST_KILL", "none").split(":")
WHERE = [int(x) for x in WHERE]


def _die(what: str) -> None:
    print(f"[fault injection] SIGKILL {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


# The epoch being trained (1-based), as Trainer._train_epoch starts it, and optimizer steps taken in it.
_now = {"epoch": 0, "steps": 0}
_train_epoch = cnnlab.training.trainer.Trainer._train_epoch


def _counting_train_epoch(self):
    _now["epoch"], _now["steps"] = self.epoch + 1, 0
    return _train_epoch(self)


def _after_step(optimizer, args, kwargs):
    _now["steps"] += 1
    if POINT == "step" and WHERE == [_now["epoch"], _now["steps"]]:
        _die(f"after step {_now['steps']} of epoch {_now['epoch']}")


_torch_save = torch.save


def _half_written_save(obj, f, *args, **kwargs):
    name = os.path.basename(getattr(f, "name", ""))
    if POINT == "last-pt-write" and name.startswith(".last.pt.tmp-") and obj.get("epoch") == WHERE[0]:
        buffer = io.BytesIO()
        _torch_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _die(f"inside the write of epoch {WHERE[0]}'s last.pt ({len(data) // 2} of {len(data)} bytes in {name})")
    return _torch_save(obj, f, *args, **kwargs)


_save_checkpoint = cnnlab.training.runfolder.save_checkpoint
_writes: list[tuple[int, str]] = []


def _save_checkpoint_then_maybe_die(state, path):
    epoch = state["epoch"]
    if POINT == "between-checkpoints" and epoch == WHERE[0] and [e for e, _ in _writes].count(epoch) == 1:
        _die(f"between epoch {epoch}'s {_writes[-1][1]} and {os.path.basename(path)}")
    result = _save_checkpoint(state, path)
    _writes.append((epoch, os.path.basename(path)))
    return result


_plot_curves = cnnlab.visual.plotting.plot_curves


def _plot_curves_or_die(rows, path):
    if POINT == "metrics" and len(rows) == WHERE[0]:
        _die(f"while drawing epoch {WHERE[0]}'s curves")
    return _plot_curves(rows, path)


if __name__ == "__main__":
    cnnlab.training.trainer.Trainer._train_epoch = _counting_train_epoch
    register_optimizer_step_post_hook(_after_step)
    torch.save = _half_written_save
    cnnlab.training.runfolder.save_checkpoint = _save_checkpoint_then_maybe_die
    cnnlab.visual.plotting.plot_curves = _plot_curves_or_die
    sys.exit(main(sys.argv[1:]))
