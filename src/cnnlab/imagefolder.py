"""Training on your own images: a folder of class folders, decoded once into memory (issue #17).

The layout is torchvision's ``ImageFolder``: ``DIR/<class>/<image>``, the class names being the sorted folder
names (label ``k`` is the ``k``-th). ``DIR/train/<class>/...`` with ``DIR/test/`` and/or ``DIR/val/`` beside it
gives the splits explicitly. Every image is decoded once by :func:`cnnlab.images.decode_array` (checked,
upright, composited, resized by Pillow) into one ``uint8`` tensor ``(N, C, H, W)``, kept in a cache keyed by
the folder's listing, and batched by :class:`cnnlab.data.BatchLoader` as Fashion-MNIST is.

Folder and file names are untrusted text: they become class names and appear in messages, but no path is
ever built from them for writing (the cache file is named by a hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.atomic import atomic_write
from cnnlab.data import BatchLoader, check_fraction, load_fashion_mnist, stratified_split
from cnnlab.errors import UserError
from cnnlab.idx import cache_dir
from cnnlab.images import FORMATS, IMAGE_SUFFIXES, MAX_PIXELS, ImageError, decode_array, probe_image

__all__ = ["FASHION_FOLDERS", "Decoded", "ImageFolderData", "ImageFolderError", "channel_stats", "decode_folder",
           "default_max_bytes", "export_folder"]

# Fashion-MNIST's official class names (Xiao et al. 2017) as folder names: "T-shirt/top" holds a slash, which
# no folder name can, so every character but letters, digits and "-" becomes "_"; the label is put first so
# that the sorted folder names keep Fashion-MNIST's label order (0_T-shirt_top, 1_Trouser, ..., 9_Ankle_boot).
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FASHION_FOLDERS = tuple(f"{i}_" + "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in name)
                        for i, name in enumerate(_FASHION_NAMES))
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


def _scan(folder: Path) -> _Scan:
    """List ``folder/<class>/**/<image>`` in a fixed order: classes sorted, each class's files sorted."""
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
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:  # a broken link: decoding reports it with the other bad files
                    size, mtime = -1, -1
                scan.files.append((path, label, size, mtime))
        if len(scan.files) == found:
            empty.append(name)
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise ImageFolderError(f"{len(empty)} class folder(s) in {folder} hold no images: {names}; cnnlab reads "
                               f"files ending in {' '.join(IMAGE_SUFFIXES)}: add images or remove the folders")
    if len(classes) < 2:
        raise ImageFolderError(f"{folder} holds a single class folder, {classes[0]!r}; a classifier needs at "
                               f"least two classes, each in a folder of its own")
    return scan


# ---- decoding, with a cache ---------------------------------------------------------------------------------

