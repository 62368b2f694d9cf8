"""A real full disk: the run folder on a small tmpfs that fills up during the run (root on Linux only).

Elsewhere the simulated ENOSPC tests stand (tests/test_hostile.py, tests/training/test_checkpoint.py,
tests/test_atomic.py).
"""

import errno
import os
import subprocess
import sys

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.runfolder import RunFolder

TINY = ["--model", "lenet-relu", "--num-train", "256", "--num-val", "64", "--epochs", "2", "--seed", "3",
        "--device", "cpu", "--no-progress"]


def _mount_tmpfs(mount, options: str) -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not let us mount a tmpfs (a container without CAP_SYS_ADMIN)")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted in tmp_path (a few LeNet checkpoints fit), unmounted afterwards."""
    _mount_tmpfs(tmp_path / "disk", "size=4m")
    yield tmp_path / "disk"
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs (EROFS for every write, root included), unmounted afterwards."""
    _mount_tmpfs(tmp_path / "ro", "size=1m,ro")
    yield tmp_path / "ro"
    subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)


def test_a_read_only_folder_is_one_line_at_start(read_only_disk, data_dir, capsys, monkeypatch):
    from cnnlab.training.trainer import Trainer

    epochs = []
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self: epochs.append(1))
    code = main(["train", *TINY, "--data-dir", str(data_dir), "--out", str(read_only_disk / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Read-only file system" in err and "--out" in err, err
    assert epochs == [] and os.listdir(read_only_disk) == []  # refused before training, nothing written


def _fill(folder) -> int:
    """Write zeros into ``folder/filler`` until the disk is full; the bytes written."""
    written, chunk = 0, bytes(64 * 1024)
    with open(folder / "filler", "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written


def test_a_disk_that_fills_during_a_run_stops_it_cleanly_and_resume_finishes_it(small_disk, tmp_path, data_dir,
                                                                               capsys, monkeypatch):
    reference = tmp_path / "uninterrupted"
    assert main(["train", *TINY, "--data-dir", str(data_dir), "--out", str(reference)]) == 0
    saved = RunFolder.on_train_epoch_end

    def save_then_fill_the_disk(self, trainer, model, row):
        saved(self, trainer, model, row)
        if row["epoch"] == 1:  # epoch 1 is on disk; then something else takes all the space that is left
            assert _fill(small_disk) > 0

    monkeypatch.setattr(RunFolder, "on_train_epoch_end", save_then_fill_the_disk)
    run = small_disk / "run"
    capsys.readouterr()
    code = main(["train", *TINY, "--data-dir", str(data_dir), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("cnnlab: error: cannot write ") and "No space left on device" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the last complete one, whole
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or p.name == ".lock"]

    monkeypatch.setattr(RunFolder, "on_train_epoch_end", saved)
    (small_disk / "filler").unlink()  # space again
    assert main(["train", "--resume", str(run)]) == 0
    last, expected = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert last["epoch"] == 2
    for name, value in expected["model_state"].items():
        assert torch.equal(last["model_state"][name], value), name
