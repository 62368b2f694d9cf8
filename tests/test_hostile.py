"""Hostile and unlucky conditions, one test per case: kills mid-run, crafted checkpoints, full or unwritable
output folders, fuzzed IDX files and odd or malicious images.

Each case ends either in correct behaviour or in one clear sentence (a DataError, CheckpointError or
ImageError; exit code 2 with one line on stderr from the CLI), never in a traceback, a hang, a partial
checkpoint or code run from a file.
"""

import csv
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cnnlab.models
from cnnlab.cli.main import main
from cnnlab.data.idx import read_idx
from cnnlab.data.images import MAX_PIXELS
from cnnlab.errors import CheckpointError, DataError, ImageError
from cnnlab.inference.loaded import load_image
from cnnlab.training.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from cnnlab.training.trainer import Trainer
from io_counting import count_idx_reads

TINY = ["--model", "lenet-relu", "--num-train", "1000", "--num-val", "200", "--no-progress"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir):
    """One tiny real run, trained through the CLI in-process, for the predict and evaluate cases."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def _cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process; returns (exit code, stderr) after checking stderr is one line, no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:
        assert err.count("\n") == 1 and err.startswith("cnnlab: error: "), err
    return code, err


def _cnnlab(*args) -> list[str]:
    return [sys.executable, "-m", "cnnlab", *map(str, args)]


def _env() -> dict:
    # One thread per process: two cores shared by the test and its subprocesses.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---- crash safety ----------------------------------------------------------------------------------------

# --no-bf16: the comparisons below are bit-exact, so nothing may depend on how a CPU rounds bf16.
CRASH_ARGS = [*TINY, "--epochs", "4", "--seed", "1", "--no-bf16"]
FAULT_WORKER = Path(__file__).parent / "_fault_worker.py"


def _train_until_killed(kill: str | None, log: Path, *args) -> int:
    """Run ``cnnlab train ARGS`` under tests/_fault_worker.py, which SIGKILLs itself at ``kill``
    (``POINT:EPOCH``, see there); returns the exit status (``-SIGKILL`` when the kill happened)."""
    env = {**_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("CNNLAB_TEST_KILL", None)
    if kill:
        env["CNNLAB_TEST_KILL"] = kill
    with open(log, "w") as out:
        return subprocess.run([sys.executable, str(FAULT_WORKER), "train", *map(str, args)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode


def _assert_run_folder_readable(run: Path) -> None:
    if (run / "config.json").exists():
        json.loads((run / "config.json").read_text())
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)  # raises CheckpointError on a partial or unreadable file


def _epoch_of(path: Path) -> int | None:
    return load_checkpoint(path)["epoch"] if path.exists() else None


def _differences(got, expected, where: str) -> list[str]:
    """Where ``got`` and ``expected`` differ, recursively: tensors must be bit-identical (torch.equal, same dtype
    and shape), everything else ``==``."""
    if isinstance(expected, torch.Tensor):
        same = isinstance(got, torch.Tensor) and got.dtype == expected.dtype and torch.equal(got, expected)
        return [] if same else [where]
    if isinstance(expected, dict):
        if not isinstance(got, dict) or got.keys() != expected.keys():
            return [f"{where} (keys)"]
        return [d for key in expected for d in _differences(got[key], expected[key], f"{where}[{key!r}]")]
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return [f"{where} (length)"]
        pairs = enumerate(zip(got, expected, strict=True))
        return [d for i, (g, e) in pairs for d in _differences(g, e, f"{where}[{i}]")]
    return [] if got == expected else [f"{where}: {got!r} != {expected!r}"]


def _assert_same_training_state(got: dict, expected: dict, where: str) -> None:
    """The whole training state of two checkpoints: model, optimizer, scheduler, RNG, epoch and metrics."""
    differences = [d for key in ("epoch", "best_val_acc", "model_state", "optimizer_state", "scheduler_state",
                                 "rng_state") for d in _differences(got[key], expected[key], key)]
    # Timings differ between runs; the learning curve must not.
    fields = ("epoch", "train_loss", "val_loss", "val_acc")
    differences += _differences([{k: r[k] for k in fields} for r in got["history"]],
                                [{k: r[k] for k in fields} for r in expected["history"]], "history")
    assert not differences, f"{where} differs from the uninterrupted run's in: " + "; ".join(differences)


class _Background:
    """A `cnnlab train` started now and waited for when its result is first needed."""

    def __init__(self, out: Path, *args):
        self.out, self.log = out, out.parent / "log.txt"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(_cnnlab("train", *args, "--out", out), env=_env(), stdout=log,
                                         stderr=subprocess.STDOUT)

    def result(self) -> Path:
        assert self.proc.wait(timeout=600) == 0, self.log.read_text()
        return self.out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """The run the killed-and-resumed runs must reproduce: the same settings, never interrupted (started at
    once, in the background, so that it overlaps with the first test's killed runs)."""
    run = _Background(tmp_path_factory.mktemp("uninterrupted") / "run", *CRASH_ARGS, "--data-dir", data_dir)
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def _uninterrupted_last_and_best(uninterrupted) -> tuple[dict, dict]:
    out = uninterrupted.result()
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["scheduler_state"]["last_epoch"] > 0  # onecycle: its state is worth comparing
    return last, best


def test_sigkill_four_times_then_resume_gives_the_uninterrupted_run(tmp_path, data_dir, uninterrupted):
    """SIGKILL `cnnlab train` exactly four times, at fixed points (the README's four kills: before the first
    checkpoint, inside the write of last.pt, mid-epoch after a checkpoint, while the metrics are written),
    `--resume` after each: every file on disk loads after every kill, and the finished run's checkpoint equals
    the uninterrupted run's in every tensor of model, optimizer, scheduler and RNG state."""
    run = tmp_path / "run"
    plan = [  # (where it dies, what last.pt holds afterwards)
        ("step:1:3", None),  # in epoch 1, before any checkpoint: --resume starts afresh from config.json
        ("last-pt-write:2", 1),  # inside the write of epoch 2's last.pt: the old last.pt stays, whole
        ("step:3:5", 2),  # mid-epoch 3, after epoch 2's checkpoint
        ("metrics:3", 3),  # after epoch 3's last.pt, while its curves are drawn
    ]
    logs = []
    for attempt, (kill, last_epoch) in enumerate(plan):
        args = [*CRASH_ARGS, "--data-dir", data_dir, "--out", run] if attempt == 0 else ["--resume", run]
        log = tmp_path / f"log-{attempt}.txt"
        code = _train_until_killed(kill, log, *args)
        logs.append(f"--- attempt {attempt}, kill at {kill}, exit {code}:\n{log.read_text()}")
        assert code == -signal.SIGKILL, "\n".join(logs)
        _assert_run_folder_readable(run)
        assert json.loads((run / "config.json").read_text())["epochs"] == 4
        assert _epoch_of(run / "last.pt") == last_epoch, "\n".join(logs)
        temps = [p for p in run.iterdir() if p.name.startswith(".last.pt.tmp-")]
        if kill.startswith("last-pt-write"):
            # The killed writer's temp file holds half a checkpoint; last.pt was never touched.
            assert len(temps) == 1 and 0 < temps[0].stat().st_size < (run / "last.pt").stat().st_size
            with pytest.raises(CheckpointError):
                load_checkpoint(temps[0])
        else:
            assert temps == []  # a dead writer's temp file is removed by the next save of last.pt
    log = tmp_path / "log-final.txt"
    assert _train_until_killed(None, log, "--resume", run) == 0, "\n".join(logs) + log.read_text()

    expected_last, expected_best = _uninterrupted_last_and_best(uninterrupted)
    final = load_checkpoint(run / "last.pt")
    assert final["epoch"] == 4
    _assert_same_training_state(final, expected_last, "last.pt")
    _assert_same_training_state(load_checkpoint(run / "best.pt"), expected_best, "best.pt")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_crash_between_best_pt_and_last_pt_redoes_the_epoch(tmp_path, data_dir, uninterrupted):
    """README: best.pt is written first, so a crash between the two writes leaves last.pt one epoch behind;
    resume redoes that epoch and best.pt still holds the best epoch."""
    expected = dict(zip(("last.pt", "best.pt"), _uninterrupted_last_and_best(uninterrupted), strict=True))
    best = expected["best.pt"]["epoch"]  # the epoch best.pt must end up holding (the last one it was written at)
    run = tmp_path / "run"
    log = tmp_path / "log-0.txt"
    code = _train_until_killed(f"between-checkpoints:{best}", log, *CRASH_ARGS, "--data-dir", data_dir,
                               "--out", run)
    assert code == -signal.SIGKILL, log.read_text()
    assert _epoch_of(run / "best.pt") == best  # written first ...
    assert _epoch_of(run / "last.pt") == (best - 1 or None)  # ... last.pt still the epoch before (or none)
    log = tmp_path / "log-1.txt"
    assert _train_until_killed(None, log, "--resume", run) == 0, log.read_text()
    assert f"resuming at epoch {best}/4" in log.read_text() or best == 1
    for name in ("best.pt", "last.pt"):
        _assert_same_training_state(load_checkpoint(run / name), expected[name], name)
    assert _epoch_of(run / "best.pt") == best


# ---- crafted, damaged and foreign checkpoints ----------------------------------------------------------

class _Evil:
    """Unpickling this would create ``target``: the classic code-execution payload of a pickle file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def evil(tmp_path):
    """(evil.pt, marker): a checkpoint that creates ``marker`` if anything unpickles it unsafely."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"version": CHECKPOINT_VERSION, "model_state": {}, "model_name": "lenet-relu",
                "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    return path, marker


def test_code_execution_checkpoint_refused_by_evaluate(evil, capsys):
    path, marker = evil
    code, err = _cli(capsys, "evaluate", path)
    assert code == 2 and "refusing to load" in err and not marker.exists()


def test_code_execution_checkpoint_refused_by_predict(evil, capsys):
    path, marker = evil
    code, err = _cli(capsys, "predict", path, "--test-index", "0")
    assert code == 2 and "refusing to load" in err and not marker.exists()


def test_code_execution_checkpoint_refused_by_train_resume(evil, trained_run, tmp_path, capsys):
    path, marker = evil
    run = tmp_path / "resumable"
    run.mkdir()
    (run / "config.json").write_bytes((trained_run / "config.json").read_bytes())
    path.rename(run / "last.pt")
    code, err = _cli(capsys, "train", "--resume", run)
    assert code == 2 and "refusing to load" in err and not marker.exists()


def test_code_execution_checkpoint_refused_in_a_real_process(evil):
    path, marker = evil
    proc = subprocess.run(_cnnlab("evaluate", path), capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refusing to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_bare_pickle_with_code_refused(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Evil(str(marker))))
    code, _ = _cli(capsys, "evaluate", tmp_path / "evil.pt")
    assert code == 2 and not marker.exists()


@pytest.mark.parametrize("damage, words", [
    ("truncated", "truncated"),
    ("empty", "empty"),
    ("garbage", "truncated or not"),
    ("zip-of-other-things", "truncated or not"),
], ids=["truncated", "empty", "garbage", "zip-of-other-things"])
def test_damaged_checkpoint_is_one_clear_line_from_the_cli(trained_run, tmp_path, capsys, damage, words):
    good = (trained_run / "best.pt").read_bytes()
    content = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": os.urandom(4096),
               "zip-of-other-things": _zip_with(b"hello")}[damage]
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for argv in (["evaluate", path], ["predict", path, "--test-index", "0"]):
        code, err = _cli(capsys, *argv)
        assert code == 2 and words in err and str(path) in err