@dataclass
class Decoded:
    """What :func:`decode_folder` returns: the images of each split, and what could not be read."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (uint8 (N, C, H, W), int64 (N,))
    classes: list[str]
    channels: int
    size: tuple[int, int]
    bad: list[tuple[str, str]]  # (path, reason) of every file left out
    cache_file: Path | None
    from_cache: bool


def decode_folder(root: str | os.PathLike, resize: int | tuple[int, int] | None = None, channels: int | None = None,
                  *, max_bytes: int | None = -1, cache: bool = True, progress: bool | None = None,
                  log=print) -> Decoded:
    """Find and decode every image under ``root`` (the layouts of :class:`ImageFolderData`), or load the cache.

    Bad files are collected, not raised: the caller decides (see ``skip_bad`` of :class:`ImageFolderData`).

    Args:
        root: the image folder.
        resize: ``(h, w)`` or an int for both; None: 28 for grey images, 32 for colour ones.
        channels: 1 or 3; None: 1 if every image is grey (:func:`cnnlab.images.is_grey`), else 3.
        max_bytes: refuse to decode more than this many bytes of images; -1: :func:`default_max_bytes`;
            None: no cap.
        cache: read and write ``<cache_dir()>/imagefolders/``.
        progress: a tqdm bar while decoding; None shows it only on a terminal.
        log: where the one-line summary goes; None for silence.

    Returns:
        A :class:`Decoded`.

    Raises:
        ImageFolderError: a layout problem (no or empty class folders, one class, class sets that differ
            between splits), or the images would not fit in ``max_bytes``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"the image folder {root} does not exist or is not a folder")
    size = _size(resize)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey), 3 (colour) or None (decided by the images), got {channels!r}")
    scans = {name: _scan(folder) for name, folder in _layout(root).items()}
    first = next(iter(scans.values()))
    for name, scan in scans.items():
        if scan.classes != first.classes:
            extra = sorted(set(scan.classes) - set(first.classes))
            missing = sorted(set(first.classes) - set(scan.classes))
            raise ImageFolderError(f"{scan.folder} and {first.folder} hold different classes ({name} has "
                                   f"{len(scan.classes)}, train {len(first.classes)}; only in {name}: {extra}; "
                                   f"missing from {name}: {missing}); every split needs the same class folders")
    ignored = sum(scan.ignored for scan in scans.values())
    if ignored and log is not None:
        log(f"ignored {ignored:,} files in {root} whose names do not end in an image suffix "
            f"({' '.join(IMAGE_SUFFIXES)})")
    cache_file = _cache_file(root, size, channels, scans) if cache else None
    if cache_file is not None:
        hit = _read_cache(cache_file, first.classes, scans)
        if hit is not None:
            if log is not None:
                n = sum(len(labels) for _, labels in hit.splits.values())
                log(f"{n:,} images of {root} read from the cache {cache_file}")
            return hit
    return _decode(root, scans, size, channels, max_bytes, cache_file, progress, log)


def _size(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= 4096 for s in size):
        raise ValueError(f"resize must be a side length or (height, width), each 1 to 4096 pixels, got {resize!r}")
    return size


def _decode(root: Path, scans: dict[str, _Scan], size, channels, max_bytes, cache_file, progress, log) -> Decoded:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    files = [f for scan in scans.values() for f in scan.files]
    bad: dict[str, str] = {}
    disable = None if progress is None else not progress
    if channels is None:
        # From the headers, before anything is decoded: the size in memory depends on it. The first colour
        # image settles it; the rest are then checked while they are decoded.
        channels = 1
        for path, *_ in tqdm(files, desc="reading headers", unit="img", disable=disable, leave=False):
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
            f"memory, over the limit of {limit:,} bytes ({limit / 2**30:.2f} GiB); choose a smaller resize, "
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
    decoded = Decoded(splits, list(next(iter(scans.values())).classes), channels, size, bad_list, cache_file,
                      from_cache=False)
    if cache_file is not None:
        _write_cache(cache_file, decoded)
    if log is not None:
        took = time.perf_counter() - start
        log(f"decoded {row:,} images of {root} to {channels}x{size[0]}x{size[1]} in {took:.1f} s "
            f"({row / max(took, 1e-9):,.0f} images/s)")
    return decoded


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


def _cache_file(root: Path, size, channels, scans: dict[str, _Scan]) -> Path:
    """``<cache_dir()>/imagefolders/<settings hash>-<listing hash>.pt``: a changed listing is a new name."""
    from PIL import __version__ as pillow_version

    settings = [_CACHE_VERSION, str(root.resolve()), size, channels]
    # Every file's name, size and mtime, and everything else that changes the decoded bytes or the bad list.
    listing = [pillow_version, MAX_PIXELS, FORMATS, IMAGE_SUFFIXES,
               [[name, scan.classes, [[p, s, m] for p, _, s, m in scan.files]] for name, scan in scans.items()]]
    slot = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
    return cache_dir() / "imagefolders" / f"{slot}-{digest}.pt"


