"""ONNX export of a trained classifier, checked against PyTorch before the file is written.

:func:`export_onnx` writes one self-contained ``.onnx`` file (weights inside, fp32, a dynamic batch axis;
input ``images`` of shape ``(N, C, H, W)``, output ``logits`` of shape ``(N, num_classes)``) that any ONNX
runtime can use without torch or cnnlab. What a user needs to feed it is stored in the model's
``metadata_props`` (all values are strings; JSON where marked):

==================  ==========================================================================================
``model_name``      the registry name (``lenet``, ``resnet18``...)
``class_names``     JSON list of strings, the name of each logit in order
``input_size``      JSON ``[H, W]``
``channels``        ``"1"`` or ``"3"``...: the image channels ``C``
``mean``, ``std``   JSON lists, one float per channel: the input is ``(pixel / 255 - mean) / std``
``preprocessing``   the same in words, for a human reading the file (e.g. in Netron)
``cnnlab_version``  the cnnlab that wrote the file
==================  ==========================================================================================

Class names come from data (possibly folder names): they are untrusted text, stored only as JSON data and never
used to build a path. ``examples/onnx_predict.py`` shows the whole contract: it classifies an image with
onnxruntime, numpy and Pillow alone.

The exporter is torch's own ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the default
and maintained path since torch 2.9; the TorchScript exporter (``dynamo=False``) still runs in torch 2.13 but
warns that it will be removed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.atomic import atomic_write
from cnnlab.errors import UserError
from cnnlab.extras import require
from cnnlab.version import __version__

__all__ = ["ExportCheckFailed", "ExportResult", "export_onnx", "read_metadata", "MAX_ABS_DIFF", "MIN_AGREEMENT",
           "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# The check's bar: fp32 kernels of two runtimes differ by rounding (~1e-6 on logits of size ~10), so 1e-4 only
# fails a real difference; agreement allows one flipped near-tie in 1,000 images.
MAX_ABS_DIFF = 1e-4
MIN_AGREEMENT = 0.999
CHECK_BATCH = 256  # images per forward in the check, so 1,000 images also exercise a ragged last batch
DEFAULT_CHECK_IMAGES = 16  # random images checked when the caller passes none


class ExportCheckFailed(UserError, RuntimeError):
    """The ONNX model's logits differ from PyTorch's; no file was written. The message gives the figures.

    Not the user's doing, but not worth a traceback either: the CLI prints the figures and exits 1.
    """

    exit_code = 1

    def __init__(self, message: str, max_abs_diff: float, top1_agreement: float, num_checked: int):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.top1_agreement = top1_agreement
        self.num_checked = num_checked


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime matched PyTorch on the check images."""

    path: Path
    opset: int
    size_bytes: int
    max_abs_diff: float  # largest |logit difference| between onnxruntime and PyTorch fp32
    top1_agreement: float  # fraction of check images whose predicted class is the same in both
    num_checked: int
    model_name: str


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_shape: Sequence[int],
                class_names: Sequence[str], mean: float | Sequence[float], std: float | Sequence[float],
                opset: int | None = None, check_images: torch.Tensor | None = None,
                model_name: str | None = None) -> ExportResult:
    """Export ``model`` to ONNX at ``path``, after checking the exported model against PyTorch.

    The model is copied to the CPU in fp32 and eval mode (the caller's model is left as it was), exported with a
    dynamic batch axis, given the metadata listed in this module's docstring, and run by onnxruntime
    (CPUExecutionProvider) on ``check_images`` next to the PyTorch copy. Only if the largest logit difference is at
    most ``MAX_ABS_DIFF`` and the top-1 predictions agree on at least ``MIN_AGREEMENT`` of the images is the file
    written, atomically: a failed check or an interruption leaves no file and no temporary file, and an older
    file at ``path`` as it was.

    Args:
        model: a classifier taking ``(N, C, H, W)`` float images and returning ``(N, num_classes)`` logits.
        path: the ``.onnx`` file to write; its folder must exist.
        image_shape: ``(C, H, W)``, the input the model was trained on (after resizing).
        class_names: one name per logit, plain strings (stored as JSON data, never used in a path).
        mean, std: the normalization applied after scaling pixels to [0, 1], one value or one per channel;
            ``0`` and ``1`` for a model trained on unnormalized images.
        opset: the ONNX opset to target; None takes the exporter's default (20 with torch 2.13).
        check_images: ``(N, C, H, W)`` float images, preprocessed as the model expects (the CLI passes 1,000
            test images); None checks ``DEFAULT_CHECK_IMAGES`` seeded random images.
        model_name: stored in the metadata; defaults to ``model.model_name`` (set by the registry).

    Returns:
        An :class:`ExportResult` with the path, opset, file size and the check's figures.

    Raises:
        MissingExtra: onnx, onnxscript or onnxruntime is not installed (``pip install 'cnnlab[export]'``).
        ValueError: an argument does not fit the model (shape, number of class names, mean/std).
        ExportCheckFailed: onnxruntime's logits differ from PyTorch's beyond the bar; nothing was written.
        OSError: the file cannot be written.
    """
    feature = "ONNX export"
    onnx = require("onnx", "export", feature)
    require("onnxscript", "export", feature)  # torch's dynamo exporter translates through it
    ort = require("onnxruntime", "export", feature)

    shape = _image_shape(image_shape)
    means, stds = _per_channel(mean, "mean", shape[0]), _per_channel(std, "std", shape[0])
    if any(s <= 0 for s in stds):
        raise ValueError(f"std must be positive, got {stds}")
    names = _class_names(class_names)
    model_name = str(model_name or getattr(model, "model_name", None) or type(model).__name__)
    net = _private_copy(model, shape, len(names), model_name)
    if check_images is None:
        generator = torch.Generator().manual_seed(0)
        check_images = torch.randn(DEFAULT_CHECK_IMAGES, *shape, generator=generator)
    check_images = _check_tensor(check_images, shape)
    data, used_opset = _serialize(onnx, net, shape, opset, _metadata(model_name, names, shape, means, stds))

    # The bytes to be written are what is checked, before anything touches the disk.
    max_diff, agreement = _compare(ort, data, net, check_images)
    _require_agreement(max_diff, agreement, len(check_images), model_name, path)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return ExportResult(path=path, opset=used_opset, size_bytes=len(data), max_abs_diff=max_diff,
                        top1_agreement=agreement, num_checked=len(check_images), model_name=model_name)