def _zip_with(content: bytes) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", content)
    return buffer.getvalue()


def test_checkpoint_asking_for_a_huge_model_is_refused_before_building(trained_run, tmp_path, capsys,
                                                                       monkeypatch):
    # A dry forward at 100000x100000 would need 80 GB: the kwargs are checked before anything is built.
    state = torch.load(trained_run / "best.pt", weights_only=True)
    state["model_kwargs"]["image_size"] = 100_000
    torch.save(state, tmp_path / "huge.pt")
    builds = []

    def create_model(name, **kwargs):  # stands in for the registry: records the call, builds nothing
        builds.append((name, kwargs))
        raise RuntimeError("the test's create_model was called")

    monkeypatch.setattr(cnnlab.models, "create_model", create_model)
    code, err = _cli(capsys, "predict", tmp_path / "huge.pt", "--test-index", "0")
    assert code == 2 and "out of range" in err and "image_size" in err
    assert builds == []  # refused from the stored kwargs, before anything was built


def test_checkpoint_asking_for_a_huge_input_image_size_is_refused(trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "best.pt", weights_only=True)
    state["data_settings"]["image_size"] = 10**6
    torch.save(state, tmp_path / "huge.pt")
    code, err = _cli(capsys, "predict", tmp_path / "huge.pt", "--test-index", "0")
    assert code == 2 and "input images of size" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--resume", tmp_path)
    assert code == 2 and "not a cnnlab run folder" in err


