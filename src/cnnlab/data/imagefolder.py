"""Training on your own images: a folder of class folders, decoded once into memory (issue #17).

The layout is torchvision's ``ImageFolder``: ``DIR/<class>/<image>``, the class names being the sorted folder
names (label ``k`` is the ``k``-th). ``DIR/train/<class>/...`` with ``DIR/test/`` and/or ``DIR/val/`` beside it
gives the splits explicitly. Every image is decoded once by :func:`cnnlab.data.images.decode_array` (checked,
upright, composited, resized by Pillow) into one ``uint8`` tensor ``(N, C, H, W)``, kept in a cache keyed by
the folder's listing, and batched by :class:`cnnlab.data.batching.BatchLoader` as Fashion-MNIST is.

Folder and file names are untrusted text: they become class names and appear in messages, but no path is
ever built from them for writing (the cache file is named by a hash).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from cnnlab.data.batching import SplitLoaders, check_fraction, stratified_split
from cnnlab.data.fashion_mnist import load_fashion_mnist
from cnnlab.data.imagedecode import ImageFolderError, decode_folder

__all__ = ["FASHION_FOLDERS", "ImageFolderData", "channel_stats", "export_folder"]

# Fashion-MNIST's official class names (Xiao et al. 2017) as folder names: "T-shirt/top" holds a slash, which
# no folder name can, so every character but letters, digits and "-" becomes "_"; the label is put first so
# that the sorted folder names keep Fashion-MNIST's label order (0_T-shirt_top, 1_Trouser, ..., 9_Ankle_boot).
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FASHION_FOLDERS = tuple(f"{i}_" + "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in name)
                        for i, name in enumerate(_FASHION_NAMES))


class ImageFolderData(SplitLoaders):
    """Your own images as a data module with FashionMNIST's API (d2l §4.2's DataModule), for ``Trainer.fit``.

    Layouts (torchvision's ``ImageFolder``, class names = sorted folder names):

    - ``DIR/<class>/<image>``: a stratified ``val_split`` (default 0.1) of the images, chosen by ``seed``, is
      held out for validation (:func:`cnnlab.data.fashion_mnist.stratified_split`); no test split.
    - ``DIR/train/<class>/...`` with ``DIR/val/`` and/or ``DIR/test/`` beside it: those folders are the splits
      (``val/`` and ``test/`` may hold fewer of ``train/``'s class folders, never another: their images keep
      ``train/``'s labels). Without ``DIR/val/``, ``val_split`` holds out part of
      ``train`` if given, else the test split also serves for validation, as d2l does with Fashion-MNIST.

    Files not ending in an image suffix (``README.txt``) and hidden files and folders (``.ipynb_checkpoints``)
    are ignored; subfolders of a class folder belong to that class.

    Args:
        root: the image folder.
        batch_size: images per training batch.
        image_size: ``(h, w)`` or one side: every image is resized to it by Pillow when decoded (aspect ratio not
            kept, as torchvision's ``Resize((h, w))``); None: 28 for grey images, 32 for colour.
        channels: 1 or 3; None: 1 if every image is grey (judged by its mode, see :func:`cnnlab.data.images.is_grey`),
            else 3.
        normalize: standardize each channel with the training images' own ``mean`` and ``std``.
        augment: random crop and flip for the training loader (batched, as for Fashion-MNIST).
        flip: with ``augment``, mirror images too (False: crops only, for classes a mirror image changes).
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
        ImageFolderError: the folder is missing, has no or empty class folders or only one class, a split
            holds a class ``train/`` lacks, it is too large for ``max_bytes``, it holds unreadable files (without
            ``skip_bad``, every one listed), or it has too few images to hold out a validation split.
    """

    def __init__(self, root: str | os.PathLike, batch_size: int = 64, image_size: int | tuple[int, int] | None = None,
                 channels: int | None = None, normalize: bool = False, augment: bool = False, seed: int = 0,
                 val_split: float | None = None, val_batch_size: int | None = None, skip_bad: bool = False,
                 max_bytes: int | None = -1, cache: bool = True, device=None, progress: bool | None = None,
                 log=print, flip: bool = True):
        if val_split is not None:
            check_fraction(val_split)
        self.root = Path(root).expanduser()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.normalize, self.augment, self.flip, self.seed = normalize, augment, flip, seed
        self.val_split, self.skip_bad = val_split, skip_bad
        if val_split is not None and (self.root / "train").is_dir() and (self.root / "val").is_dir():
            raise ImageFolderError(f"{self.root} has a val folder, so val_split={val_split} has nothing to do; "
                                   "drop val_split, or remove the val folder to split the training images")
        decoded = decode_folder(self.root, image_size, channels, max_bytes=max_bytes, cache=cache, progress=progress,
                                log=log)
        self.classes = tuple(decoded.classes)
        self.channels, self.image_size = decoded.channels, decoded.image_size
        self.cache_file = decoded.cache_file
        self.skipped = decoded.bad
        if decoded.bad and not skip_bad:
            listing = "\n".join(f"  {reason}" for _, reason in decoded.bad)
            total = sum(len(labels) for _, labels in decoded.splits.values()) + len(decoded.bad)
            raise ImageFolderError(f"{len(decoded.bad):,} of {total:,} image files in {self.root} cannot be read:\n"
                                   f"{listing}\nfix or remove them, or leave them out: `cnnlab train --skip-bad` "
                                   "(skip_bad=True in Python)")
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
        return (self.channels, *self.image_size)

    @property
    def has_test(self) -> bool:
        return self.test_images is not None

    def settings(self) -> dict:
        """Plain values for a checkpoint: the constructor arguments that shape the batches (``image_size`` and
        ``channels`` as resolved), and what a model trained on them needs at prediction time (``classes``,
        ``mean``, ``std``); :meth:`from_settings` rebuilds the data from them."""
        return {"dataset": "imagefolder", "root": str(self.root), "batch_size": self.batch_size,
                "image_size": self.image_size, "channels": self.channels, "normalize": self.normalize,
                "augment": self.augment, "flip": self.flip, "seed": self.seed, "val_split": self.val_split,
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

    def _check_test(self) -> None:
        if not self.has_test:
            raise ImageFolderError(f"{self.root} has no test split: put the test images in {self.root}/test/<class>/"
                                   f" beside {self.root}/train/<class>/")

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
        root: the Fashion-MNIST files (see :func:`cnnlab.data.fashion_mnist.load_fashion_mnist`); None searches.
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
