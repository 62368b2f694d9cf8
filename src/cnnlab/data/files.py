"""Fashion-MNIST's four files: their names and checksums, where they are looked for, and which copies were verified.

The one home of these facts: the IDX reader (:mod:`cnnlab.data.idx`), the download
(:mod:`cnnlab.data.download`) and the data module (:mod:`cnnlab.data.fashion_mnist`) all import them from here.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.errors import DataError

__all__ = [
    "ARCHIVE_MD5",
    "FILE_MD5",
    "FILE_NAMES",
    "GET_DATA_HINT",
    "GZIP_MAGIC",
    "MIRROR_URL",
    "READ_CHUNK",
    "cache_dir",
    "data_file",
    "default_data_dirs",
    "download_hint",
    "file_md5",
    "find_data_dir",
    "is_verified",
    "named_data_dir",
    "remember_verified",
]

FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 of the decompressed files: the data itself, whoever compressed it (Debian recompressed the archives).
FILE_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
# MD5 of the official .gz archives, as Zalando publishes them.
ARCHIVE_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
GET_DATA_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist` or download it with `cnnlab data download`"
)

GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20  # streamed reads and hashes: memory stays small whatever the file's size


def cache_dir() -> Path:
    """cnnlab's cache directory: ``$CNNLAB_CACHE`` if set, else ``~/.cache/cnnlab``."""
    env = os.environ.get("CNNLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab"


def default_data_dirs() -> tuple[Path, ...]:
    """The places searched when no folder is named, in order, read from the environment at call time.

    Returns:
        ``$CNNLAB_DATA`` and its torchvision layout ``FashionMNIST/raw`` (when set: then they are the only
        places, see :func:`find_data_dir`), ``<cache_dir()>/fashion-mnist``, and the Debian package's
        ``/usr/share/datasets/fashion-mnist``.
    """
    env = os.environ.get("CNNLAB_DATA")
    return (*(_candidates(Path(env)) if env else ()), *_default_places())


def _default_places() -> tuple[Path, ...]:
    return cache_dir() / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")


def data_file(data_dir: Path, name: str) -> Path | None:
    """The file for ``name`` in ``data_dir``, the uncompressed copy first (faster to read); None if absent."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _candidates(folder: Path) -> tuple[Path, Path]:
    """A folder and its torchvision layout ``folder/FashionMNIST/raw``."""
    folder = Path(folder).expanduser()
    return folder, folder / "FashionMNIST" / "raw"


def _missing(place: Path) -> list[str]:
    return [name for name in FILE_NAMES if data_file(place, name) is None]


def download_hint(data_dir: str | os.PathLike) -> str:
    """How to put a fresh, verified copy of the four files into ``data_dir``."""
    return f"`cnnlab data download --data-dir {data_dir}` puts a verified copy there"


def named_data_dir(root: str | os.PathLike | None = None) -> Path | None:
    """The folder the user named: ``root`` if given, else ``$CNNLAB_DATA`` if set, else None."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CNNLAB_DATA")
    return Path(env).expanduser() if env else None


def find_data_dir(root: str | os.PathLike | None = None) -> Path:
    """Find the directory holding all four Fashion-MNIST files (each either ``.gz`` or uncompressed).

    A folder the user names (``root``, else ``$CNNLAB_DATA``) is obeyed: the files are taken from it or its
    torchvision layout ``FashionMNIST/raw``, and never silently from anywhere else. Only when no folder is
    named are the default places searched in order (:func:`default_data_dirs`).

    Args:
        root: the folder that must hold the files; None names none (then ``$CNNLAB_DATA`` may).

    Returns:
        The directory that holds all four files.

    Raises:
        DataError: the named folder lacks some files (they are listed, with the remedy), or lacks all of them
            (the place where they were found instead is named, with the advice to drop the option); or, with
            no folder named, no default place holds them (every place searched is listed).
    """
    named = named_data_dir(root)
    if named is not None:
        return _named_data_dir(named, "the folder given" if root is not None else "$CNNLAB_DATA")
    notes = []
    for place in default_data_dirs():
        missing = _missing(place)
        if not missing:
            return place
        notes.append(f"{place} (lacks {', '.join(missing)})" if len(missing) < len(FILE_NAMES) else str(place))
    raise DataError(f"Fashion-MNIST was not found in any of: {'; '.join(notes)}; {GET_DATA_HINT}")


def _named_data_dir(named: Path, how: str) -> Path:
    for place in _candidates(named):
        missing = _missing(place)
        if not missing:
            return place
        if len(missing) < len(FILE_NAMES):
            raise DataError(f"{place} ({how}) holds only part of Fashion-MNIST: it lacks {', '.join(missing)}; "
                            f"{download_hint(named)}, or copy the missing files there")
    # None of the files: say where they are instead, so that a mistyped folder is not a dead end.
    elsewhere = next((place for place in default_data_dirs() if not _missing(place)), None)
    option = "the --data-dir option (or root=)" if how == "the folder given" else "the CNNLAB_DATA variable"
    found = (f"they were found in {elsewhere}: drop {option} to use that copy, or "
             if elsewhere is not None else "")
    raise DataError(f"{named} ({how}) holds none of the Fashion-MNIST files; {found}{download_hint(named)}")


# -- verification cache: hashing 47 MB costs time on every start, so a success is remembered per file version.

def _verified_file() -> Path:
    return cache_dir() / "verified.json"


def _read_verified() -> dict:
    try:
        entries = json.loads(_verified_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: hashing again is the safe answer
    return entries if isinstance(entries, dict) else {}


def _stamp(path: Path, md5: str) -> tuple[str, dict]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}


def is_verified(path: Path, md5: str) -> bool:
    """Whether this very version of ``path`` (same absolute path, size and mtime) was seen to have ``md5``."""
    try:
        key, stamp = _stamp(path, md5)
    except OSError:
        return False
    return _read_verified().get(key) == stamp


def remember_verified(path: Path, md5: str) -> None:
    """Record in ``<cache_dir()>/verified.json`` that ``path``, as it is now, has ``md5``."""
    # Only a cache: if it cannot be written (read-only home), the next process simply hashes again.
    with contextlib.suppress(OSError):
        key, stamp = _stamp(path, md5)
        entries = _read_verified()
        entries[key] = stamp
        target = _verified_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, "w") as f:  # parallel ranks never read half a file
            json.dump(entries, f, indent=1, sort_keys=True)


def file_md5(path: Path) -> str:
    """MD5 of a file's content, decompressed first if it is gzip; streamed, so memory stays small.

    Raises:
        DataError: the file cannot be read or is a corrupt gzip file.
    """
    h = hashlib.md5()
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else contextlib.nullcontext(raw) as f:
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); it is truncated or corrupt, "
                        "replace it") from None
    return h.hexdigest()
