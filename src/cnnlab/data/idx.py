"""Reading IDX files, the format of MNIST and Fashion-MNIST, checked against hostile input.

IDX is the format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/, "file formats"): a 4-byte
magic ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the values in C order. Only unsigned
bytes (type ``0x08``) are read, which is all Fashion-MNIST uses.

The reader is written for hostile input: anything wrong raises :class:`DataError`, and no buffer is ever
larger than what the file on disk can actually produce.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import torch

from cnnlab.data.files import GET_DATA_HINT, GZIP_MAGIC, READ_CHUNK
from cnnlab.errors import DataError

__all__ = ["read_idx"]

_UBYTE = 0x08
_MAX_NDIM = 8  # Fashion-MNIST needs 1 and 3; a cap keeps a fuzzed header from asking torch for 255 dims.
# Deflate cannot expand data by more than 1032:1 (a 258-byte match in 2 bits), so a header promising more than
# 1032 bytes per compressed byte is a lie we can reject before decompressing anything.
_MAX_GZIP_RATIO = 1032
# Even an empty array (one size 0) must have strides torch can compute, so the other sizes are bounded too.
_MAX_ELEMENTS = 1 << 48


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file of unsigned bytes, gzip-compressed or raw (detected from the content, not the name).

    Args:
        path: the file to read.

    Returns:
        A ``uint8`` tensor shaped as the header says, e.g. ``(60000, 28, 28)`` for training images.

    Raises:
        DataError: the file is missing, truncated, not IDX, not unsigned bytes, or its size disagrees with its
            header. Nothing else is raised, whatever the bytes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            is_gzip = f.read(2) == GZIP_MAGIC
            f.seek(0)
            if is_gzip:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    dims, payload = _read_gzip(gz, path, file_size)
            else:
                dims, payload = _read_raw(f, path, file_size)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {GET_DATA_HINT}") from None
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError; EOFError means the gzip stream stops early.
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); it is truncated or corrupt, "
                        "replace it") from None
    if not payload:  # torch.frombuffer refuses an empty buffer
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(payload, dtype=torch.uint8).reshape(dims)


def _read_gzip(gz, path: Path, file_size: int) -> tuple[tuple[int, ...], bytearray]:
    dims, _ = _read_header(gz, path)
    expected = _product(dims)
    if expected > _MAX_GZIP_RATIO * file_size:
        raise DataError(f"{path}: the header promises {expected:,} bytes but a {file_size:,}-byte gzip file "
                        f"cannot hold more than {_MAX_GZIP_RATIO * file_size:,}; the file is corrupt, "
                        "replace it")
    # Read in chunks up to one byte past the promise: memory follows what the stream really yields, and the
    # extra byte tells a file with trailing data from an exact one.
    payload = bytearray()
    while len(payload) <= expected:
        chunk = gz.read(min(READ_CHUNK, expected + 1 - len(payload)))
        if not chunk:
            break
        payload += chunk
    if len(payload) != expected:
        held = "more" if len(payload) > expected else f"{len(payload):,}"
        raise DataError(f"{path}: the header promises {expected:,} bytes of data but the decompressed file "
                        f"holds {held}; the file is truncated or corrupt, replace it")
    return dims, payload


def _read_raw(f, path: Path, file_size: int) -> tuple[tuple[int, ...], bytearray]:
    dims, header_size = _read_header(f, path)
    expected = _product(dims)
    # Compare with the size on disk before allocating, so a lying header costs nothing.
    if header_size + expected != file_size:
        raise DataError(f"{path}: the header promises {expected:,} bytes of data but the file holds "
                        f"{file_size - header_size:,}; the file is truncated or corrupt, replace it")
    payload = bytearray(expected)
    if f.readinto(payload) != expected:
        raise DataError(f"{path} shrank while it was being read; replace it and try again")
    return dims, payload


def _read_header(f, path: Path) -> tuple[tuple[int, ...], int]:
    """Parse the magic and sizes from the start of ``f``; returns (dims, header size in bytes)."""
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file (it starts with {magic.hex() or 'nothing'}, not 0000); "
                        "replace it with the original file")
    if magic[2] != _UBYTE:
        raise DataError(f"{path} holds IDX data type 0x{magic[2]:02x}, not unsigned bytes (0x08); "
                        "only Fashion-MNIST's byte files can be read")
    ndim = magic[3]
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"{path} declares {ndim} dimensions; an IDX file here has 1 to {_MAX_NDIM}, "
                        "so the file is corrupt, replace it")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path} ends inside its header; the file is truncated, replace it")
    dims = struct.unpack(f">{ndim}I", raw)
    if _product(max(d, 1) for d in dims) > _MAX_ELEMENTS:
        raise DataError(f"{path} declares sizes {dims}, too large for any real file; the file is corrupt, "
                        "replace it")
    return dims, 4 + 4 * ndim


def _product(dims) -> int:
    n = 1
    for d in dims:
        n *= d  # Python ints: a fuzzed 2**32-sized header cannot overflow
    return n
