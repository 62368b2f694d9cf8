"""Atomic checkpoint writes and safe loads (cnnlab.checkpoint)."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from cnnlab.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint


def _state(value=1.0):
    return {"version": CHECKPOINT_VERSION, "model_state": {"w": torch.full((3,), value)}, "epoch": 2,
            "history": [{"epoch": 1, "val_acc": 0.5}], "config": {"model": "lenet", "lr": 0.1}}


def test_round_trip_and_no_temp_files_left(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model_state"]["w"], torch.ones(3))
    assert loaded["history"] == [{"epoch": 1, "val_acc": 0.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_overwrite_replaces_whole_file(tmp_path):
    save_checkpoint(_state(1.0), tmp_path / "last.pt")
    save_checkpoint(_state(2.0), tmp_path / "last.pt")
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model_state"]["w"], torch.full((3,), 2.0))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"version": CHECKPOINT_VERSION, "model_state": {}, "payload": _Evil(str(target))}, path)
    assert not target.exists()  # saving did not run it either
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not target.exists()


def test_raw_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Evil(str(target))))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize("content, words", [(b"", "empty"), (b"\x00garbage" * 100, "truncated or not")])
def test_empty_and_garbage_files(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_torch_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_checkpoint_and_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no such run folder"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path)


def test_resolve_prefers_best_then_last(tmp_path):
    save_checkpoint(_state(), tmp_path / "last.pt")
    assert resolve_checkpoint(tmp_path).name == "last.pt"
    save_checkpoint(_state(), tmp_path / "best.pt")
    assert resolve_checkpoint(tmp_path).name == "best.pt"
    assert resolve_checkpoint(tmp_path, prefer="last").name == "last.pt"


def test_unwritable_checkpoint_keeps_earlier_checkpoint(tmp_path):
    # Permission bits do not stop root, which runs this suite here; so the write is made impossible in a way
    # that stops everyone: a folder sits where save_checkpoint's temporary file has to be created.
    save_checkpoint(_state(1.0), tmp_path / "last.pt")
    blocker = tmp_path / f".last.pt.tmp-{os.getpid()}"
    blocker.mkdir()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt: Is a directory; .*is intact"):
        save_checkpoint(_state(2.0), tmp_path / "last.pt")
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model_state"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([blocker.name, "last.pt"])


def test_full_disk_keeps_earlier_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(_state(1.0), tmp_path / "last.pt")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(_state(2.0), tmp_path / "last.pt")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model_state"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_folder_that_is_a_file_gives_clear_error(tmp_path):
    # Works as root too, where permission bits do not stop writes: nothing can be created under a file.
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*run/last\.pt: Not a directory"):
        save_checkpoint(_state(), blocker / "last.pt")
    assert blocker.read_text() == "not a folder" and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_temp_files_of_killed_writers_are_removed_by_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.pt.tmp-{os.getppid()}"  # a live process's write in progress is left alone
    live.write_bytes(b"being written")
    other = tmp_path / f".best.pt.tmp-{dead.pid}"  # another file's temp: its own next save removes it
    other.write_bytes(b"x")
    save_checkpoint(_state(), tmp_path / "last.pt")
    assert not stale.exists() and live.exists() and other.exists()


def test_unsaveable_state_leaves_no_temp_file(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint({**_state(), "hook": lambda: None}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, words", [
    ({"image_size": 100_000}, "image_size"),
    ({"image_size": (28, 10**9)}, "image_size"),
    ({"in_channels": 10**6}, "in_channels"),
    ({"num_classes": 10**9}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": "0.1"}, "lr"),
], ids=["huge-image", "huge-width", "huge-channels", "huge-classes", "bool-classes", "nan-lr", "text-lr"])
def test_crafted_model_kwargs_are_refused_before_building(kwargs, words):
    from cnnlab.checkpoint import model_from_checkpoint

    state = {**_state(), "model_name": "lenet-relu", "model_kwargs": kwargs}
    with pytest.raises(CheckpointError, match=f"out of range.*{words}"):
        model_from_checkpoint(state)


def test_model_state_that_is_not_a_state_dict_is_refused():
    from cnnlab.checkpoint import model_from_checkpoint

    for bad in ([1, 2, 3], {"w": "not a tensor"}, "text"):
        with pytest.raises(CheckpointError, match="do not fit"):
            model_from_checkpoint({**_state(), "model_name": "lenet-relu", "model_state": bad})
    with pytest.raises(CheckpointError, match="not a dict"):
        model_from_checkpoint({**_state(), "model_name": "lenet-relu", "model_kwargs": [1]})
