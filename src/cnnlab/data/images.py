"""Reading image files safely: one checked reader for ``predict`` and for training on image folders.

Every file is treated as hostile. Its size in pixels is read from the header and refused above
:data:`MAX_PIXELS` before any pixel is decoded (a 200-byte PNG can declare 10 gigapixels); only the formats in
:data:`FORMATS` are opened (Pillow would otherwise also try formats such as EPS, which runs Ghostscript); and
every failure is one :class:`ImageError` that names the file and the reason, never a traceback.

What comes back is upright (the EXIF orientation tag applied, as phone photos need) and in one of two modes:
``L`` (8-bit grey) or ``RGB``. Transparency is composited onto a background of whichever shade keeps the
drawing visible: a white shirt cut out on transparency lands on black, a dark one on white.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings

import numpy as np
import torch

from cnnlab.errors import ImageError

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "MAX_PIXELS", "check_file", "decode_array", "decode_image", "is_grey",
           "open_image", "probe_image"]

# Refuse decompression bombs before decoding: 40 megapixels is far beyond any photo a CNN here is fed.
MAX_PIXELS = 40_000_000
# Pillow's format names. JPEG includes MPO, the variant many phones write (a JPEG with a second picture):
# Pillow's JPEG opener returns those itself, and "MPO" is no opener's name.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# File names an image folder is scanned for (torchvision's IMG_EXTENSIONS, less the formats not in FORMATS).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF, WebP or TIFF"


def open_image(path: str | os.PathLike, channels: int | None = None, *, formats: tuple[str, ...] | None = FORMATS,
               size_hint: tuple[int, int] | None = None):
    """Read an image file, checked, upright, as a Pillow image in mode ``L`` or ``RGB``.

    Any mode Pillow opens is accepted: 1-bit, greyscale (8, 16 or 32 bits, float: the real range is stretched
    to 0-255), palette, RGB, CMYK, and alpha (RGBA, LA, palette or ``tRNS`` transparency, composited as the
    module says). GIF and TIFF give their first frame.

    Args:
        path: the image file.
        channels: 1 for ``L``, 3 for ``RGB``; None keeps the image's own kind (see :func:`is_grey`).
        formats: Pillow format names to accept (None: every format Pillow knows, as ``predict`` always has).
        size_hint: ``(h, w)`` the caller will shrink the image to: a JPEG is then decoded at a reduced scale
            (at least this size), 2-8x faster for photos, as Pillow's ``draft`` does.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``L`` or ``RGB``.

    Raises:
        ImageError: missing, empty, not an image (or not of ``formats``), truncated or corrupt, or larger than
            ``MAX_PIXELS`` (checked from the header, before any pixel is decoded).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    with _checked(path, formats) as img:
        if size_hint is not None and img.format in ("JPEG", "MPO"):
            # Square, the larger side: an EXIF turn may swap height and width afterwards.
            side = max(size_hint)
            img.draft(img.mode, (side, side))
        img.load()
        _upright(img)
        grey = is_grey(img) if channels is None else channels == 1
    # Converted outside the check: the file is read whole by now, so an error from here on is cnnlab's bug, to
    # be seen as one, not "your file is damaged". (Closing the file left the decoded pixels in memory.)
    return _to_grey(img) if grey else _to_rgb(img)


def probe_image(path: str | os.PathLike, formats: tuple[str, ...] | None = FORMATS) -> tuple[int, int, bool]:
    """Check an image file from its header, as :func:`open_image` would, without decoding its pixels.

    Palette images are the exception: their palette is read (Pillow loads the image to give it).

    Returns:
        ``(width, height, grey)``, ``grey`` as :func:`is_grey` says.

    Raises:
        ImageError: as :func:`open_image`, except damage past the header, found only by decoding.
    """
    with _checked(path, formats) as img:
        return img.width, img.height, is_grey(img)


def check_file(path: str | os.PathLike) -> os.stat_result:
    """Refuse what is not a non-empty regular file (through symlinks) from its ``stat``, before any ``open``.

    A FIFO, socket or device named ``x.png`` must never be opened: opening a FIFO blocks until a writer comes
    (forever), and a device may be endless or act on being opened.

    Raises:
        ImageError: missing (or a broken symlink), unreadable, a folder, a FIFO, socket or device, or empty.
    """
    try:
        st = os.stat(path)  # follows symlinks: a link to a regular file is fine, a link to a FIFO is not
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"image {path} cannot be read ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _SPECIAL_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ImageError(f"image {path} is not a file but {kind}; remove it from the image folder")
    if st.st_size == 0:
        raise ImageError(f"image {path} is empty (0 bytes)")
    return st


