"""Atomic checkpoint writes and safe loads (cnnlab.training.checkpoint)."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from cnnlab.errors import RunFolderError
from cnnlab.training.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


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
    with pytest.raises(RunFolderError, match="no such run folder"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(RunFolderError, match="holds no checkpoint"):
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
    from cnnlab.training.checkpoint import model_from_checkpoint

    state = {**_state(), "model_name": "lenet-relu", "model_kwargs": kwargs}
    with pytest.raises(CheckpointError, match=f"out of range.*{words}"):
        model_from_checkpoint(state)


def test_model_state_that_is_not_a_state_dict_is_refused():
    from cnnlab.training.checkpoint import model_from_checkpoint

    for bad in ([1, 2, 3], {"w": "not a tensor"}, "text"):
        with pytest.raises(CheckpointError, match="do not fit"):
            model_from_checkpoint({**_state(), "model_name": "lenet-relu", "model_state": bad})
    with pytest.raises(CheckpointError, match="not a dict"):
        model_from_checkpoint({**_state(), "model_name": "lenet-relu", "model_kwargs": [1]})


# -- a checkpoint that is a decompression bomb ------------------------------------------------------------------

BOMB_ELEMENTS = 2**24  # 64 MiB of float32 zeros, deflated to about 64 KiB: inflating it would show 8x the 8 MiB slack


def _lenet_state(**extra):
    from cnnlab.models import create_model

    model = create_model("lenet")
    return {"version": CHECKPOINT_VERSION, "model_name": "lenet", "model_kwargs": dict(model.model_kwargs),
            "model_state": model.state_dict(), **extra}


def _rezip(source, dest, compression):
    """Copy a zip entry by entry (streamed, 1 MiB at a time) with another compression."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w", compression) as out:
        for info in src.infolist():
            with src.open(info) as reader, out.open(info.filename, "w", force_zip64=True) as writer:
                while chunk := reader.read(1 << 20):
                    writer.write(chunk)
    return dest


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A cnnlab checkpoint re-zipped with deflate, holding a 64 MiB tensor in well under 1 MiB."""
    import zipfile

    folder = tmp_path_factory.mktemp("bomb")
    big = folder / "big.pt"
    torch.save(_lenet_state(padding=torch.zeros(BOMB_ELEMENTS)), big)
    path = _rezip(big, folder / "bomb.pt", zipfile.ZIP_DEFLATED)
    big.unlink()
    assert path.stat().st_size < 2**20
    return path


def _peak_rss_mib(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; its own peak resident memory (MiB) and its stderr."""
    wrapper = ("import resource, sys\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines())
               + "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    return int(lines[-1]) / 1024, "\n".join(lines[:-1])


def test_a_deflated_checkpoint_is_refused_before_it_inflates(bomb, tmp_path):
    with pytest.raises(CheckpointError, match="are compressed, which torch.save never does") as err:
        load_checkpoint(bomb)
    assert f"would inflate to {BOMB_ELEMENTS * 4 // 2**20}." in str(err.value)  # MiB, plus the small entries
    intact = save_checkpoint(_lenet_state(), tmp_path / "intact.pt")
    load = ("from cnnlab.training.checkpoint import load_checkpoint\n"
            "try:\n    load_checkpoint({!r})\nexcept Exception:\n    pass")
    normal, _ = _peak_rss_mib(load.format(str(intact)))
    refused, _ = _peak_rss_mib(load.format(str(bomb)))
    # Inflating would add 64 MiB; refusing from the zip directory costs nothing measurable.
    assert refused <= normal + 8, (refused, normal)


def test_a_stored_checkpoint_with_a_huge_tensor_is_refused_before_use(tmp_path):
    # Not compressed, so the file is as big as its tensor: loading it maps the file instead of copying it, and
    # the tensor is refused for being far beyond what a LeNet and its optimizer need.
    path = save_checkpoint(_lenet_state(padding=torch.zeros(2**22)), tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match=r"holds 16\.\d MiB of tensors, but model 'lenet' needs at most"):
        load_checkpoint(path)
    assert load_checkpoint(save_checkpoint(_lenet_state(), tmp_path / "ok.pt"))["model_name"] == "lenet"


def test_a_zip_directory_that_promises_more_than_the_file_holds_is_refused(tmp_path):
    path = save_checkpoint(_lenet_state(), tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    # Make the central directory claim 2 GiB for the first entry (both sizes, so that it still looks stored).
    start = data.find(b"PK\x01\x02")
    data[start + 20:start + 28] = (2**31).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="refusing to load|truncated or not a torch checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_the_cli_refuses_a_bomb_with_one_line_and_exit_2(bomb, tmp_path, command, capsys):
    import json
    import shutil

    from cnnlab.cli.main import main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(bomb, run / ("last.pt" if command == "resume" else "best.pt"))
    (run / "config.json").write_text(json.dumps({"model": "lenet", "epochs": 2, "batch_size": 128, "lr": 0.1,
                                                 "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0,
                                                 "schedule": "constant", "label_smoothing": 0.0, "image_size": 28,
                                                 "augment": False, "normalize": False, "bf16": False,
                                                 "channels_last": False, "compile": False}))
    argv = {"evaluate": ["evaluate", str(run)], "predict": ["predict", str(run), "--test-index", "0"],
            "resume": ["train", "--resume", str(run)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are compressed, which torch.save never does" in err


# -- what a damaged file causes is the file's fault; what a builder's bug causes is a bug -------------------------

def test_fuzzed_pickles_inside_a_real_checkpoint_raise_only_checkpoint_error(tmp_path):
    """A seeded sample of the fuzzing that chose load_checkpoint's list of exceptions (bytes changed, dropped or
    inserted in data.pkl, the zip rebuilt stored): torch.load raises a dozen types; each becomes one line."""
    import random
    import zipfile

    good = save_checkpoint(_lenet_state(), tmp_path / "good.pt")
    with zipfile.ZipFile(good) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    pickle_name = next(name for name in entries if name.endswith("data.pkl"))
    rng = random.Random(0)
    refused = 0
    for trial in range(60):
        data = bytearray(entries[pickle_name])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[at] = rng.randrange(256)
            else:
                del data[at]
        path = tmp_path / f"fuzz{trial}.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
            for name, content in entries.items():
                out.writestr(name, bytes(data) if name == pickle_name else content)
        try:
            load_checkpoint(path)
        except CheckpointError:
            refused += 1
    assert refused > 40  # most mutations break the file; the rest still load (a changed float, say)


@pytest.fixture
def buggy_model(monkeypatch):
    """A registered model 'buggy' whose builder has a bug (an AttributeError) once ``broken`` is set."""
    from cnnlab.models import registry
    from cnnlab.models.lenet import lenet

    switch = {"broken": False}

    def build(*, num_classes=10, in_channels=1, image_size=28, lr=0.1):
        if switch["broken"]:
            return None.weight  # the bug
        return lenet(num_classes=num_classes, in_channels=in_channels, image_size=image_size, lr=lr)

    monkeypatch.setitem(registry._MODELS, "buggy", build)
    return switch


def test_a_bug_in_a_model_builder_is_a_traceback_not_a_corrupt_file(buggy_model, tmp_path, capsys):
    from cnnlab.cli.main import main
    from cnnlab.models import create_model

    model = create_model("buggy")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"version": CHECKPOINT_VERSION, "model_name": "buggy", "model_kwargs": {"num_classes": 10},
                     "model_state": model.state_dict()}, run / "best.pt")
    buggy_model["broken"] = True
    assert main(["predict", str(run), "--test-index", "0"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" in err and "AttributeError" in err
    assert "corrupt" not in err


def test_stored_settings_a_builder_refuses_are_the_files_fault(buggy_model, tmp_path, capsys):
    from cnnlab.cli.main import main

    for kwargs, words in [({"image_size": 4}, "cannot be built from its stored settings"),
                          ({"num_layers": 3}, "cannot be built from its stored settings")]:
        path = save_checkpoint({**_lenet_state(), "model_kwargs": kwargs}, tmp_path / "best.pt")
        assert main(["predict", str(path), "--test-index", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
