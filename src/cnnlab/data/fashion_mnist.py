"""Fashion-MNIST: checked loading and fast in-memory batching (d2l §4.2, the ``FashionMNIST`` DataModule).

The whole split is decoded once and kept as ``uint8``; every batch is built with a few tensor ops on the
data's device (index, convert, augment, resize), the way the speed-run CIFAR-10 trainers do, instead of a
per-image ``Dataset`` behind a ``DataLoader``. Reading, finding, verifying and downloading the files lives in
:mod:`cnnlab.data.files`, :mod:`cnnlab.data.idx` and :mod:`cnnlab.data.download`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.batching import SplitLoaders, check_fraction, stratified_split
from cnnlab.data.files import (
    FILE_MD5,
    FILE_NAMES,
    data_file,
    download_hint,
    find_data_dir,
    is_verified,
    remember_verified,
)
from cnnlab.data.idx import read_idx
from cnnlab.errors import ConfigError, DataError
from cnnlab.nn.ops import size_pair

__all__ = [
    "CLASS_NAMES",
    "MEAN",
    "STD",
    "FashionMNIST",
    "describe",
    "load_fashion_mnist",
    "text_labels",
]

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
MEAN, STD = 0.2860, 0.3530  # of the 60,000 training pixels scaled to [0, 1]


@dataclass
class _Decoded:
    size: int
    mtime_ns: int
    tensor: torch.Tensor
    verified: bool


# Decoded files by resolved path, so several FashionMNIST objects in one process decode each split once.
_DECODED: dict[str, _Decoded] = {}


def load_fashion_mnist(root: str | os.PathLike | None = None, train: bool = True,
                       verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one Fashion-MNIST split, checked, from the directory :func:`find_data_dir` finds.

    Args:
        root: the folder that must hold the files (obeyed: see :func:`find_data_dir`); None searches.
        train: the 60,000 training images if True, else the 10,000 test images.
        verify: check the MD5 of each officially named file on first use; success is remembered in
            ``<cache_dir()>/verified.json`` (keyed by path, size and mtime) so later loads skip hashing.

    Returns:
        ``(images, labels)``: ``uint8`` of shape ``(N, 28, 28)`` and ``int64`` of shape ``(N,)``. The image
        tensor is shared between callers: do not modify it in place.

    Raises:
        DataError: a file is missing, corrupt, fails its checksum, or images and labels disagree.
    """
    data_dir = find_data_dir(root)
    try:
        return _load_split(data_dir, train, verify)
    except DataError as exc:
        # Every way a file can fail ends with the one remedy that always works: a fresh, verified copy.
        raise DataError(f"{exc}; {download_hint(data_dir)}") from None


def _load_split(data_dir: Path, train: bool, verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    images_path = data_file(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = data_file(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = _load_checked(images_path, verify)
    labels = _load_checked(labels_path, verify)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds an array of shape {tuple(images.shape)}, not (N, 28, 28) "
                        "images; replace it with the original file")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds an array of shape {tuple(labels.shape)}, not (N,) labels; "
                        "replace it with the original file")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} "
                        "labels; the two files come from different sets, replace them with the original pair")
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{labels_path} holds label {int(labels.max())}, but Fashion-MNIST labels are 0-9; "
                        "replace it with the original file")
    return images, labels.long()


def text_labels(indices) -> list[str]:
    """Class names for label indices, a sequence or a tensor (d2l §4.2)."""
    return [CLASS_NAMES[int(i)] for i in indices]


def describe(root: str | os.PathLike | None = None) -> str:
    """A few lines on where the data is and what it holds (``cnnlab data info``); loads and verifies it.

    Raises:
        DataError: as :func:`load_fashion_mnist`.
    """
    data_dir = find_data_dir(root)
    lines = [f"Fashion-MNIST in {data_dir}"]
    for name in FILE_NAMES:
        path = data_file(data_dir, name)
        lines.append(f"  {path.name:<28} {path.stat().st_size:>12,} bytes")
    for split, train in (("train", True), ("test", False)):
        images, labels = load_fashion_mnist(data_dir, train=train)
        counts = labels.bincount(minlength=len(CLASS_NAMES))
        lines.append(f"  {split:<5} {len(labels):>6,} images of {images.shape[1]}x{images.shape[2]}, "
                     f"{int(counts.min()):,} to {int(counts.max()):,} per class, checksums verified")
    return "\n".join(lines)


def _load_checked(path: Path, verify: bool) -> torch.Tensor:
    """Decode ``path`` (or reuse this process's copy); verify it against the official MD5 if it has one."""
    try:
        st = path.stat()
        key = str(path.resolve())
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e}); replace it or download the data again") from None
    entry = _DECODED.get(key)
    if entry is None or (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns):
        entry = _Decoded(st.st_size, st.st_mtime_ns, read_idx(path), verified=False)
    expected = FILE_MD5.get(path.name.removesuffix(".gz"))
    if verify and expected and not entry.verified:
        if not is_verified(path, expected):
            got = _md5(entry.tensor)
            if got != expected:
                raise DataError(
                    f"{path} has MD5 {got} (of its decompressed data), expected {expected}; it is corrupt or "
                    "modified (pass verify=False for a deliberately modified copy)"
                )
            remember_verified(path, expected)
        entry.verified = True
    _DECODED[key] = entry  # only once it passed: a failed file is decoded afresh next time
    return entry.tensor