def test_resume_with_a_corrupt_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model": "lenet-relu", "epo')
    code, err = _cli(capsys, "train", "--resume", tmp_path)
    assert code == 2 and "not a valid run config" in err


# ---- output folders that cannot take the files ---------------------------------------------------------

def test_output_folder_under_a_regular_file_fails_at_start(tmp_path, data_dir, capsys, monkeypatch):
    # Tests run as root, where permission bits do not stop writes; a path under a file fails for everyone.
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "run"
    epochs = []
    fit_epoch = Trainer._train_epoch

    def counting_train_epoch(self):
        epochs.append(self.epoch + 1)
        return fit_epoch(self)

    monkeypatch.setattr(Trainer, "_train_epoch", counting_train_epoch)
    code, err = _cli(capsys, "train", *TINY, "--epochs", "1", "--data-dir", data_dir, "--out", out)
    assert code == 2 and "cannot create run folder" in err and str(out) in err and "--out" in err
    assert "Not a directory" in err and epochs == []  # at start: no epoch was trained


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(tmp_path, data_dir, capsys, monkeypatch):
    real_save, last_writes = torch.save, []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if os.path.basename(getattr(f, "name", "")).startswith(".last.pt.tmp-"):
            last_writes.append(f.name)
            if len(last_writes) == 2:  # epoch 2's last.pt
                raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", *TINY, "--epochs", "3", "--data-dir", data_dir, "--out", out)
    monkeypatch.setattr(torch, "save", real_save)
    assert code == 2 and "No space left on device" in err and "last.pt" in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    # And the run goes on from there once there is space again.
    code, err = _cli(capsys, "train", "--resume", out)
    assert code == 0 and load_checkpoint(out / "last.pt")["epoch"] == 3


