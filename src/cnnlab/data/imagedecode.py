"""Decoding an image folder once: scan its class folders, decode every image, keep the result in a cache.

``decode_folder`` lists ``DIR/<class>/<image>`` (or ``DIR/train/...`` with ``test/`` and ``val/``), checks the
decoded size against a memory cap before decoding, decodes each file by :func:`cnnlab.data.images.decode_array`
(checked, upright, composited, resized by Pillow) into one ``uint8`` tensor ``(N, C, H, W)`` per split, and
keeps it in a cache under ``$CNNLAB_CACHE/imagefolders/``, keyed by the file list, sizes and mtimes (so a
changed folder is decoded again). :class:`cnnlab.data.imagefolder.ImageFolderData` batches the result.

Folder and file names are untrusted text: they become class names and appear in messages, but no path is
ever built from them for writing (the cache file is named by a hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.atomic import atomic_write
from cnnlab.data.files import cache_dir
from cnnlab.data.images import FORMATS, IMAGE_SUFFIXES, MAX_PIXELS, check_file, decode_array, probe_image
from cnnlab.errors import ImageError, UserError
from cnnlab.nn.ops import size_pair

__all__ = ["Decoded", "ImageFolderError", "decode_folder", "default_max_bytes"]

_CACHE_VERSION = 1
_SPLITS = ("train", "val", "test")


class ImageFolderError(UserError, ValueError):
    """An image folder that cannot be used as it is; the message says what is wrong and how to fix it."""


def default_max_bytes() -> int | None:
    """Half the machine's RAM (``os.sysconf``), the default cap on decoded images; None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


# ---- finding the images -------------------------------------------------------------------------------------

@dataclass
class _Scan:
    """One split's listing: class names, and each image file as ``(path, label, size, mtime_ns)``."""

    folder: Path
    classes: list[str]
    files: list[tuple[str, int, int, int]] = field(default_factory=list)
    ignored: int = 0  # files whose names do not end in an image suffix


def _layout(root: Path) -> dict[str, Path]:
    """``{"train": DIR/train, "val": ..., "test": ...}`` when ``DIR/train`` exists, else ``{"all": DIR}``."""
    if (root / "train").is_dir():
        return {name: root / name for name in _SPLITS if (root / name).is_dir()}
    return {"all": root}


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .ipynb_checkpoints, .DS_Store, .git: never a class or an image


def _unreadable(exc: OSError) -> None:
    raise ImageFolderError(f"the folder {exc.filename} cannot be read ({exc.strerror}); fix its permissions or "
                           "move it out of the image folder")