def _md5(tensor: torch.Tensor) -> str:
    """MD5 of the IDX file that holds ``tensor``: the header is rebuilt, the data hashed where it lies."""
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    h = hashlib.md5(header)
    if tensor.numel():
        h.update(tensor.contiguous().numpy())
    return h.hexdigest()


class FashionMNIST(SplitLoaders):
    """Fashion-MNIST held in memory, with d2l's DataModule API (d2l §4.2): ``get_dataloader(train)``.

    Args:
        batch_size: images per training batch.
        resize: the image size the model sees, an int or ``(h, w)``; 28 keeps the original images. d2l's name
            for it, kept for the book's code; stored as :attr:`image_size`, cnnlab's name everywhere else.
        root: the folder that holds the files, obeyed if given (see :func:`find_data_dir`); None searches
            ``$CNNLAB_DATA``, the cache and Debian's package.
        normalize: standardize with the training set's ``MEAN`` and ``STD`` instead of keeping [0, 1].
        augment: random crop and flip for the training loader.
        seed: seed of the training order and augmentation.
        num_train: keep only the first ``num_train`` training images (small real slices for tests).
        num_val: keep only the first ``num_val`` test images.
        val_batch_size: images per validation (and test) batch; default ``batch_size``.
        device: move the images there once, see :meth:`to`.
        verify: check the files' MD5s (see :func:`load_fashion_mnist`).
        val_split: None validates on the test images, as d2l does. A fraction (e.g. 0.1) instead holds out
            that share of the (first ``num_train``) training images, stratified by class and chosen by
            ``seed`` (:func:`stratified_split`), for validation; the test images stay untouched for
            :meth:`test_dataloader`, the one honest score at the end.
    """

    num_classes = len(CLASS_NAMES)
    classes = CLASS_NAMES

    def __init__(self, batch_size: int = 64, resize: int | tuple[int, int] = (28, 28), root=None,
                 normalize: bool = False, augment: bool = False, seed: int = 0, num_train: int | None = None,
                 num_val: int | None = None, val_batch_size: int | None = None, device=None,
                 verify: bool = True, val_split: float | None = None):
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        try:
            self.image_size = size_pair(resize, "resize")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if val_split is not None:
            check_fraction(val_split)  # before the files are read: a typo costs nothing
        self.normalize, self.augment, self.seed = normalize, augment, seed
        self.num_train, self.num_val, self.val_split = num_train, num_val, val_split
        images, labels = load_fashion_mnist(root, train=True, verify=verify)
        train_images, train_labels = _first(images, labels, num_train, "num_train")
        images, labels = load_fashion_mnist(root, train=False, verify=verify)
        self.test_images, self.test_labels = _first(images, labels, num_val, "num_val")
        if val_split is None:
            self.train_images, self.train_labels = train_images, train_labels
            self.val_images, self.val_labels = self.test_images, self.test_labels
        else:
            train_idx, val_idx = stratified_split(train_labels, val_split, seed)
            self.train_images, self.train_labels = train_images[train_idx], train_labels[train_idx]
            self.val_images, self.val_labels = train_images[val_idx], train_labels[val_idx]
        if device is not None:
            self.to(device)

    @property
    def resize(self) -> tuple[int, int]:
        """d2l's attribute for :attr:`image_size` (its ``save_hyperparameters`` stores the argument): book code
        that reads ``data.resize`` keeps working. Read-only: one name is stored."""
        return self.image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image in a batch: ``(1, H, W)``."""
        return (1, *self.image_size)

    def settings(self) -> dict:
        """What shapes the batches (the constructor's arguments, ``resize`` as ``image_size``), as plain values a
        checkpoint can store; :meth:`from_settings` rebuilds the data from them."""
        return {"batch_size": self.batch_size, "image_size": self.image_size, "normalize": self.normalize,
                "augment": self.augment, "seed": self.seed, "num_train": self.num_train,
                "num_val": self.num_val, "val_batch_size": self.val_batch_size, "val_split": self.val_split}

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> FashionMNIST:
        """Rebuild from :meth:`settings` (``overrides`` win); ``image_size`` goes to the book's ``resize``."""
        args = {**settings, **overrides}
        return cls(resize=args.pop("image_size", (28, 28)), **args)

    def _normalization(self):
        return (MEAN, STD) if self.normalize else None

    def text_labels(self, indices) -> list[str]:
        """Class names for label indices (d2l §4.2)."""
        return text_labels(indices)

    def visualize(self, batch, nrows: int = 1, ncols: int = 8, labels=None, path=None):
        """Show the first images of a batch with their class names (d2l §4.2); returns the figure."""
        from cnnlab.visual.plotting import show_images  # matplotlib only when asked for

        X, y = batch
        if self.normalize:
            X = X * STD + MEAN
        titles = labels if labels else self.text_labels(y[: nrows * ncols])
        return show_images(X[: nrows * ncols].squeeze(1).cpu(), nrows, ncols, titles=titles, path=path)

    def __repr__(self) -> str:
        return (f"FashionMNIST(batch_size={self.batch_size}, image_size={self.image_size}, "
                f"train={len(self.train_labels)}, val={len(self.val_labels)}, test={len(self.test_labels)}, "
                f"device={self.train_images.device})")


def _first(images: torch.Tensor, labels: torch.Tensor, n: int | None, name: str):
    """The first ``n`` examples (all when None); a view, so no copy of the shared decoded split."""
    if n is None:
        return images, labels
    if not 1 <= n <= len(labels):
        raise ConfigError(f"{name} must be between 1 and {len(labels)}, got {n}")
    return images[:n], labels[:n]
