"""Using a trained model: load it from a run, read user images safely, classify them.

Images are read with Pillow (a dependency of matplotlib, so nothing new to install), converted to
greyscale and resized to the model's input the way Fashion-MNIST was made: a white-background photo is
inverted so that the garment is bright on black, as in the data set. Image files and checkpoints are
treated as hostile: a size limit is checked before decoding, and every failure is an :class:`ImageError`
or a :class:`~cnnlab.training.checkpoint.CheckpointError` with one clear sentence. The checked reader itself lives in
:mod:`cnnlab.data.images` (training on image folders uses it too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.images import open_image
from cnnlab.errors import ConfigError
from cnnlab.nn.classifier import device_of
from cnnlab.nn.ops import size_pair
from cnnlab.training.checkpoint import (
    MAX_INPUT_SIDE,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
)
from cnnlab.training.evaluation import evaluate
from cnnlab.training.runtime import eval_batch_size

__all__ = ["LoadedModel", "check_test_index", "evaluate_checkpoint", "evaluate_loaded", "load_trained", "load_image",
           "top_k"]

@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with the input settings it was trained with.

    ``data`` is the checkpoint's ``data_settings``: the data module's own description of its batches (size,
    normalization, and for an image folder its classes, channels, mean and std).
    """

    model: torch.nn.Module
    image_size: tuple[int, int]
    normalize: bool
    checkpoint: Path
    state: dict

    @property
    def data(self) -> dict:
        settings = self.state.get("data_settings")
        return settings if isinstance(settings, dict) else {}

    @property
    def run_config(self) -> dict:
        """The settings of the run that saved the checkpoint (empty for a file without them)."""
        config = self.state.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def is_image_folder(self) -> bool:
        return self.data.get("dataset") == "imagefolder"

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names the model was trained with (an image folder's, or Fashion-MNIST's)."""
        from cnnlab.data.fashion_mnist import CLASS_NAMES

        names = self.data.get("classes")
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            return tuple(names)
        return CLASS_NAMES

    @property
    def channels(self) -> int:
        return int(self.data.get("channels", 1))

    def normalization(self):
        """``(mean, std)`` the batches were standardized with, or None; as the data module's loaders use it."""
        if not self.normalize:
            return None
        if self.is_image_folder:
            return tuple(self.data["mean"]), tuple(self.data["std"])
        from cnnlab.data.fashion_mnist import MEAN, STD

        return MEAN, STD

    def test_data(self, data_dir: str | os.PathLike | None = None, batch_size: int | None = None):
        """The data module of the test split, with the input settings the model trained with.

        Args:
            data_dir: the Fashion-MNIST folder; default the run's own ``--data-dir``, then the usual places.
                For an image-folder run, its folder (the training run's by default).
            batch_size: images per batch; default what evaluation batches on the model's device
                (:func:`~cnnlab.training.runtime.eval_batch_size`).
        """
        config = self.run_config
        batch_size = batch_size or eval_batch_size(device_of(self.model))
        if self.is_image_folder:
            from cnnlab.data.imagefolder import ImageFolderData

            overrides = {"root": data_dir} if data_dir is not None else {}
            return ImageFolderData.from_settings(self.data, batch_size=batch_size, val_batch_size=batch_size,
                                                 log=None, progress=False, **overrides)
        from cnnlab.data.fashion_mnist import FashionMNIST

        root = data_dir if data_dir is not None else config.get("data_dir")
        return FashionMNIST(batch_size=batch_size, resize=self.image_size, root=root, normalize=self.normalize)

    def test_loader(self, data_dir: str | os.PathLike | None = None, batch_size: int | None = None):
        """The test split's loader (an image folder without ``test/``: its validation split), batched as
        :meth:`test_data`."""
        batch_size = batch_size or eval_batch_size(device_of(self.model))
        folder_test = self._folder_test_split(data_dir)
        if folder_test is not None:
            from cnnlab.data.batching import BatchLoader

            return BatchLoader(*folder_test, batch_size, image_size=self.image_size, normalize=self.normalization())
        data = self.test_data(data_dir, batch_size)
        return data.test_dataloader() if getattr(data, "has_test", True) else data.val_dataloader()

    def test_split(self, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images (uint8) and labels, as :meth:`test_loader` batches them."""
        folder_test = self._folder_test_split(data_dir)
        if folder_test is not None:
            return folder_test
        data = self.test_data(data_dir)
        if getattr(data, "has_test", True):
            return data.test_images, data.test_labels
        return data.val_images, data.val_labels

    def _folder_test_split(self, data_dir) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An image-folder run's ``test/`` images, decoded alone (a damaged training image cannot block them);
        None for Fashion-MNIST or a folder without ``test/``, whose held-out images need the whole folder."""
        root = Path(data_dir if data_dir is not None else self.data.get("root", "")).expanduser()
        if not self.is_image_folder or not (root / "train").is_dir() or not (root / "test").is_dir():
            return None
        from cnnlab.data.imagedecode import ImageFolderError, decode_folder

        # Labelled by the model's classes: a test/ may hold fewer of them, never one the model was not trained on.
        decoded = decode_folder(root, self.image_size, self.channels, only="test", progress=False, log=None,
                                classes=list(self.class_names))
        if decoded.bad and not self.data.get("skip_bad"):
            raise ImageFolderError(f"{len(decoded.bad):,} test images of {root} cannot be read, the first: "
                                   f"{decoded.bad[0][1]}; fix or remove them")
        return decoded.splits["test"]

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` or ``(N, C, H, W)`` uint8 -> the model's float input, by the training batches' own path.

        The images go through :class:`~cnnlab.data.batching.BatchLoader` with the run's size and normalization, so
        ``predict`` feeds a model exactly what ``evaluate`` and training fed it.
        """
        from cnnlab.data.batching import BatchLoader

        labels = torch.zeros(len(images_uint8), dtype=torch.int64, device=images_uint8.device)
        loader = BatchLoader(images_uint8, labels, batch_size=max(1, len(images_uint8)), image_size=self.image_size,
                             normalize=self.normalization())
        return next(iter(loader))[0]

    def read_image(self, path: str | os.PathLike) -> torch.Tensor:
        """An image file as the model's uint8 input: Fashion-MNIST style for a Fashion-MNIST model
        (:func:`load_image`), else decoded as the image-folder run decoded its training images."""
        if self.is_image_folder:
            from cnnlab.data.images import decode_image

            return decode_image(path, self.channels, self.image_size)
        return load_image(path)


def check_test_index(index: int, count: int) -> int:
    """Return ``index`` if the test split of ``count`` images has it (predict, viz features, the report).

    Raises:
        ConfigError: it does not; the message gives the valid range.
    """
    if not 0 <= index < count:
        raise ConfigError(f"test index {index} is out of range: the test set has {count:,} images "
                          f"(0..{count - 1:,}); give --test-index a number in that range")
    return index


def load_trained(run_or_ckpt: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a run folder (its best.pt, else last.pt), of a checkpoint file or of a ``.safetensors``
    file written by ``cnnlab export --format safetensors`` (read by
    :func:`~cnnlab.inference.safetensors_io.read_safetensors`: checked, never unpickled)."""
    from cnnlab.inference.safetensors_io import is_safetensors, read_safetensors

    path = resolve_checkpoint(run_or_ckpt)
    state = read_safetensors(path) if is_safetensors(path) else load_checkpoint(path)
    model = model_from_checkpoint(state).to(device).eval()
    data = state.get("data_settings") or {}
    image_size = data.get("image_size") or (state.get("model_kwargs") or {}).get("image_size") or 28
    try:
        size = size_pair(image_size)
    except ValueError:
        size = (0, 0)
    # Every input is interpolated to this size: a crafted checkpoint must not make that a huge allocation.
    if max(size) > MAX_INPUT_SIDE or min(size) < 1:
        raise CheckpointError(f"checkpoint {path} asks for input images of size {image_size!r}; a cnnlab model "
                              f"takes 1 to {MAX_INPUT_SIDE} pixels a side, so the file is corrupt or not cnnlab's")
    return LoadedModel(model=model, image_size=size, normalize=bool(data.get("normalize", False)),
                       checkpoint=path, state=state)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a 28x28 uint8 image in Fashion-MNIST's style: a light garment on black.

    Any mode Pillow opens is accepted: 1-bit, greyscale (8, 16 or 32 bits, float), palette, RGB, CMYK,
    and alpha (RGBA, LA, palette or ``tRNS`` transparency). The steps follow the data set's own conversion
    (Xiao et al. 2017, "Fashion-MNIST"): greyscale, a light background inverted to black, padded to a centred
    square, resized to 28x28. EXIF orientation is applied first, so phone photos stand upright. The reading
    and its checks are :func:`cnnlab.data.images.open_image`'s.

    Raises:
        ImageError: missing, empty, not an image, truncated or corrupt, or larger than ``MAX_PIXELS``
            (checked from the header, before any pixel is decoded).
    """
    # formats=None: predict has always opened every format Pillow knows; the image-folder reader is stricter.
    return _fashion_style(open_image(path, channels=1, formats=None))


def _fashion_style(grey) -> torch.Tensor:
    """'L' image of any size -> (28, 28) uint8, light on dark, centred in a square as Fashion-MNIST's were."""
    import numpy as np
    from PIL import Image, ImageOps

    arr = np.asarray(grey)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    if float(border.mean()) > 127:  # photos are usually dark-on-light; the data set is light-on-dark
        grey = ImageOps.invert(grey)
    # Longest side to 28, then centred on a black 28x28 canvas: a 4:3 photo is not squashed, and a
    # 40,000,000x1 strip costs a 28x1 image, not a square 40,000,000 pixels wide.
    width, height = grey.size
    scale = 28 / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = grey.resize(size, Image.Resampling.BILINEAR)  # Pillow's resize filters over the whole support
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(small, ((28 - size[0]) // 2, (28 - size[1]) // 2))
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).reshape(28, 28)

@torch.inference_mode()
def top_k(loaded: LoadedModel, images_uint8: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and class indices of the ``k`` likeliest classes for each (H, W) uint8 image."""
    device = device_of(loaded.model)
    logits = loaded.model(loaded.preprocess(images_uint8).to(device))
    probs = torch.softmax(logits.float(), dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)


def evaluate_checkpoint(run_or_ckpt: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu"):
    """Rebuild a run's model (its ``best.pt``, else ``last.pt``, or the file given) and evaluate it on the test set.

    Returns:
        ``(loaded, result)``: the :class:`LoadedModel` and its :class:`~cnnlab.training.evaluation.EvalResult`.
    """
    loaded = load_trained(run_or_ckpt, device)
    return loaded, evaluate_loaded(loaded, data_dir, device)


def evaluate_loaded(loaded: LoadedModel, data_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu"):
    """The test pass of a loaded model (fp32), its weights laid out as its run trained them: channels_last where
    the run's config says so, on a CPU or GPU. On a CPU that halves the pass: FastNet on the 10,000 test images
    with one thread (Intel Xeon, the other core busy) took 12.6 s against 24.1 s contiguous. Batches are of
    :func:`~cnnlab.training.runtime.eval_batch_size` images: 128 on a CPU, 1,024 on a GPU."""
    device = torch.device(device)
    if loaded.run_config.get("channels_last") and device.type in ("cpu", "cuda"):
        loaded.model.to(memory_format=torch.channels_last)
    return evaluate(loaded.model, loaded.test_loader(data_dir, eval_batch_size(device)), device)