def _write_cache(path: Path, decoded: Decoded) -> None:
    state = {"version": _CACHE_VERSION, "classes": decoded.classes, "channels": decoded.channels,
             "size": list(decoded.size), "bad": [list(b) for b in decoded.bad],
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


# ---- the data module ----------------------------------------------------------------------------------------

class ImageFolderData:
    """Your own images as a data module with FashionMNIST's API (d2l §4.2's DataModule), for ``Trainer.fit``.

    Layouts (torchvision's ``ImageFolder``, class names = sorted folder names):

    - ``DIR/<class>/<image>``: a stratified ``val_split`` (default 0.1) of the images, chosen by ``seed``, is
      held out for validation (:func:`cnnlab.data.stratified_split`); no test split.
    - ``DIR/train/<class>/...`` with ``DIR/val/`` and/or ``DIR/test/`` beside it: those folders are the splits
      (every split must hold the same class folders). Without ``DIR/val/``, ``val_split`` holds out part of
      ``train`` if given, else the test split also serves for validation, as d2l does with Fashion-MNIST.

    Files not ending in an image suffix (``README.txt``) and hidden files and folders (``.ipynb_checkpoints``)
    are ignored; subfolders of a class folder belong to that class.

    Args:
        root: the image folder.
        batch_size: images per training batch.
        resize: ``(h, w)`` or one side: every image is resized to it by Pillow when decoded (aspect ratio not
            kept, as torchvision's ``Resize((h, w))``); None: 28 for grey images, 32 for colour.
        channels: 1 or 3; None: 1 if every image is grey (judged by its mode, see :func:`cnnlab.images.is_grey`),
            else 3.
        normalize: standardize each channel with the training images' own ``mean`` and ``std``.
        augment: random crop and flip for the training loader (batched, as for Fashion-MNIST).
        seed: seed of the training order, the augmentation and the validation split.
        val_split: the share of each class held out for validation (see the layouts above).
        val_batch_size: images per validation and test batch; default ``batch_size``.
        skip_bad: leave out files that cannot be read (counted in ``num_skipped``, listed in ``skipped``, and
            reported through ``log``) instead of refusing the folder with an error that lists them all.
        max_bytes: refuse a folder whose decoded images need more memory than this (the check comes before
            anything is decoded; a flat folder's split then copies them once more, for a moment); default half
            the RAM; None: no cap.
        cache: keep the decoded images in ``<cache_dir()>/imagefolders/`` (``$CNNLAB_CACHE``), keyed by the
            settings and every file's name, size and mtime: an added, removed or touched file decodes afresh.
        device: move the images there once, see :meth:`to`.
        progress: a progress bar while decoding; None shows it only on a terminal.
        log: where notes go (skipped files, the decode's speed); None for silence.

    Raises:
        ImageFolderError: the folder is missing, has no or empty class folders or only one class, its splits
            hold different classes, it is too large for ``max_bytes``, it holds unreadable files (without
            ``skip_bad``, every one listed), or it has too few images to hold out a validation split.
    """

    def __init__(self, root: str | os.PathLike, batch_size: int = 64, resize: int | tuple[int, int] | None = None,
                 channels: int | None = None, normalize: bool = False, augment: bool = False, seed: int = 0,
                 val_split: float | None = None, val_batch_size: int | None = None, skip_bad: bool = False,
                 max_bytes: int | None = -1, cache: bool = True, device=None, progress: bool | None = None,
                 log=print):
        if val_split is not None:
            check_fraction(val_split)
        self.root = Path(root).expanduser()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.normalize, self.augment, self.seed = normalize, augment, seed
        self.val_split, self.skip_bad = val_split, skip_bad
        if val_split is not None and (self.root / "train").is_dir() and (self.root / "val").is_dir():
            raise ImageFolderError(f"{self.root} has a val folder, so val_split={val_split} has nothing to do; "
                                   "drop val_split, or remove the val folder to split the training images")
        decoded = decode_folder(self.root, resize, channels, max_bytes=max_bytes, cache=cache, progress=progress,
                                log=log)
        self.classes = tuple(decoded.classes)
        self.channels, self.resize = decoded.channels, decoded.size
        self.cache_file = decoded.cache_file
        self.skipped = decoded.bad
        if decoded.bad and not skip_bad:
            listing = "\n".join(f"  {reason}" for _, reason in decoded.bad)
            total = sum(len(labels) for _, labels in decoded.splits.values()) + len(decoded.bad)
            raise ImageFolderError(f"{len(decoded.bad):,} of {total:,} image files in {self.root} cannot be read:\n"
                                   f"{listing}\nfix or remove them, or pass skip_bad=True to leave them out")
        if decoded.bad and log is not None:
            log(f"skipped {len(decoded.bad):,} unreadable image files in {self.root} (skip_bad=True); the first: "
                f"{decoded.bad[0][1]}")
        self._assign_splits(decoded.splits)
        self.mean, self.std = channel_stats(self.train_images)
        if device is not None:
            self.to(device)

    def _assign_splits(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (images, _) in splits.items():
            if not len(images):  # every file of a split was bad and skipped
                raise ImageFolderError(f"none of the image files of {self.root}'s {name} split can be read; fix "
                                       "them, or remove that folder")
        pool_name = "all" if "all" in splits else "train"
        pool_images, pool_labels = splits[pool_name]
        self.test_images, self.test_labels = splits.get("test", (None, None))
        if "val" in splits:
            self.train_images, self.train_labels = pool_images, pool_labels
            self.val_images, self.val_labels = splits["val"]
        elif self.val_split is None and "test" in splits:
            self.train_images, self.train_labels = pool_images, pool_labels
            self.val_images, self.val_labels = self.test_images, self.test_labels
        else:
            fraction = 0.1 if self.val_split is None else self.val_split
            train_idx, val_idx = stratified_split(pool_labels, fraction, self.seed)
            if not len(val_idx):
                raise ImageFolderError(f"{self.root} has too few images to hold out a validation split: every "
                                       "class has a single image; add images (two or more per class)")
            self.train_images, self.train_labels = pool_images[train_idx], pool_labels[train_idx]
            self.val_images, self.val_labels = pool_images[val_idx], pool_labels[val_idx]
        present = self.train_labels.bincount(minlength=len(self.classes))
        if bool((present == 0).any()):
            lost = [self.classes[i] for i in (present == 0).nonzero().flatten().tolist()]
            raise ImageFolderError(f"no readable training image is left in class(es) {lost} of {self.root}; "
                                   "fix their files or remove the folders")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_skipped(self) -> int:
        """How many files were left out as unreadable (``skip_bad=True``)."""
        return len(self.skipped)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image in a batch: ``(C, H, W)``."""
        return (self.channels, *self.resize)

    @property
    def has_test(self) -> bool:
        return self.test_images is not None

    def to(self, device) -> ImageFolderData:
        """Move the uint8 images and labels to ``device`` once; loaders made afterwards batch there."""
        val_is_test = self.val_images is self.test_images
        self.train_images, self.train_labels = self.train_images.to(device), self.train_labels.to(device)
        if self.has_test:
            self.test_images, self.test_labels = self.test_images.to(device), self.test_labels.to(device)
        if val_is_test:  # one copy on the device, not two
            self.val_images, self.val_labels = self.test_images, self.test_labels
        else:
            self.val_images, self.val_labels = self.val_images.to(device), self.val_labels.to(device)
        return self

    def settings(self) -> dict:
        """Plain values for a checkpoint: the constructor arguments that shape the batches (``resize`` and
        ``channels`` as resolved), and what a model trained on them needs at prediction time (``classes``,
        ``mean``, ``std``); :meth:`from_settings` rebuilds the data from them."""
        return {"dataset": "imagefolder", "root": str(self.root), "batch_size": self.batch_size,
                "resize": self.resize, "channels": self.channels, "normalize": self.normalize,
                "augment": self.augment, "seed": self.seed, "val_split": self.val_split,
                "val_batch_size": self.val_batch_size, "skip_bad": self.skip_bad, "classes": list(self.classes),
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> ImageFolderData:
        """Rebuild from :meth:`settings` (``overrides`` win); the folder must still hold the same classes."""
        args = {k: v for k, v in settings.items() if k not in ("dataset", "classes", "mean", "std")}
        data = cls(**{**args, **overrides})
        if list(data.classes) != list(settings.get("classes", data.classes)):
            raise ImageFolderError(f"{data.root} now holds the classes {list(data.classes)}, not the "
                                   f"{list(settings['classes'])} the settings were made with")
        return data

    def _normalization(self):
        return (self.mean, self.std) if self.normalize else None

    def get_dataloader(self, train: bool) -> BatchLoader:
        """The shuffled, optionally augmented training loader, or the in-order validation loader."""
        if train:
            return BatchLoader(self.train_images, self.train_labels, self.batch_size, shuffle=True,
                               augment=self.augment, normalize=self._normalization(), seed=self.seed)
        return BatchLoader(self.val_images, self.val_labels, self.val_batch_size or self.batch_size,
                           normalize=self._normalization(), seed=self.seed)

    def train_dataloader(self) -> BatchLoader:
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> BatchLoader:
        return self.get_dataloader(train=False)

    def test_dataloader(self) -> BatchLoader:
        """The test folder's images in order (only when ``DIR/test/`` exists)."""
        if not self.has_test:
            raise ImageFolderError(f"{self.root} has no test split: put the test images in {self.root}/test/<class>/"
                                   f" beside {self.root}/train/<class>/")
        return BatchLoader(self.test_images, self.test_labels, self.val_batch_size or self.batch_size,
                           normalize=self._normalization(), seed=self.seed)

    def text_labels(self, indices) -> list[str]:
        """Class names (the folder names) for label indices."""
        return [self.classes[int(i)] for i in indices]

    def __repr__(self) -> str:
        test = f", test={len(self.test_labels)}" if self.has_test else ""
        return (f"ImageFolderData({str(self.root)!r}, classes={len(self.classes)}, image_shape={self.image_shape}, "
                f"train={len(self.train_labels)}, val={len(self.val_labels)}{test}, "
                f"device={self.train_images.device})")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images scaled to [0, 1], exact (from histograms).

    A constant channel gets a standard deviation of 1, so that normalizing it cannot divide by zero.

    Shape:
        ``images`` (N, C, H, W) -> two tuples of C floats.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).double()
        n = counts.sum().clamp(min=1)
        mean = float((counts * values).sum() / n)
        var = float((counts * values.square()).sum() / n) - mean * mean
        std = max(var, 0.0) ** 0.5
        means.append(mean)
        stds.append(std if std > 1e-8 else 1.0)
    return tuple(means), tuple(stds)


# ---- Fashion-MNIST as an image folder -----------------------------------------------------------------------

def export_folder(out_dir: str | os.PathLike, split: str = "train", limit: int | None = None,
                  root: str | os.PathLike | None = None, progress: bool | None = None) -> Path:
    """Write Fashion-MNIST as PNG files in the image-folder layout: ``out_dir/<split>/<class>/<index>.png``.

    The class folders are :data:`FASHION_FOLDERS` (``0_T-shirt_top`` ... ``9_Ankle_boot``: the official names,
    made safe as folder names, after the label so that they sort in label order); ``<index>`` is the image's
    position in the split, five digits. The folder is written under a temporary name and renamed at the end,
    so ``out_dir/<split>`` is complete or absent, never half-written.

    Args:
        out_dir: where ``<split>/`` goes (created if needed); ``out_dir/<split>`` must not exist yet.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        limit: write only the first ``limit`` images.
        root: the Fashion-MNIST files (see :func:`cnnlab.data.load_fashion_mnist`); None searches.
        progress: a tqdm bar; None shows it only on a terminal.

    Returns:
        ``out_dir/<split>``.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out_dir = Path(out_dir).expanduser()
    final = out_dir / split
    if final.exists():
        raise ImageFolderError(f"{final} already exists; remove it or choose another folder to export to")
    images, labels = load_fashion_mnist(root, train=split == "train")
    if limit is not None:
        if not 1 <= limit <= len(labels):
            raise ValueError(f"limit must be between 1 and {len(labels):,}, got {limit}")
        images, labels = images[:limit], labels[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this very pid number, long dead
    try:
        for name in FASHION_FOLDERS:
            (tmp / name).mkdir(parents=True)
        pixels = images.numpy()
        for i, label in enumerate(tqdm(labels.tolist(), desc=f"exporting {split}", unit="img",
                                       disable=None if progress is None else not progress)):
            Image.fromarray(pixels[i]).save(tmp / FASHION_FOLDERS[label] / f"{i:05d}.png")
        os.rename(tmp, final)  # refuses to replace a folder that appeared meanwhile with files in it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
