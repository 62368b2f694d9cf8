"""The metadata a model file carries so that it can be used without cnnlab: checked once, written the same way.

Both exported formats store it as strings (ONNX's ``metadata_props``, the safetensors header's ``__metadata__``):
``class_names`` (JSON list), ``input_size`` (JSON ``[H, W]``), ``channels``, ``mean`` and ``std`` (JSON lists, one
float per channel) and ``cnnlab_version``; each format adds its own keys (see :mod:`cnnlab.inference.export` and
:mod:`cnnlab.inference.safetensors_io`). The functions here check what a caller passes before anything is written,
so both formats accept and refuse the same values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from cnnlab.version import __version__

__all__ = ["check_class_names", "check_image_shape", "input_metadata", "per_channel"]


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``image_shape`` as a ``(C, H, W)`` tuple of three positive ints.

    Raises:
        ValueError: it is not three positive ints (a bool is not an int here).
    """
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (C, H, W), three positive ints, got {image_shape!r}")
    return shape


def per_channel(value: float | Sequence[float], what: str, channels: int) -> list[float]:
    """One float per channel from one number or a sequence (a single value is repeated), e.g. a mean or std.

    Args:
        value: a number, or one number per channel (or a sequence of one).
        what: its name in the error message (``"mean"``, ``"std"``).
        channels: the number of image channels.

    Raises:
        ValueError: the count is not 1 or ``channels``, or a value is not a finite number.
    """
    values = [value] * channels if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be one finite number or one per channel ({channels}), got {value!r}")
    return [float(v) for v in values]


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """The class names as a non-empty list of strings: untrusted text, stored as JSON data only, never a path.

    Raises:
        ValueError: a single string (not a list of them), a name that is not a string, or no names at all.
    """
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r:.200}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty; give one name per class")
    return names


def input_metadata(class_names: Sequence[str], image_shape: Sequence[int], mean: float | Sequence[float],
                   std: float | Sequence[float]) -> dict[str, str]:
    """The keys both formats share, checked and encoded as strings (JSON where the module doc says so)."""
    channels, height, width = check_image_shape(image_shape)
    return {
        "class_names": json.dumps(check_class_names(class_names), ensure_ascii=False),
        # Not image_size: timm's name in its pretrained configs, and files already written carry it.
        "input_size": json.dumps([height, width]),
        "channels": str(channels),
        "mean": json.dumps(per_channel(mean, "mean", channels)),
        "std": json.dumps(per_channel(std, "std", channels)),
        "cnnlab_version": __version__,
    }