def _require_agreement(max_diff: float, agreement: float, n: int, model_name: str, path) -> None:
    """Raise :class:`ExportCheckFailed` unless the check met ``MAX_ABS_DIFF`` and ``MIN_AGREEMENT``."""
    if not (max_diff <= MAX_ABS_DIFF and agreement >= MIN_AGREEMENT):
        raise ExportCheckFailed(
            f"the ONNX export of {model_name} does not match PyTorch on {n:,} images: max |logit difference| "
            f"{max_diff:.3g} (allowed {MAX_ABS_DIFF:g}), top-1 agreement {agreement:.2%} (needed "
            f"{MIN_AGREEMENT:.1%}); nothing was written to {path}", max_diff, agreement, n)


def _private_copy(model: nn.Module, shape: tuple[int, int, int], num_classes: int, model_name: str) -> nn.Module:
    """An fp32 CPU copy in eval mode, checked to map ``shape`` images to ``num_classes`` logits.

    A copy: exporting must not move, cast or switch the caller's (training) model.
    """
    channels, height, width = shape
    net = copy.deepcopy(model).to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        try:
            out = net(torch.zeros(2, *shape))
        except RuntimeError as exc:
            raise ValueError(f"model {model_name} cannot take {channels}x{height}x{width} images "
                             f"({str(exc).splitlines()[0]}); pass the image_shape it was trained on") from exc
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {model_name} returns {got} for 2 images but {num_classes} class names were given; "
                         f"it must return (N, {num_classes}) logits")
    return net