# ---- IDX files -----------------------------------------------------------------------------------------

def _idx(dims, payload=None, type_byte=0x08) -> bytes:
    header = b"\x00\x00" + bytes([type_byte, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    if payload is None:
        payload = bytes(int(np.prod(dims, dtype=np.int64)))
    return header + payload


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_header_claiming_2_to_the_40_bytes_fails_fast_without_allocating(tmp_path, compress, monkeypatch):
    content = _idx((2**20, 2**10, 2**10), payload=b"\x00" * 1000)
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    reads = count_idx_reads(monkeypatch)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="promises"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # "Fails fast" without a clock: no byte past the 16-byte header was decompressed or read from disk
    # (a raw file: the 2-byte gzip probe, then the header).
    assert (reads["gzip"] == 16) if compress else (reads["file"] == 2 + 16)


_FUZZ_EXAMPLES = int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "300"))
_ODD_SIZES = st.sampled_from([0, 1, 2, 3, 28, 255, 256, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 1])


def _sometimes(draw, percent: int) -> bool:
    # Hypothesis leans towards small draws (they shrink well), so the small ones mean "leave it valid".
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def _idx_files(draw):
    """(file bytes, decompressed bytes): IDX files with valid-looking headers, then mutated.

    Most draws keep the magic, the type byte and small sizes valid, so that the deeper checks (sizes against
    the file, gzip streams, trailing data) are reached, not only the first byte comparisons.
    """
    ndim = draw(st.integers(0, 255)) if _sometimes(draw, 15) else draw(st.integers(1, 4))
    listed = ndim if ndim <= 8 else draw(st.integers(0, 10))  # a header may list fewer sizes than it claims
    size = st.one_of(_ODD_SIZES, st.integers(0, 2**32 - 1)) if _sometimes(draw, 25) else st.integers(0, 12)
    dims = draw(st.lists(size, min_size=listed, max_size=listed))
    type_byte = draw(st.integers(0, 255)) if _sometimes(draw, 10) else 0x08
    start = draw(st.binary(min_size=2, max_size=2)) if _sometimes(draw, 10) else b"\x00\x00"
    claimed = int(np.prod(dims, dtype=object)) if dims else 0
    if claimed <= 4096 and _sometimes(draw, 70):
        payload = draw(st.binary(min_size=claimed, max_size=claimed))
    else:
        payload = draw(st.binary(max_size=512))
    data = _mutate(draw, start + bytes([type_byte, ndim]) + struct.pack(f">{len(dims)}I", *dims) + payload,
                   first=0)
    if not _sometimes(draw, 50):
        return data, data
    return _mutate(draw, gzip.compress(data, mtime=0), first=2), data