def _scan(folder: Path, single_class: bool = False) -> _Scan:
    """List ``folder/<class>/**/<image>`` in a fixed order: classes sorted, each class's files sorted.

    ``single_class``: one class folder is allowed (a ``val/`` or ``test/`` split; ``train/`` needs two)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise ImageFolderError(f"the image folder {folder} cannot be read ({e})") from None
    classes = [e.name for e in entries if _visible(e.name) and e.is_dir()]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        hint = f"; it holds {loose:,} image file(s) but no class folders" if loose else ""
        raise ImageFolderError(f"{folder} holds no class folders{hint}: put each class's images in a folder of "
                               f"its own, {folder}/<class name>/<image>")
    scan = _Scan(folder, classes)
    empty = []
    for label, name in enumerate(classes):
        found = len(scan.files)
        # Top-down with sorted subfolders and files: the order is the same on every machine; links to folders
        # are not followed (a link to a parent would loop forever).
        for here, dirs, files in os.walk(folder / name, onerror=_unreadable):
            dirs[:] = sorted(d for d in dirs if _visible(d))
            for fname in sorted(files):
                if not _visible(fname):
                    continue
                if not fname.lower().endswith(IMAGE_SUFFIXES):
                    scan.ignored += 1
                    continue
                path = os.path.join(here, fname)
                try:
                    st = os.stat(path)
                except OSError:  # a broken link: decoding reports it with the other bad files
                    size, mtime = -1, -1
                else:  # size -1 also for a FIFO, socket or device (perhaps behind a link): bad, never opened
                    size = st.st_size if stat.S_ISREG(st.st_mode) else -1
                    mtime = st.st_mtime_ns
                scan.files.append((path, label, size, mtime))
        if len(scan.files) == found:
            empty.append(name)
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise ImageFolderError(f"{len(empty)} class folder(s) in {folder} hold no images: {names}; cnnlab reads "
                               f"files ending in {' '.join(IMAGE_SUFFIXES)}: add images or remove the folders")
    if len(classes) < 2 and classes[0] in ("test", "val"):  # a split without train/ beside it
        raise ImageFolderError(f"{folder} holds {classes[0]}/ but no train/ beside it; put the training images in "
                               f"{folder / 'train'}/<class>/, or the classes directly in {folder}")
    if len(classes) < 2 and not single_class:
        raise ImageFolderError(f"{folder} holds a single class folder, {classes[0]!r}; a classifier needs at "
                               f"least two classes, each in a folder of its own")
    return scan


def _label_by(scan: _Scan, name: str, reference: list[str], source: str) -> None:
    """Label ``scan``'s files by their class's place in ``reference`` (``train/``'s classes, or a trained model's),
    so that a split holding fewer classes (a small ``test/`` without one) keeps the labels the model learned;
    a class ``reference`` lacks is refused, since nothing was trained to answer it."""
    if scan.classes == reference:
        return
    extra = [c for c in scan.classes if c not in reference]
    if extra:
        raise ImageFolderError(f"{scan.folder} holds class(es) {extra} that {source} does not ({name} has "
                               f"{len(scan.classes)} classes, {source} {len(reference)}: {reference}); every class "
                               f"of {name} needs its folder in {source} too")
    index = [reference.index(c) for c in scan.classes]
    scan.files = [(path, index[label], size, mtime) for path, label, size, mtime in scan.files]


# ---- decoding, with a cache ---------------------------------------------------------------------------------

@dataclass
class Decoded:
    """What :func:`decode_folder` returns: the images of each split, and what could not be read."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (uint8 (N, C, H, W), int64 (N,))
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    bad: list[tuple[str, str]]  # (path, reason) of every file left out
    cache_file: Path | None
    from_cache: bool


