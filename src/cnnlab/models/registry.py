"""A small model registry in the style of torchvision's `_api.py` and timm's `create_model`.

Builders are plain functions registered under a name (`@register_model("resnet18")`); `create_model(name,
**kwargs)` calls one. Every builder returns a model whose lazy layers are already materialized and that
remembers how it was built (`model.model_name`, `model.model_kwargs`), so a checkpoint can rebuild it with
`create_model(model.model_name, **model.model_kwargs)` before loading its state dict.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from cnnlab.classifier import eval_mode, init_cnn

__all__ = ["create_model", "list_models", "prepare_model", "register_model"]

M = TypeVar("M", bound=nn.Module)
Builder = Callable[..., nn.Module]

_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name`; a name can be registered only once."""
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered; pick another name.")

    def wrapper(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered; pick another name.")
        _MODELS[name] = fn
        return fn

    return wrapper


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an `fnmatch` pattern like `"resnet*"`."""
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(name: str, num_classes: int | None = 10, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`.

    Keyword arguments that are None are dropped, so unset command-line options leave the builder's
    defaults in place.

    Args:
        name: a name from `list_models()`.
        num_classes: number of output logits.
        **kwargs: further builder arguments (`in_channels`, `image_size`, `lr`, ...).

    Raises:
        ValueError: for an unknown name or an argument the builder does not take.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models are: {', '.join(sorted(_MODELS))}.")
    builder = _MODELS[name]
    kwargs = {k: v for k, v in {"num_classes": num_classes, **kwargs}.items() if v is not None}
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"model {name!r} takes no argument(s) {', '.join(unknown)}; it takes: {', '.join(params)}.")
    return builder(**kwargs)


def _pair(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    def positive_int(s: object) -> bool:
        return isinstance(s, int) and not isinstance(s, bool) and s > 0

    if positive_int(image_size):
        return image_size, image_size
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(map(positive_int, image_size)):
        return image_size[0], image_size[1]
    raise ValueError(f"image_size must be a positive int or an (h, w) pair of them, got {image_size!r}.")


def prepare_model(model: M, name: str, *, in_channels: int, image_size: int | tuple[int, int], **kwargs: Any) -> M:
    """Finish a builder's model: materialize lazy layers, apply `init_cnn`, record how it was built.

    The dry forward runs on zeros of shape `(2, in_channels, h, w)` in eval mode under no_grad, so
    BatchNorm statistics stay untouched. Afterwards parameter counts are final, an optimizer can be built
    and `load_state_dict` works.

    Args:
        model: the freshly constructed model.
        name: its registry name, stored as `model.model_name`.
        in_channels, image_size: the input the model is built for; image_size is an int or `(h, w)`.
        **kwargs: the builder's remaining arguments, stored with these in `model.model_kwargs`.

    Raises:
        ValueError: when `image_size` is malformed or too small for the model.
    """
    if not (isinstance(in_channels, int) and in_channels > 0):
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
    h, w = _pair(image_size)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with eval_mode(model):
        try:
            model(torch.zeros(2, in_channels, h, w, device=device))
        except RuntimeError as e:
            msg = str(e).splitlines()[0]
            raise ValueError(
                f"model {name!r} cannot take {in_channels}x{h}x{w} images ({msg}); use a larger image_size."
            ) from e
    model.apply(init_cnn)
    if isinstance(image_size, list):
        image_size = (h, w)
    model.model_name = name
    model.model_kwargs = {"in_channels": in_channels, "image_size": image_size, **kwargs}
    return model