def _mutate(draw, data: bytes, first: int) -> bytes:
    """Half the time: cut the data short, append garbage, or flip one byte at ``first`` or later."""
    mutation = draw(st.sampled_from(["none", "none", "none", "truncate", "trailing", "flip"]))
    if mutation == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if mutation == "trailing":
        return data + draw(st.binary(min_size=1, max_size=64))
    if mutation == "flip" and len(data) > first:
        i = draw(st.integers(first, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data


def _reason(message: str) -> str:
    for words in ("not an IDX file", "data type", "dimensions", "ends inside its header", "too large",
                  "gzip file cannot hold", "decompressed file holds", "the file holds", "cannot be read"):
        if words in message:
            return words
    return message


@pytest.mark.fuzz
# deadline=None: time under tracemalloc says nothing about the reader; memory is bounded by tracemalloc below.
@settings(max_examples=_FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(_idx_files())
def test_idx_reader_fuzzed_raises_only_data_error(tmp_path, case):
    """Set CNNLAB_FUZZ_EXAMPLES=10000 for the full run; by default a few hundred keep CI fast."""
    content, plain = case
    path = tmp_path / "fuzz.idx"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        try:
            tensor = read_idx(path)
            event("read")
        except DataError as exc:
            tensor = None
            event(f"DataError: {_reason(str(exc))}")  # --hypothesis-show-statistics shows the mix
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Memory follows what the file really holds (its own size and what it decompresses to), never what a
    # header claims; gzip's own read buffer (128 KB) is the constant.
    assert peak <= 256 * 1024 + 4 * (len(content) + len(plain)), peak
    if tensor is not None:
        ndim = plain[3]
        dims = struct.unpack(f">{ndim}I", plain[4:4 + 4 * ndim])  # the sizes the (intact) header lists
        assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == dims
        assert tensor.flatten().numpy().tobytes() == plain[4 + 4 * ndim:]


# ---- images for predict --------------------------------------------------------------------------------

def _square(background, foreground, dtype=np.uint8, side=56) -> np.ndarray:
    """A ``foreground`` square in the middle of a ``background`` field."""
    a = np.full((side, side), background, dtype=dtype)
    a[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = foreground
    return a


def _assert_bright_square_on_black(x: torch.Tensor) -> None:
    assert x.dtype == torch.uint8 and x.shape == (28, 28)
    assert x[10:18, 10:18].float().mean() > 200, x
    assert x[:4].float().mean() < 30 and x[-4:].float().mean() < 30, x


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes that declare a ``width`` x ``height`` greyscale PNG (the pixels never follow)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def test_image_zero_bytes_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_image_that_is_a_text_file_refused(tmp_path):
    (tmp_path / "notes.png").write_text("shopping list: socks\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.png")


def test_image_that_is_a_folder_refused(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_image_truncated_png_refused(tmp_path):
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(tmp_path / "cut.png")


def test_image_truncated_jpeg_refused(tmp_path):
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 9_000), (2**31 - 1, 2**31 - 1)],
                         ids=["100k-squared-over-pillows-own-limit", "90-megapixels-between-the-limits",
                              "2G-squared"])
def test_image_decompression_bomb_refused_from_its_header(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(width, height))
    assert path.stat().st_size < 200
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="limit"):
            load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # nothing near width x height was allocated


def test_image_decompression_bomb_prints_no_pillow_warning(tmp_path):
    import warnings

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 9_000))  # Pillow warns from 89 Mpx; we refuse from MAX_PIXELS
    assert 10_000 * 9_000 > MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="limit"):
            load_image(path)


