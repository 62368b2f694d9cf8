"""cnnlab.atomic: a killed writer leaves the old file, and every file cnnlab writes goes through it, fsynced."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cnnlab import atomic
from cnnlab.atomic import atomic_write, temp_path
from cnnlab.cli.main import main
from cnnlab.errors import WriteError


def test_write_replace_and_no_litter(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_write(target, "w") as f:
        f.write("one")
        assert f.name == str(temp_path(target)) and not target.exists()  # not visible before the end
    with atomic_write(target, "w") as f:
        f.write("two")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_an_error_inside_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError), atomic_write(target) as f:
        f.write(b"new, half")
        1 / 0  # noqa: B018
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_the_callers_own_oserror_surfaces_as_itself_not_as_a_write_error(tmp_path):
    # Reading a missing input inside the block is the caller's mistake (or bug), not a full or read-only disk.
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError) as caught, atomic_write(target) as f:
        f.write((tmp_path / "missing-input").read_bytes())
    assert not isinstance(caught.value, WriteError)
    with pytest.raises(PermissionError) as caught, atomic_write(target) as f:  # EACCES on another file
        raise PermissionError(13, "Permission denied", str(tmp_path / "elsewhere"))
    assert not isinstance(caught.value, WriteError)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_the_writes_own_oserror_becomes_a_write_error(tmp_path, code):
    target = tmp_path / "a.bin"
    with pytest.raises(WriteError, match="cannot write .*a.bin"), atomic_write(target):
        raise OSError(code, os.strerror(code))  # what f.write or torch.save raise on a full disk
    assert os.listdir(tmp_path) == []


def test_a_sigkilled_writer_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("epoch\n1\n")
    child = textwrap.dedent(f"""
        import os, signal
        from cnnlab.atomic import atomic_write
        with atomic_write({str(target)!r}, "w") as f:
            f.write("epoch\\n1\\n2")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "epoch\n1\n"  # never a partial file
    leftovers = [name for name in os.listdir(tmp_path) if name != "metrics.csv"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".metrics.csv.tmp-")  # what the kill left
    with atomic_write(target, "w") as f:
        f.write("epoch\n1\n2\n")
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]  # the dead writer's temp file is gone


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    target = tmp_path / "x"
    live = tmp_path / f".x.tmp-{os.getppid()}"  # our parent process is alive
    live.write_text("someone else's write in progress")
    with atomic_write(target, "w") as f:
        f.write("mine")
    assert live.exists()


def test_only_write_modes():
    with pytest.raises(ValueError, match="'w' or 'wb'"), atomic_write("x", "a"):
        pass


@pytest.fixture
def spy(monkeypatch):
    """Record every rename into place and whether the renamed file and its folder were fsynced first."""
    synced, renamed, real_fsync, real_replace = set(), [], os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        renamed.append((str(src), str(dst), str(src) in synced))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return synced, renamed


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsynced files")
def test_every_file_a_run_writes_is_fsynced_renamed_and_its_folder_synced(tmp_path, data_dir, spy, capsys):
    synced, renamed = spy
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "256", "--num-val", "128",
                 "--no-progress", "--data-dir", str(data_dir), "--out", str(run), "--report"]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert main(["data", "show", "--n", "4", "--out", str(tmp_path / "grid.png"), "--data-dir", str(data_dir)]) == 0
    assert main(["viz", "kernels", str(run)]) == 0
    written = {os.path.basename(dst): was_synced for _, dst, was_synced in renamed}
    expected = {"config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "report.html",
                "confusion.png", "grid.png", "kernels.png"}
    assert expected <= set(written), expected - set(written)
    assert all(written.values()), [name for name, ok in written.items() if not ok]  # fsynced before the rename
    assert str(run) in synced and str(tmp_path) in synced  # the folders too, so the new names survive
    capsys.readouterr()