def decode_folder(root: str | os.PathLike, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
                  *, max_bytes: int | None = -1, cache: bool = True, progress: bool | None = None,
                  log=print, only: str | None = None, classes: list[str] | None = None) -> Decoded:
    """Find and decode every image under ``root`` (the layouts of :class:`ImageFolderData`), or load the cache.

    Bad files are collected, not raised: the caller decides (see ``skip_bad`` of :class:`ImageFolderData`).

    Args:
        root: the image folder.
        image_size: ``(h, w)`` or an int for both; None: 28 for grey images, 32 for colour ones.
        channels: 1 or 3; None: 1 if every image is grey (:func:`cnnlab.data.images.is_grey`), else 3.
        max_bytes: refuse to decode more than this many bytes of images; -1: :func:`default_max_bytes`;
            None: no cap.
        cache: read and write ``<cache_dir()>/imagefolders/``.
        progress: a tqdm bar while decoding; None shows it only on a terminal.
        log: where the one-line summary goes; None for silence.
        only: decode this split alone (``"test"``: a trained model's check images, never its training images).
        classes: the class names labels index into (a trained model's); None: the first split's (``train/``).
            A split may hold fewer of them (a small test set without one class), never a class not among them.

    Returns:
        A :class:`Decoded`.

    Raises:
        ImageFolderError: a layout problem (no or empty class folders, one class in ``train/``, a split with a
            class ``train/`` lacks), or the images would not fit in ``max_bytes``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"the image folder {root} does not exist or is not a folder")
    size = _size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey), 3 (colour) or None (decided by the images), got {channels!r}")
    layout = _layout(root)
    if only is not None:
        if only not in layout:
            raise ImageFolderError(f"{root} has no {only} split: put those images in {root}/{only}/<class>/")
        layout = {only: layout[only]}
    scans = {name: _scan(folder, single_class=name in ("val", "test")) for name, folder in layout.items()}
    first = next(iter(scans.values()))
    reference = list(classes) if classes is not None else first.classes
    for name, scan in scans.items():
        _label_by(scan, name, reference, "the model" if classes is not None else "train/")
        if scan.classes != reference and log is not None:
            missing = [c for c in reference if c not in scan.classes]
            log(f"{scan.folder} holds {len(scan.classes)} of the {len(reference)} classes (none of {missing}); "
                f"its images keep {'the model' if classes is not None else 'train/'}'s labels")
    ignored = sum(scan.ignored for scan in scans.values())
    if ignored and log is not None:
        log(f"ignored {ignored:,} files in {root} whose names do not end in an image suffix "
            f"({' '.join(IMAGE_SUFFIXES)})")
    cache_file = _cache_file(root, size, channels, scans, reference) if cache else None
    if cache_file is not None:
        hit = _read_cache(cache_file, reference, scans)
        if hit is not None:
            if log is not None:
                n = sum(len(labels) for _, labels in hit.splits.values())
                log(f"{n:,} images of {root} read from the cache {cache_file}")
            return hit
    return _decode(root, scans, reference, size, channels, max_bytes, cache_file, progress, log)


def _size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        size = size_pair(image_size)
    except ValueError:
        size = (0, 0)
    if not all(1 <= s <= 4096 for s in size):
        raise ValueError(f"image_size must be a side length or (height, width), each 1 to 4096 pixels, got "
                         f"{image_size!r}")
    return size


def _decode(root: Path, scans: dict[str, _Scan], classes: list[str], size, channels, max_bytes, cache_file, progress,
            log) -> Decoded:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    files = [f for scan in scans.values() for f in scan.files]
    bad = _refused_from_stat(files)
    disable = None if progress is None else not progress
    if channels is None:
        # From the headers, before anything is decoded: the size in memory depends on it. The first colour
        # image settles it; the rest are then checked while they are decoded.
        channels = 1
        for path, *_ in tqdm(files, desc="reading headers", unit="img", disable=disable, leave=False):
            if path in bad:
                continue
            try:
                grey = _png_is_grey(path)
                if grey is None:
                    grey = probe_image(path)[2]
            except ImageError as e:
                bad[path] = str(e)
                continue
            if not grey:
                channels = 3
                break
    if size is None:
        size = (28, 28) if channels == 1 else (32, 32)
    n = len(files) - len(bad)
    needed = n * channels * size[0] * size[1]
    limit = default_max_bytes() if max_bytes == -1 else max_bytes
    if limit is not None and needed > limit:
        raise ImageFolderError(
            f"{n:,} images of {channels}x{size[0]}x{size[1]} need {needed:,} bytes ({needed / 2**30:.2f} GiB) in "
            f"memory, over the limit of {limit:,} bytes ({limit / 2**30:.2f} GiB); choose a smaller image size, "
            f"channels=1, fewer images, or a larger max_bytes")
    splits = {}
    with tqdm(total=len(files), desc=f"decoding {root.name}", unit="img", disable=disable) as bar:
        for name, scan in scans.items():
            # One buffer per split, sized before decoding: no second copy of the images is ever made.
            count = sum(1 for f in scan.files if f[0] not in bad)
            images = np.empty((count, channels, *size), dtype=np.uint8)
            labels = np.empty(count, dtype=np.int64)
            row = 0
            for path, label, _, _ in scan.files:
                bar.update()
                if path in bad:
                    continue
                try:
                    images[row] = decode_array(path, channels, size)
                except ImageError as e:
                    bad[path] = str(e)
                    continue
                labels[row] = label
                row += 1
            images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
            if row < count:  # some failed to decode: a compact copy, so the cache stores no unused rows
                images_t, labels_t = images_t[:row].clone(), labels_t[:row].clone()
            splits[name] = (images_t, labels_t)
    row = sum(len(labels) for _, labels in splits.values())
    # In listing order, so that the error lists the files as the folder does.
    order = {f[0]: i for i, f in enumerate(files)}
    bad_list = sorted(bad.items(), key=lambda item: order[item[0]])
    decoded = Decoded(splits, list(classes), channels, size, bad_list, cache_file,
                      from_cache=False)
    if cache_file is not None:
        _write_cache(cache_file, decoded)
    if log is not None:
        took = time.perf_counter() - start
        log(f"decoded {row:,} images of {root} to {channels}x{size[0]}x{size[1]} in {took:.1f} s "
            f"({row / max(took, 1e-9):,.0f} images/s)")
    return decoded


def _refused_from_stat(files: list[tuple[str, int, int, int]]) -> dict[str, str]:
    """``{path: reason}`` for the files the scan found missing, empty or special, before anything opens them."""
    bad = {}
    for path, _, size, _ in files:
        if size <= 0:  # _scan gives -1 for a broken link and for a FIFO, socket or device
            try:
                check_file(path)
            except ImageError as e:
                bad[path] = str(e)
    return bad


def _png_is_grey(path: str) -> bool | None:
    """Grey or colour from a PNG's first 26 bytes (its IHDR colour type): 5x faster than asking Pillow.

    None for anything else (another format, a palette image, a file too short): then Pillow decides.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return {0: True, 4: True, 2: False, 6: False}.get(head[25])  # grey, grey+alpha, RGB, RGBA; 3: palette


