"""Downloading Fashion-MNIST from the official mirror (or another), every archive verified before it is used.

Each archive is streamed into a temporary file next to its final name (:func:`cnnlab.atomic.atomic_write`),
its MD5 hashed while streaming; it takes its final name only once the archive (unless ``check_archive`` is
off, for recompressed copies) and the data inside match the official checksums.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.request
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.data.files import (
    ARCHIVE_MD5,
    FILE_MD5,
    FILE_NAMES,
    GZIP_MAGIC,
    MIRROR_URL,
    READ_CHUNK,
    cache_dir,
    data_file,
    file_md5,
    is_verified,
    remember_verified,
)
from cnnlab.errors import DataError

__all__ = ["download"]

_MAX_DOWNLOAD = 64 << 20  # the largest archive is 26 MB; a mirror sending more is broken


def _is_valid(path: Path, name: str) -> bool:
    if is_verified(path, FILE_MD5[name]):
        return True
    try:
        valid = file_md5(path) == FILE_MD5[name]
    except DataError:
        return False
    if valid:
        remember_verified(path, FILE_MD5[name])
    return valid


def download(dest_dir: str | os.PathLike | None = None, base_url: str = MIRROR_URL, *,
             check_archive: bool = True, timeout: float = 30.0) -> Path:
    """Download the four Fashion-MNIST archives, each verified before it takes its final name.

    Files already present and valid are skipped. Each archive is written to a temporary file in ``dest_dir``,
    checked, then renamed (:func:`cnnlab.atomic.atomic_write`), so a failed download never leaves a file
    behind, and the temporary file of one killed outright is removed by the next download.

    Args:
        dest_dir: where to put the files; default ``<cache_dir()>/fashion-mnist``, a place
            :func:`find_data_dir` searches.
        base_url: the mirror: the URL of the directory holding ``train-images-idx3-ubyte.gz`` and the others.
        check_archive: also require the official MD5 of each ``.gz`` (turn off for a mirror that recompressed
            them; the MD5 of the decompressed data is always checked).
        timeout: seconds to wait for the server before giving up.

    Returns:
        The directory holding the four files.

    Raises:
        DataError: the server cannot be reached, or it sends a file that fails its checks.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir() / "fashion-mnist"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download directory {dest} ({e}); choose a writable place") \
            from None
    for name in FILE_NAMES:
        present = data_file(dest, name)
        if present is not None and _is_valid(present, name):
            continue
        _fetch(f"{base_url.rstrip('/')}/{name}.gz", dest / f"{name}.gz", name, check_archive, timeout)
        if present is not None and present.suffix != ".gz":
            # data_file prefers uncompressed files: this bad one would shadow the fresh archive.
            with contextlib.suppress(FileNotFoundError):
                present.unlink()
    return dest


def _fetch(url: str, final: Path, name: str, check_archive: bool, timeout: float) -> None:
    """Download ``url`` into a temporary file next to ``final``, check both MD5s, then rename it ``final``."""
    try:
        with atomic_write(final) as out:
            archive_md5 = _stream(url, out, timeout)
            out.flush()
            _check_download(url, Path(out.name), name, archive_md5 if check_archive else None)
    except OSError as e:
        raise DataError(f"cannot write to {final.parent} ({e}); choose a writable place") from None


def _stream(url: str, out, timeout: float) -> str:
    """Copy ``url`` into ``out``; returns the MD5 of what was received (hashed on the way, not read back)."""
    received = 0
    archive_md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(READ_CHUNK):
                received += len(chunk)
                if received > _MAX_DOWNLOAD:
                    raise DataError(f"{url} sends more than {_MAX_DOWNLOAD:,} bytes, far more than the "
                                    "archive's size; the mirror is broken, try another base_url")
                archive_md5.update(chunk)
                out.write(chunk)
    except DataError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as e:
        # URLError and timeouts are OSErrors; ValueError is a malformed URL.
        raise DataError(f"could not download {url} ({e}); check the network connection and base_url, "
                        "or install the data with `sudo apt-get install dataset-fashion-mnist`") from None
    return archive_md5.hexdigest()


def _check_download(url: str, tmp: Path, name: str, archive_md5: str | None) -> None:
    """Both checksums of a downloaded archive: of the archive itself (None: not checked) and of its data."""
    with open(tmp, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise DataError(f"{url} is not a gzip archive; check that base_url points at the data directory")
    if archive_md5 is not None and archive_md5 != ARCHIVE_MD5[name]:
        raise DataError(f"{url} has MD5 {archive_md5}, expected {ARCHIVE_MD5[name]}; the "
                        "mirror serves a different archive, so try again, or pass check_archive=False "
                        "for a mirror that recompressed the files")
    try:
        got = file_md5(tmp)
    except DataError:
        raise DataError(f"{url} is a corrupt gzip archive (it stops early or fails its CRC); try "
                        "again or another base_url") from None
    if got != FILE_MD5[name]:
        raise DataError(f"{url} decompresses to data with MD5 {got}, expected {FILE_MD5[name]}; the "
                        "mirror serves a corrupt file, so try again or another base_url")