def _check_png_chunks(path: str | os.PathLike, size: int) -> None:
    """Refuse a PNG whose chunk declares more bytes than the file holds, before Pillow reads it.

    Pillow reads a chunk by its declared length, and Python allocates the whole length before the read comes
    back short: a 100-byte PNG declaring a 4 GiB IDAT would cost 4 GiB of memory (found by the image fuzz).
    Other formats: nothing to do here.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return
        pos = 8
        while pos + 8 <= size:
            head = f.read(8)
            length, kind = int.from_bytes(head[:4], "big"), head[4:].decode("latin-1")
            if pos + 12 + length > size:
                raise ImageError(f"image {path} is damaged or truncated (its {kind!r} chunk declares {length:,} "
                                 f"bytes, the file holds {size - pos - 12:,} more); export it again")
            if head[4:] == b"IEND":
                return
            pos += 12 + length
            f.seek(pos)


_SPECIAL_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
                  stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


@contextlib.contextmanager
def _checked(path: str | os.PathLike, formats: tuple[str, ...] | None):
    """The opened (not yet decoded) image, its size checked; every failure inside becomes an ImageError."""
    from PIL import Image, UnidentifiedImageError

    st = check_file(path)
    too_big = (f"over the {MAX_PIXELS:,}-pixel limit (a decompression bomb or a needlessly huge photo); "
               "shrink it first")
    try:
        _check_png_chunks(path, st.st_size)
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx and refuses from 179 Mpx; our own, lower limit is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Damaged TIFF/EXIF tags ("Tag data larger than file"): the file is decoded or refused all the same,
            # and a folder of them would bury the one-line summary.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path, formats=formats) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"image {path} is {width}x{height} pixels, {too_big}")
                yield img
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"image {path} declares more pixels than Pillow will decode, {too_big}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file cnnlab can read (use {_FORMAT_NAMES})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image {path} is damaged or truncated ({exc}); export it again") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file must never surface as a traceback
        raise ImageError(f"image {path} cannot be decoded ({type(exc).__name__}: {exc})") from None


def decode_image(path: str | os.PathLike, channels: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image file (:func:`open_image`) into a ``uint8`` tensor, resized by Pillow if asked.

    The resize ignores the aspect ratio, as torchvision's ``Resize((h, w))``, with Pillow's antialiased
    bilinear filter (it averages over the whole footprint when shrinking).

    Args:
        path: the image file.
        channels: 1 (grey) or 3 (RGB).
        image_size: ``(h, w)`` of the result; None keeps the file's size.

    Returns:
        ``uint8`` tensor.

    Raises:
        ImageError: as :func:`open_image`.

    Shape:
        ``(channels, h, w)``.
    """
    return torch.from_numpy(np.array(decode_array(path, channels, image_size)))  # a writable, contiguous copy


def decode_array(path: str | os.PathLike, channels: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`decode_image` as a NumPy array ``(channels, h, w)`` (a strided view for RGB: no extra copy)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    img = open_image(path, channels, size_hint=image_size)
    if image_size is not None and img.size != (image_size[1], image_size[0]):
        img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def is_grey(img) -> bool:
    """Whether a Pillow image holds grey values only, judged by its mode (and palette), not its pixels.

    Grey: 1-bit, L, LA, 16/32-bit integer and float greyscale, and a palette whose colours are all grey. An RGB
    image that happens to hold grey pixels counts as colour: deciding by mode is cheap (the header says it)
    and predictable.
    """
    if img.mode in _GREY_MODES or img.mode.startswith("I;"):
        return True
    if img.mode in ("P", "PA"):
        palette = img.getpalette("RGB") or []
        rgb = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
        return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
    return False


def _upright(img) -> None:
    """Apply the EXIF orientation tag in place (phone photos are stored sideways); a broken tag is ignored."""
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image that needs no turn
    except Exception:  # noqa: BLE001 - the pixels are fine; only the optional tag is damaged
        pass


def _has_alpha(img) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _background(lum: np.ndarray, alpha: np.ndarray) -> float:
    """Black behind a light drawing, white behind a dark one (``alpha`` in [0, 1]), so it stays visible."""
    coverage = float(alpha.sum())
    drawing_is_light = coverage > 0 and float((lum * alpha).sum()) / coverage > 127
    return 0.0 if drawing_is_light else 255.0


def _to_grey(img):
    """Any Pillow mode -> 8-bit greyscale ('L'), transparency composited (see :func:`_background`)."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        # 16/32-bit integer or float greyscale: stretch the real range to 0-255 rather than clip it.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.round().astype(np.uint8))
    if _has_alpha(img):
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32)  # (H, W, 2): luminance, alpha
        lum, alpha = la[..., 0], la[..., 1] / 255
        out = lum * alpha + _background(lum, alpha) * (1 - alpha)
        return Image.fromarray(out.round().astype(np.uint8))
    if img.mode not in ("1", "L", "P", "RGB", "CMYK"):
        img = img.convert("RGB")  # YCbCr, LAB, HSV...: Pillow converts these to L only through RGB
    return img.convert("L")


def _to_rgb(img):
    """Any Pillow mode -> 8-bit 'RGB', transparency composited as in :func:`_to_grey`."""
    from PIL import Image

    if is_grey(img) and img.mode not in ("P", "PA"):
        return _to_grey(img).convert("RGB")  # the grey rules (range stretch, alpha) apply, then 3 copies
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
        rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255
        lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's L
        out = rgb * alpha + _background(lum, alpha[..., 0]) * (1 - alpha)
        return Image.fromarray(out.round().astype(np.uint8))
    return img.convert("RGB")  # a copy when it is RGB already