def _metadata(model_name: str, names: list[str], shape: tuple[int, int, int], means: list[float],
              stds: list[float]) -> dict[str, str]:
    """The metadata properties listed in this module's docstring, as ONNX stores them (strings)."""
    channels, height, width = shape
    return {
        "model_name": model_name,
        "class_names": json.dumps(names, ensure_ascii=False),
        # Not image_size: timm's name in its pretrained configs, and files already written carry it.
        "input_size": json.dumps([height, width]),
        "channels": str(channels),
        "mean": json.dumps(means),
        "std": json.dumps(stds),
        "preprocessing": (f"{INPUT_NAME}: float32 (N, {channels}, {height}, {width}); pixels scaled to [0, 1], "
                          f"resized to {height}x{width}, then (x - mean) / std per channel"),
        "cnnlab_version": __version__,
    }


def _serialize(onnx, net: nn.Module, shape: tuple[int, int, int], opset: int | None,
               metadata: dict[str, str]) -> tuple[bytes, int]:
    """The ONNX model's bytes (dynamic batch axis, ``metadata`` added to the exporter's) and its opset."""
    example = torch.zeros(2, *shape)  # batch 2: a batch of 1 would be specialized away
    with _quiet_exporter():
        program = torch.onnx.export(
            net, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    proto = program.model_proto
    exporter_props = {p.key: p.value for p in proto.metadata_props}  # kept: set_model_props replaces them all
    onnx.helper.set_model_props(proto, {**exporter_props, **metadata})
    used_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), used_opset


def read_metadata(path: str | os.PathLike) -> dict:
    """The cnnlab metadata of an exported file, decoded: JSON values parsed, ``channels`` an int.

    Raises:
        MissingExtra: onnx is not installed.
    """
    onnx = require("onnx", "export", "Reading ONNX metadata")
    proto = onnx.load(os.fspath(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    for key in ("class_names", "input_size", "mean", "std"):
        if key in props:
            props[key] = json.loads(props[key])
    if "channels" in props:
        props["channels"] = int(props["channels"])
    return props


# ---- helpers ---------------------------------------------------------------------------------------------


def _compare(ort, data: bytes, net: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Max |Δlogit| and top-1 agreement of onnxruntime (the serialized model) against PyTorch fp32."""
    options = ort.SessionOptions()
    # The same thread budget as torch (OMP_NUM_THREADS, torch.set_num_threads): no oversubscribed cores.
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    max_diff, same = 0.0, 0
    with torch.no_grad():
        for batch in images.split(CHECK_BATCH):
            expected = net(batch)  # (n, num_classes)
            got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])
            if got.shape != expected.shape:
                return math.inf, 0.0
            diff = float((got - expected).abs().max())
            max_diff = diff if math.isnan(diff) else max(max_diff, diff)  # a NaN logit must fail the check
            same += int((got.argmax(dim=1) == expected.argmax(dim=1)).sum())
    return max_diff, same / max(len(images), 1)


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter logs about optional torchvision ops and warns about its own internals (FutureWarning from
    # torch.export's pytree); neither concerns the user's model. Errors still raise.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (C, H, W), three positive ints, got {image_shape!r}")
    return shape


def _per_channel(value: float | Sequence[float], what: str, channels: int) -> list[float]:
    values = [value] * channels if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be one finite number or one per channel ({channels}), got {value!r}")
    return [float(v) for v in values]


def _class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r:.200}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty; give one name per class")
    return names


def _check_tensor(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != shape:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"check_images must be a float tensor (N, {', '.join(map(str, shape))}), got {got}")
    if not images.is_floating_point() or len(images) == 0:
        raise ValueError(f"check_images must be non-empty, preprocessed float images, got {len(images)} of "
                         f"dtype {images.dtype}")
    return images.detach().to("cpu", torch.float32).contiguous()