def test_image_extreme_aspect_ratio_is_not_padded_into_a_bomb(tmp_path, monkeypatch):
    from PIL import Image

    # 10,000,000 x 1 pixels is under MAX_PIXELS, but padding it to a square first would mean 10**14 bytes.
    width = 10_000_000
    ihdr = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\xff" * width  # filter byte, then a white line
    path = tmp_path / "strip.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(row, 9))
                     + _png_chunk(b"IEND", b""))
    made = []
    new_image = Image.new

    def recording_new(mode, size, *args, **kwargs):
        made.append(size[0] * size[1])
        if made[-1] > width:  # refuse to allocate a padded square: the assertion below reports it
            raise MemoryError(f"the test refused a {size[0]}x{size[1]} image")
        return new_image(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", recording_new)
    x = load_image(path)
    assert x.shape == (28, 28)
    assert made and max(made) <= width  # no image larger than the strip itself was ever made
    assert int((x > 0).sum()) <= 28 * 2  # one thin line across, the rest background


def test_image_16bit_greyscale_white_square_comes_out_bright_on_dark(tmp_path):
    from PIL import Image

    Image.fromarray(_square(0, 65535, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    _assert_bright_square_on_black(load_image(tmp_path / "g16.png"))


def test_image_16bit_greyscale_using_a_narrow_range_is_stretched(tmp_path):
    from PIL import Image

    Image.fromarray(_square(1000, 1200, np.uint16)).save(tmp_path / "narrow.png")  # a dim 16-bit scan
    _assert_bright_square_on_black(load_image(tmp_path / "narrow.png"))


def test_image_32bit_float_greyscale(tmp_path):
    from PIL import Image

    Image.fromarray(_square(0.0, 1.0, np.float32), mode="F").save(tmp_path / "float.tiff")
    _assert_bright_square_on_black(load_image(tmp_path / "float.tiff"))


def test_image_palette(tmp_path):
    from PIL import Image

    Image.fromarray(_square(0, 255)).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    _assert_bright_square_on_black(load_image(tmp_path / "palette.png"))


def test_image_palette_with_transparency(tmp_path):
    from PIL import Image

    a = _square(0, 1)  # palette index 0 transparent, index 1 white
    img = Image.fromarray(a, mode="P")
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.save(tmp_path / "palette-alpha.png", transparency=0)
    _assert_bright_square_on_black(load_image(tmp_path / "palette-alpha.png"))


def test_image_cmyk_jpeg_dark_square_on_white_paper(tmp_path):
    from PIL import Image

    Image.fromarray(_square(255, 0)).convert("RGB").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    _assert_bright_square_on_black(load_image(tmp_path / "cmyk.jpg"))


def test_image_rgba_white_garment_on_transparency_stays_visible(tmp_path):
    from PIL import Image

    a = np.zeros((56, 56, 4), np.uint8)
    a[14:42, 14:42] = 255  # opaque white square; the rest transparent black
    Image.fromarray(a, mode="RGBA").save(tmp_path / "white-cutout.png")
    _assert_bright_square_on_black(load_image(tmp_path / "white-cutout.png"))


def test_image_rgba_dark_garment_on_transparency(tmp_path):
    from PIL import Image

    a = np.zeros((56, 56, 4), np.uint8)
    a[14:42, 14:42, 3] = 255  # opaque black square on transparency
    Image.fromarray(a, mode="RGBA").save(tmp_path / "dark-cutout.png")
    _assert_bright_square_on_black(load_image(tmp_path / "dark-cutout.png"))


def test_image_la_greyscale_with_alpha(tmp_path):
    from PIL import Image

    a = np.zeros((56, 56, 2), np.uint8)
    a[14:42, 14:42] = 255
    Image.fromarray(a, mode="LA").save(tmp_path / "la.png")
    _assert_bright_square_on_black(load_image(tmp_path / "la.png"))


def test_image_fully_transparent_is_blank_not_an_error(tmp_path):
    from PIL import Image

    Image.new("RGBA", (30, 30), (255, 255, 255, 0)).save(tmp_path / "clear.png")
    assert int(load_image(tmp_path / "clear.png").max()) == 0


def test_image_1bit(tmp_path):
    from PIL import Image

    Image.fromarray(_square(0, 255)).convert("1").save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    _assert_bright_square_on_black(load_image(tmp_path / "bits.png"))


def test_image_one_pixel(tmp_path):
    from PIL import Image

    Image.new("L", (1, 1), 200).save(tmp_path / "dot.png")
    x = load_image(tmp_path / "dot.png")
    assert x.shape == (28, 28) and x.dtype == torch.uint8


@pytest.mark.parametrize("bad", ["empty", "text", "truncated", "bomb"])
def test_bad_image_through_predict_is_one_line_and_exit_2(trained_run, tmp_path, capsys, bad):
    from PIL import Image

    path = tmp_path / f"{bad}.png"
    if bad == "empty":
        path.write_bytes(b"")
    elif bad == "text":
        path.write_text("hello")
    elif bad == "truncated":
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 100), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(_png_header_only(100_000, 100_000))
    code, err = _cli(capsys, "predict", trained_run, path)
    assert code == 2 and str(path) in err