def _cache_file(root: Path, size, channels, scans: dict[str, _Scan], classes: list[str]) -> Path:
    """``<cache_dir()>/imagefolders/<settings hash>-<listing hash>.pt``: a changed listing is a new name."""
    from PIL import __version__ as pillow_version

    settings = [_CACHE_VERSION, str(root.resolve()), size, channels]
    # Every file's name, size and mtime, and everything else that changes the decoded bytes or the bad list.
    listing = [pillow_version, MAX_PIXELS, FORMATS, IMAGE_SUFFIXES, classes,
               [[name, scan.classes, [[p, s, m] for p, _, s, m in scan.files]] for name, scan in scans.items()]]
    slot = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
    return cache_dir() / "imagefolders" / f"{slot}-{digest}.pt"


def _write_cache(path: Path, decoded: Decoded) -> None:
    state = {"version": _CACHE_VERSION, "classes": decoded.classes, "channels": decoded.channels,
             "size": list(decoded.image_size), "bad": [list(b) for b in decoded.bad],
             "splits": {name: {"images": images, "labels": labels}
                        for name, (images, labels) in decoded.splits.items()}}
    # Only a cache: an unwritable or full disk means decoding again next time, not an error.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(state, f)
        slot = path.name.split("-")[0]
        for old in path.parent.glob(f"{slot}-*.pt"):  # this folder's older listings: never read again
            if old != path:
                with contextlib.suppress(OSError):
                    old.unlink()


def _read_cache(path: Path, classes: list[str], scans: dict[str, _Scan]) -> Decoded | None:
    """The cached decode if it is there and whole; None (decode again) for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: the cache is only ever a shortcut
        return None
    try:
        if state["version"] != _CACHE_VERSION or state["classes"] != classes or set(state["splits"]) != set(scans):
            return None
        channels, size = int(state["channels"]), tuple(int(s) for s in state["size"])
        splits = {}
        for name, part in state["splits"].items():
            images, labels = part["images"], part["labels"]
            if (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (channels, *size)
                    or labels.dtype != torch.int64 or labels.shape != (len(images),)
                    or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes))):
                return None
            splits[name] = (images, labels)
        bad = [(str(p), str(r)) for p, r in state["bad"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return Decoded(splits, classes, channels, size, bad, path, from_cache=True)
