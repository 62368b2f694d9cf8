"""One writer per run folder: an OS lock (``fcntl.flock``) on ``<run>/.lock``, held while a run lives.

Two ``cnnlab train`` processes writing one folder mix their files (config.json of one, metrics.csv of the
other) and both exit 0. So the writer of a run folder holds an exclusive, non-blocking ``flock`` on its lock
file from before its first write to its end, and a second writer (``--out`` or ``--resume`` of a live folder)
is refused at once, with the holder's PID. The OS drops a flock when its process dies, however it dies
(SIGKILL included), so a killed run's folder is taken over by the next writer with nothing to clean up; the PID
in the file is only for the message. Readers (``evaluate``, ``report``, ``viz``, ``export``) never lock.

Where ``fcntl`` is missing (Windows) there is no lock. On NFS, ``flock`` is emulated by byte-range locks and
holds across machines on Linux >= 2.6.12.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cnnlab.errors import RunFolderError

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per folder is then the user's to keep
    fcntl = None

__all__ = ["LOCK_NAME", "RunFolderBusy", "acquire", "release", "holder"]

LOCK_NAME = ".lock"

# This process's locks, by the folder's real path, with a count: the run's code and its trainer's RunFolder
# callback may both ask for the same folder, and a second flock of it in one process would refuse itself.
_held: dict[str, list] = {}  # real path -> [fd, count]


class RunFolderBusy(RunFolderError):
    """Another live process writes this run folder; nothing was written (exit code 2)."""


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def acquire(folder: str | os.PathLike) -> None:
    """Hold ``folder``'s lock for this process (the folder must exist); again in this process: counted.

    Raises:
        RunFolderBusy: another live process holds it; the message names that process's PID.
        RunFolderError: the lock file cannot be created (the folder is not writable).
    """
    folder = Path(folder)
    key = _key(folder)
    if fcntl is None:
        return
    if key in _held:
        _held[key][1] += 1
        return
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFolderError(f"cannot write into run folder {folder}: {exc.strerror or exc}; choose another "
                                 "--out folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder(folder)
            who = f"process {pid}" if pid else "another process"
            raise RunFolderBusy(f"run folder {folder} is in use by {who}, a run that is writing it; wait for it "
                                "to end, or choose another --out folder") from None
        # The holder before us may have removed the file between our open and our lock (see release): then
        # we hold a lock on a name nobody else will open. Lock the file that is there now instead.
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = [fd, 1]


def release(folder: str | os.PathLike) -> None:
    """Give up this process's hold on ``folder`` (the last release removes the lock file); no-op if not held."""
    key = _key(Path(folder))
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    # Removed while still locked, so that no one locks the old file after we let go (acquire checks it).
    with contextlib.suppress(OSError):
        os.unlink(Path(folder) / LOCK_NAME)
    os.close(entry[0])


def holder(folder: str | os.PathLike) -> int | None:
    """The PID written in ``folder``'s lock file (None if there is none); held only if that process lives."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
