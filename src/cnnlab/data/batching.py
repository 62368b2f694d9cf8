"""Mini-batches from images held in memory: :class:`BatchLoader`, and the seeded, stratified split.

A batch is built by whole-batch tensor ops on the images' device (index, crop and flip, scale and normalize,
resize by two matmuls): no per-image Python and no worker processes, the airbench way. The same path prepares
the images of training, evaluation and ``cnnlab predict`` (:meth:`cnnlab.inference.loaded.LoadedModel.preprocess`),
so a model always sees its inputs made the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

__all__ = ["CROP_PADDING", "BatchLoader", "SplitLoaders", "check_fraction", "move_splits", "stratified_split"]

CROP_PADDING = 2  # random crops: an image moves by up to this many pixels each way (zeros fill the gap)
_CHUNK_ELEMENTS = 1 << 20  # output floats built at once (4 MB, cache-sized): 10 batches of 128 at 28x28


class BatchLoader:
    """Mini-batches from images held in memory, each built by whole-batch tensor ops on the images' device.

    Replaces ``DataLoader(Dataset)``: no per-image Python, no workers. The order of pass ``e`` is
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))``, so a resumed run
    that calls ``set_epoch(e)`` sees exactly the batches it would have seen. Augmentation draws from the same
    generator, one crop offset and flip per position of that permutation, so it too depends only on
    ``(seed, epoch)``, not on the batch size or the number of ranks. If ``set_epoch`` is never called, each
    pass uses the next epoch (0, 1, 2, ...). Batches are views into a block of a few batches built at once
    (about 4 MB), so a batch kept for long keeps its block alive.

    Args:
        images: ``uint8`` images, shape ``(N, H, W)`` (grey, as Fashion-MNIST) or ``(N, C, H, W)``.
        labels: ``int64`` labels, shape ``(N,)``, on the same device.
        batch_size: images per batch (the global batch when sharded, see :meth:`shard`).
        shuffle: a new seeded permutation each pass; else the stored order.
        augment: random crop (2-pixel zero padding) and random horizontal flip, the same for every channel
            of an image.
        flip: with ``augment``, also the random horizontal flip (False: crops only, for classes that a mirror
            image would change; the draws stay the same, so the crops do not change).
        cutout: with ``augment``, also Cutout (DeVries & Taylor 2017): a square of this fraction of the output
            side, at a random centre (clipped at the border), set to 0: the mean when normalized. 0: none.
            Drawn after the crops and flips, so those do not change with it.
        image_size: output ``(H, W)``; when it differs, resized as ``F.interpolate(mode="bilinear",
            antialias=True, align_corners=False)`` would, computed as two matmuls (each channel alike).
        normalize: ``(mean, std)`` to standardize with, each a number or a sequence of one value per channel,
            or None to keep values in [0, 1].
        seed: seed of the permutations and augmentations.
        drop_last: leave out the last, smaller batch.

    Shape:
        Yields ``X`` float32 ``(B, C, *image_size)`` (``C = 1`` for ``(N, H, W)`` images) and ``y`` int64 ``(B,)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, image_size: tuple[int, int] | None = None,
                 normalize: tuple[float, float] | tuple[Sequence[float], Sequence[float]] | None = None,
                 seed: int = 0, drop_last: bool = False, flip: bool = True, cutout: float = 0.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= cutout < 1:
            raise ValueError(f"cutout is a fraction of the image side in [0, 1), got {cutout}")
        if images.dtype != torch.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, C, H, W) with one label each, got "
                             f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.flip = batch_size, shuffle, augment, flip
        self.cutout = cutout
        self.image_size = tuple(image_size) if image_size is not None else tuple(images.shape[-2:])
        self.normalize, self.seed, self.drop_last = normalize, seed, drop_last
        self._mean_std = _mean_std(normalize, 1 if images.ndim == 3 else images.shape[1])
        self.rank, self.world_size = 0, 1
        self._next_epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next pass will use."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (later passes count on from it), like DistributedSampler."""
        self._next_epoch = int(epoch)

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """A loader for one of ``world_size`` ranks: a disjoint, equal share of every pass's permutation.

        Rank ``r`` takes positions ``r, r + world_size, ...`` of the permutation, after dropping the
        ``n % world_size`` last ones so every rank runs the same number of steps. Its batch size is
        ``batch_size // world_size``, so at each step the ranks' batches together form exactly the global
        batch the unsharded loader would yield.

        Args:
            rank: this process's rank, ``0 <= rank < world_size``.
            world_size: the number of ranks; must divide ``batch_size``.

        Returns:
            This loader, now sharded (so both ``loader.shard(r, w)`` and ``loader = loader.shard(r, w)`` work).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over {world_size} ranks; "
                             "choose a multiple of the world size")
        self.rank, self.world_size = rank, world_size
        return self

    @property
    def per_rank_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _num_samples(self) -> int:
        return len(self.labels) // self.world_size

    def __len__(self) -> int:
        n, b = self._num_samples(), self.per_rank_batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        epoch = self._next_epoch
        self._next_epoch += 1
        n, device = len(self.labels), self.images.device
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        shifts = flips = centres = None
        if self.augment:  # drawn after the permutation, so the permutation matches the documented formula
            shifts = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
            flips = (torch.rand(n, generator=generator) < 0.5) & self.flip
            if self.cutout:  # drawn last, and only when asked: a run without cutout keeps its crops and flips
                centres = torch.rand(n, 2, generator=generator)
        mine = slice(self.rank, self._num_samples() * self.world_size, self.world_size)
        order = order[mine].to(device)
        if self.augment:
            shifts, flips = shifts[mine].to(device), flips[mine].to(device)
            centres = centres[mine].to(device) if centres is not None else None
        return self._batches(order, shifts, flips, centres)

    def _batches(self, order, shifts, flips, centres=None):
        b, (h, w) = self.per_rank_batch_size, self.images.shape[-2:]
        grey = self.images.ndim == 3  # (N, H, W): Fashion-MNIST's path, kept exactly as it always was
        c = 1 if grey else self.images.shape[1]
        resize = None
        if self.image_size != (h, w):  # (Wh, Ww.T), made here so they live on the images' current device
            resize = (_resize_matrix(h, self.image_size[0]).to(self.images.device),
                      _resize_matrix(w, self.image_size[1]).T.to(self.images.device))
        # Scale (and standardize) the small input before resizing: resizing is linear with weights summing
        # to 1, so the result is the same, and the cost is per input pixel rather than per output pixel.
        # Times 1/255 rather than / 255 (as ToTensor): 2x faster, within a float32 ulp, and 255 -> exactly 1.
        scale, shift = 1 / 255, 0.0
        if self._mean_std is not None:
            mean, std = self._mean_std
            if isinstance(mean, float):
                scale, shift = 1 / (255 * std), mean / std
            else:  # one value per channel, (C, 1, 1) so it broadcasts over (M, C, H, W)
                scale = torch.tensor([1 / (255 * s) for s in std]).view(c, 1, 1).to(self.images.device)
                shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(c, 1, 1)
                shift = shift.to(self.images.device)
        # Several batches are built by each op and then split into views: fewer, larger ops cost less Python
        # and fewer thread-pool wake-ups (which on a busy machine each wait for a scheduler slice), while
        # a chunk small enough to stay in cache keeps the conversion fast.
        step = b * max(1, _CHUNK_ELEMENTS // (b * c * self.image_size[0] * self.image_size[1]))
        stop = len(self) * b
        for lo in range(0, stop, step):
            hi = min(lo + step, stop)
            idx = order[lo:hi]
            x = self.images.index_select(0, idx)  # (M, H, W) or (M, C, H, W) uint8; index_select beats x[idx]
            if grey:
                if shifts is not None:
                    x = _crop_flip(x, shifts[lo:hi], flips[lo:hi])
                x = x.unsqueeze(1)  # (M, 1, H, W)
            elif shifts is not None:  # every channel of an image gets that image's crop and flip
                m = len(idx)
                x = _crop_flip(x.reshape(m * c, h, w), shifts[lo:hi].repeat_interleave(c, 0),
                               flips[lo:hi].repeat_interleave(c)).view(m, c, h, w)
            x = x.to(torch.float32).mul_(scale)  # (M, C, H, W)
            if not isinstance(shift, float) or shift:
                x = x.sub_(shift)
            if resize is not None:
                x = resize[0] @ (x @ resize[1])  # (M, C, H, W) -> (M, C, *image_size)
            if centres is not None:
                x = _cutout(x, centres[lo:hi], self.cutout)
            y = self.labels.index_select(0, idx)
            for start in range(0, hi - lo, b):
                yield x[start:start + b], y[start:start + b]


def _mean_std(normalize, channels: int) -> tuple | None:
    """``normalize`` checked: None, ``(mean, std)`` floats, or ``(means, stds)`` tuples of ``channels`` floats.

    A sequence of one value is taken as that number, so ``((m,), (s,))`` gives exactly ``(m, s)``'s batches.
    """
    if normalize is None:
        return None
    try:
        mean, std = normalize
        means, stds = _floats(mean), _floats(std)
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be (mean, std), each a number or one number per channel, "
                         f"got {normalize!r}") from None
    if len(means) == len(stds) == 1:
        means, stds = means * channels, stds * channels
    if not len(means) == len(stds) == channels:
        raise ValueError(f"normalize gives {len(means)} means and {len(stds)} standard deviations for images of "
                         f"{channels} channel(s); give one of each per channel, or one number for all")
    if not all(s > 0 and math.isfinite(s) for s in stds) or not all(math.isfinite(m) for m in means):
        raise ValueError(f"normalize needs finite means and positive standard deviations, got {normalize!r}")
    if len(set(means)) == len(set(stds)) == 1:
        return means[0], stds[0]  # one number for every channel: the scalar ops, as Fashion-MNIST always had
    return tuple(means), tuple(stds)


def _floats(value) -> list[float]:
    """A number, or a sequence (list, tuple, array, tensor) of numbers, as a list of floats."""
    if isinstance(value, numbers.Real) or (isinstance(value, torch.Tensor) and value.ndim == 0):
        return [float(value)]
    return [float(v) for v in value]


def _resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``
    along one axis, read off by resizing the identity.

    Bilinear resampling (antialiased or not) is separable, so ``Wh @ X @ Ww.T`` equals ``F.interpolate`` on
    ``X`` to float rounding; as two matmuls it runs 3x (96x96) to 8x (32x40) faster on a CPU.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]  # (1, 1, n_in, n_in): resize rows only
    rows = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", antialias=True, align_corners=False)
    return rows[0, 0].to(torch.float32)


def _crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop from a zero-padded copy and random horizontal flip, for a whole batch at once.

    Shape:
        ``x`` (B, H, W), ``shifts`` (B, 2) offsets in ``[0, 2 * CROP_PADDING]``, ``flips`` (B,) bool -> (B, H, W).
    """
    b, h, w = x.shape
    pad = CROP_PADDING
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, H + 4, W + 4), zeros are the background
    rows = shifts[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = shifts[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W)
    return torch.where(flips[:, None, None], out.flip(-1), out)


def _cutout(x: torch.Tensor, centres: torch.Tensor, fraction: float) -> torch.Tensor:
    """Cutout for a whole batch: in each image a square of ``fraction`` of the side around ``centres`` (in [0, 1)
    of the height and width), clipped at the border, set to 0 in every channel.

    Shape:
        ``x`` (M, C, H, W), ``centres`` (M, 2) -> (M, C, H, W), in place.
    """
    h, w = x.shape[-2:]
    side_h, side_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    top = (centres[:, 0] * h).long() - side_h // 2
    left = (centres[:, 1] * w).long() - side_w // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top.view(-1, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left.view(-1, 1, 1)
    erased = (rows >= 0) & (rows < side_h) & (cols >= 0) & (cols < side_w)  # (M, H, W)
    return x.masked_fill_(erased.unsqueeze(1), 0.0)


def check_fraction(fraction: float) -> None:
    """Raise a ConfigError unless ``fraction`` is a number strictly between 0 and 1 (a validation share)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise ConfigError(f"the validation split must be a fraction strictly between 0 and 1, such as 0.1 "
                         f"for 10%, got {fraction!r}")


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split examples into training and validation indices, each class in the same proportion (seeded).

    Class ``k`` with ``n_k`` examples gives ``round(fraction * n_k)`` of them to validation (halves rounded
    up), at least one when ``n_k >= 2`` and never all of them, so every class keeps a training example; a
    class of one example stays in training. Which examples go is a seeded permutation per class, drawn
    class by class in label order from ``torch.Generator().manual_seed(seed)``: the same labels and seed
    give the same split on every machine.

    Args:
        labels: class indices (a tensor or sequence of ints), shape ``(N,)``.
        fraction: the share of each class held out for validation, strictly between 0 and 1.
        seed: seed of the choice.

    Returns:
        ``(train_idx, val_idx)``: sorted ``int64`` index tensors, disjoint, together ``0 .. N-1``.
    """
    check_fraction(fraction)
    labels = torch.as_tensor(labels).cpu()
    if labels.ndim != 1 or (labels.numel() and (labels.is_floating_point() or int(labels.min()) < 0)):
        raise ValueError(f"labels must be non-negative class indices of shape (N,), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    val = []
    for k in labels.unique(sorted=True).tolist():
        members = (labels == k).nonzero().flatten()  # ascending, so the permutation acts on a fixed order
        n = len(members)
        take = min(max(math.floor(fraction * n + 0.5), 1), n - 1) if n >= 2 else 0
        val.append(members[torch.randperm(n, generator=generator)[:take]])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    if val:
        is_val[torch.cat(val)] = True
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


class SplitLoaders:
    """The loaders of a data module whose splits are uint8 tensors in memory (FashionMNIST, ImageFolderData).

    The class using it sets ``train_``/``val_``/``test_images`` and ``_labels`` (``test_images`` may be None),
    ``batch_size``, ``val_batch_size``, ``image_size``, ``augment`` and ``seed``, and overrides
    :meth:`_normalization`; :meth:`_check_test` may refuse a missing test split.
    """

    flip = True  # with ``augment``, mirror images too; a data module whose classes a mirror changes sets False
    cutout = 0.0  # with ``augment``, Cutout of this fraction of the side (BatchLoader's ``cutout``)

    def _normalization(self):
        """``(mean, std)`` for :class:`BatchLoader`'s ``normalize``, or None."""
        return None

    def _check_test(self) -> None:
        """Raise a clear error when there is no test split."""

    def _loader(self, images: torch.Tensor, labels: torch.Tensor, train: bool = False) -> BatchLoader:
        batch_size = self.batch_size if train else self.val_batch_size or self.batch_size
        return BatchLoader(images, labels, batch_size, shuffle=train, augment=train and self.augment,
                           image_size=self.image_size, normalize=self._normalization(), seed=self.seed, flip=self.flip,
                           cutout=self.cutout)

    def get_dataloader(self, train: bool) -> BatchLoader:
        """The shuffled, optionally augmented training loader, or the in-order validation loader (d2l §4.2)."""
        if train:
            return self._loader(self.train_images, self.train_labels, train=True)
        return self._loader(self.val_images, self.val_labels)

    def train_dataloader(self) -> BatchLoader:
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> BatchLoader:
        return self.get_dataloader(train=False)

    def test_dataloader(self) -> BatchLoader:
        """The test images in order, at the validation batch size."""
        self._check_test()
        return self._loader(self.test_images, self.test_labels)

    def to(self, device):
        """Move the uint8 images and labels to ``device`` once; loaders made afterwards batch there."""
        move_splits(self, device)
        return self


def move_splits(data, device) -> None:
    """Move a data module's ``train_``/``val_``/``test_images`` and ``_labels`` to ``device`` (once).

    When validation is the test split (the same tensors), the device holds one copy, not two. A split that
    is None (an image folder without ``test/``) stays None.
    """
    val_is_test = data.val_images is getattr(data, "test_images", None)
    for split in ("train", "test", "val"):
        images = getattr(data, f"{split}_images", None)
        if images is None:
            continue
        if split == "val" and val_is_test:
            data.val_images, data.val_labels = data.test_images, data.test_labels
            continue
        setattr(data, f"{split}_images", images.to(device))
        setattr(data, f"{split}_labels", getattr(data, f"{split}_labels").to(device))
