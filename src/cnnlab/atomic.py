"""One way to write a file that a crash can never leave half-written: :func:`atomic_write`.

Every file cnnlab writes (checkpoints, ``config.json``, metrics, figures, the HTML report, downloads, the
verification cache) goes through it: the bytes go to a temporary file next to the target, which is flushed,
fsynced and renamed over the target (``os.replace`` is atomic on POSIX and Windows), and then the folder is
fsynced so that the new name itself survives a power cut. A reader sees the old file or the new one, never a
mix. A writer killed mid-write leaves only its temporary file, ``.<name>.tmp-<pid>``, which the next write of
the same target removes once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cnnlab.errors import WriteError

__all__ = ["atomic_write", "fsync_dir", "temp_path"]


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary file this process writes before it becomes ``path``: ``.<name>.tmp-<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f"{_temp_prefix(path)}{os.getpid()}")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (best effort: some systems cannot open a folder for sync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file that becomes ``path`` only when the ``with`` block ends without an error.

    Use it like ``open``: ``with atomic_write(path, "w") as f: f.write(text)``. Inside the block, ``f.name`` is
    the temporary file's path (to check what was written before it takes the final name). If the block
    raises, or the process is interrupted, ``path`` keeps its old content and the temporary file is removed.

    Args:
        path: the file to create or replace; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text), as for ``open``.
        encoding, newline: as for ``open`` in text mode (UTF-8 by default).

    Raises:
        WriteError: (an ``OSError`` and a :class:`~cnnlab.errors.UserError`) the folder is missing, unwritable
            or full; ``path`` is intact and no temporary file remains. Inside the block only the write's
            own errors (a write errno, on no other file) become one: the caller's other OSErrors (a missing
            input file, a broken pipe) surface as themselves, after the same clean-up.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing only ('w' or 'wb'), not {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    callers = False  # an OSError of the caller's own code inside the block surfaces as itself
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            try:
                yield f
            except OSError as exc:
                callers = not _is_write_error(exc, tmp)
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # an error, Ctrl-C or a failed rename: leave the old file and no litter
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError) and not callers:
            # The environment's doing (no space, read-only, no folder), not a bug: one clear line in the CLI.
            raise WriteError(path, exc) from exc
        raise
    fsync_dir(path.parent)
    _remove_stale_temps(path)


# What writing the temporary file itself can meet: a full disk or quota, a read-only or unwritable folder, a
# file over the size limit, a failing device. Anything else raised inside the block is the caller's.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                           errno.EIO})


def _is_write_error(exc: OSError, tmp: Path) -> bool:
    """An OSError raised inside the block is the write's own when it is a write errno on no other file."""
    return exc.errno in _WRITE_ERRNOS and exc.filename in (None, str(tmp), tmp)


def _remove_stale_temps(path: Path) -> None:
    # A writer killed mid-write (SIGKILL, power cut) leaves ".name.tmp-<pid>"; the final name was never touched,
    # so the file is garbage. Only files of processes that no longer exist are removed: a live one may be
    # another process writing the same target right now.
    prefix = _temp_prefix(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            pid = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True
