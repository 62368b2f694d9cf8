"""Fuzzed image folders: mutated PNG, JPEG, GIF, WebP, BMP and TIFF files through the folder reader.

Each case starts from a small valid image of one format and mode, then flips bits, cuts it short, edits its
chunks (PNG) or byte ranges, or makes its header declare a huge size (wherever the true width and height are
written). The folder reader (:func:`cnnlab.data.imagedecode.decode_folder`) must then decode the file or list
it as bad with an :class:`~cnnlab.errors.ImageError` reason; nothing else may come out, no case may take a
second, and memory stays bounded. 200 cases by default; ``CNNLAB_FUZZ_EXAMPLES=10000 pytest -m fuzz
tests/data/test_image_fuzz.py`` for the full run.
"""

import functools
import io
import os
import struct
import tracemalloc
import warnings
import zlib
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data.imagedecode import decode_folder
from cnnlab.data.images import MAX_PIXELS, probe_image
from cnnlab.errors import ImageError

BYTES_PER_PIXEL = 24  # the decode path's peak per pixel: the file's mode, grey, float32 for the resize

_FUZZ_EXAMPLES = int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "200"))
# (suffix, Pillow format, mode): every format the reader accepts, in the modes that reach different code.
_KINDS = [(".png", "PNG", "L"), (".png", "PNG", "RGBA"), (".png", "PNG", "P"), (".png", "PNG", "I;16"),
          (".jpg", "JPEG", "RGB"), (".jpg", "JPEG", "L"), (".gif", "GIF", "P"), (".webp", "WEBP", "RGB"),
          (".bmp", "BMP", "RGB"), (".tif", "TIFF", "RGB"), (".tif", "TIFF", "I;16")]


@functools.cache
def _seed(index: int) -> tuple[str, bytes, int, int]:
    """(suffix, file bytes, width, height) of a small valid image of ``_KINDS[index]``."""
    suffix, fmt, mode = _KINDS[index]
    width, height = 13 + index, 9 + index  # odd sizes, different per kind: easy to find in the header
    rng = np.random.default_rng(index)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return suffix, buffer.getvalue(), width, height


def _png_chunks(data: bytes) -> list[bytes] | None:
    chunks, i = [], 8
    while i + 12 <= len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        chunks.append(data[i:i + 12 + length])
        i += 12 + length
    return chunks if i == len(data) else None


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@st.composite
def _mutants(draw):
    """(suffix, bytes, what was done): one seed image, then one to three mutations."""
    suffix, data, width, height = _seed(draw(st.integers(0, len(_KINDS) - 1)))
    done = []
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["flip", "truncate", "splice", "huge", "chunk"]))
        if what == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(data) - 1))
                data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
        elif what == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif what == "splice":  # a byte range removed, repeated or replaced by garbage
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, min(len(data), i + 64)))
            data = data[:i] + draw(st.sampled_from([b"", data[i:j] * 2, draw(st.binary(max_size=32))])) + data[j:]
        elif what == "huge":  # wherever the true size is written (any width, byte order), a huge one instead
            big = draw(st.sampled_from([2**15 - 1, 2**16 - 1, 50_000, 2**31 - 1, 2**32 - 1]))
            for fmt, limit in ((">I", 2**32), ("<I", 2**32), (">H", 2**16), ("<H", 2**16)):
                for true in (width, height):
                    data = data.replace(struct.pack(fmt, true), struct.pack(fmt, big % limit), 1)
            if suffix == ".png" and (chunks := _png_chunks(data)):  # a valid CRC, so the size check is reached
                data = data[:8] + _chunk(b"IHDR", chunks[0][8:-4]) + b"".join(chunks[1:])
        elif what == "chunk" and suffix == ".png" and (chunks := _png_chunks(data)):
            k = draw(st.integers(0, len(chunks) - 1))
            edit = draw(st.sampled_from(["drop", "repeat", "swap", "length"]))
            if edit == "drop":
                chunks.pop(k)
            elif edit == "repeat":
                chunks.insert(k, chunks[k])
            elif edit == "swap" and len(chunks) > 1:
                j = draw(st.integers(0, len(chunks) - 1))
                chunks[k], chunks[j] = chunks[j], chunks[k]
            else:
                chunks[k] = struct.pack(">I", draw(st.integers(0, 2**32 - 1))) + chunks[k][4:]
            data = data[:8] + b"".join(chunks)
        done.append(what)
    return suffix, data, "+".join(done)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder of two classes, each with one good image; the mutant joins class ``a``."""
    root = tmp_path_factory.mktemp("fuzz-folder")
    for name, value in (("a", 60), ("b", 200)):
        (root / name).mkdir()
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(root / name / "good.png")
    return root


def _claimed_pixels(path) -> int:
    """The pixels the file's header claims (0 where the header itself is refused)."""
    try:
        width, height, _ = probe_image(path)
    except ImageError:
        return 0
    return width * height


@pytest.mark.fuzz
# The deadline is the bound (no case over a second); tracemalloc bounds memory, as the IDX fuzz does.
@settings(max_examples=_FUZZ_EXAMPLES, deadline=timedelta(seconds=1), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(_mutants())
def test_the_folder_reader_decodes_or_lists_each_fuzzed_file(folder, case):
    suffix, data, what = case
    for old in (folder / "a").glob("x.*"):
        old.unlink()
    path = folder / "a" / f"x{suffix}"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            decoded = decode_folder(folder, image_size=8, channels=1, cache=False, log=None, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [str(w.message) for w in warned] == []  # a damaged file is one line in the list, not warnings too
    bad = dict(decoded.bad)
    assert set(bad) <= {str(path)}  # the good images always decode
    images, labels = decoded.splits["all"]
    assert len(labels) == 3 - len(bad) and images.shape[1:] == (1, 8, 8)
    if bad:
        reason = bad[str(path)]
        assert reason.startswith(("image ", str(path))) and str(path) in reason, reason
        event(f"bad: {reason.split(' (')[0].replace(str(path), 'FILE')[:60]}")
    else:
        event(f"decoded ({what})")
    # Never what a header claims beyond MAX_PIXELS, which is checked before decoding; up to it a mutant may be a
    # legitimate large image (a TIFF whose height became 262,163 decoded 6M pixels: 78 MB at ~13 bytes a pixel).
    assert peak < 64 * 2**20 + BYTES_PER_PIXEL * min(_claimed_pixels(path), MAX_PIXELS), peak
