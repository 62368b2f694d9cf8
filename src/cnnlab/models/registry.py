"""A small model registry in the style of torchvision's `_api.py` and timm's `create_model`.

Builders are plain functions registered under a name (`@register_model("resnet18", resize=96, ...)`);
`create_model(name, **kwargs)` calls one. The registration records, for every model it returns, how it was
built: `model.model_name` and `model.model_kwargs` (every builder argument, defaults included, read off the
builder's signature), so a checkpoint can rebuild it with `create_model(model.model_name, **model.model_kwargs)`
before loading its state dict. The registration also holds the model's training defaults (its recipe row, see
`cnnlab.recipes`); the learning rate among them is the builder's own `lr` default, so it is written once.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from cnnlab.errors import ConfigError
from cnnlab.nn.classifier import device_of, eval_mode, init_cnn
from cnnlab.nn.ops import size_pair

__all__ = ["check_model_name", "create_model", "list_models", "model_recipe", "prepare_model", "register_model",
           "MODERN_RECIPE"]

M = TypeVar("M", bound=nn.Module)
Builder = Callable[..., nn.Module]

_MODELS: dict[str, Builder] = {}
_RECIPES: dict[str, dict] = {}

# The training defaults the modern networks share (momentum SGD, weight decay, one-cycle, standardized input);
# each model's registration adds what differs (input size, learning rate via its builder, augmentation).
MODERN_RECIPE = dict(optimizer="momentum", weight_decay=5e-4, schedule="onecycle", normalize=True)


def register_model(name: str, **recipe: Any) -> Callable[[Builder], Builder]:
    """Decorator registering a keyword-only builder under `name`; a name can be registered only once.

    Args:
        name: the registry name (`create_model(name)`, `cnnlab train --model name`).
        **recipe: the model's training defaults (`resize=96`, `optimizer="momentum"`, ...); see
            `cnnlab.recipes.TrainConfig` for the fields. Do not give `lr`: it is the builder's `lr` default.
    """
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered; pick another name.")
    if "lr" in recipe:
        raise ValueError(f"{name}: the learning rate is the builder's `lr` default, not a recipe field.")

    def wrapper(fn: Builder) -> Builder:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def build(**kwargs: Any) -> nn.Module:
            bound = signature.bind(**kwargs)
            bound.apply_defaults()
            model = fn(**bound.arguments)
            model.model_name = name
            # Plain values only (a checkpoint stores them): an (h, w) list becomes a tuple.
            model.model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}
            return model

        _MODELS[name] = build
        lr = signature.parameters.get("lr")
        _RECIPES[name] = {**recipe, **({"lr": lr.default} if lr is not None else {})}
        return build

    return wrapper


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an `fnmatch` pattern like `"resnet*"`."""
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def check_model_name(name: str) -> str:
    """Return `name` if a model is registered under it; the one place an unknown name is refused.

    Raises:
        ConfigError: (a ValueError) no such model; the message lists the known names.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return name


def model_recipe(name: str) -> dict:
    """The training defaults registered with model `name` (a copy), its builder's `lr` default included."""
    return dict(_RECIPES[check_model_name(name)])


def create_model(name: str, num_classes: int | None = 10, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`.

    Keyword arguments that are None are dropped, so unset command-line options leave the builder's
    defaults in place.

    Args:
        name: a name from `list_models()`.
        num_classes: number of output logits.
        **kwargs: further builder arguments (`in_channels`, `image_size`, `lr`, ...).

    Raises:
        ValueError: for an unknown name (a ConfigError) or an argument the builder does not take.
    """
    builder = _MODELS[check_model_name(name)]
    kwargs = {k: v for k, v in {"num_classes": num_classes, **kwargs}.items() if v is not None}
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"model {name!r} takes no argument(s) {', '.join(unknown)}; it takes: {', '.join(params)}.")
    return builder(**kwargs)


def prepare_model(model: M, *, in_channels: int, image_size: int | tuple[int, int]) -> M:
    """Finish a builder's model: materialize its lazy layers with one dry forward, then `init_cnn` them.

    The dry forward runs on zeros of shape `(2, in_channels, h, w)` in eval mode under no_grad, so
    BatchNorm statistics stay untouched. Only the layers that were lazy are initialized here: a model's
    eager layers were initialized by its constructor (initializing them twice would only waste random
    numbers). Afterwards parameter counts are final, an optimizer can be built and `load_state_dict` works.

    Raises:
        ValueError: when `in_channels` or `image_size` is malformed or the image too small for the model.
    """
    if not (isinstance(in_channels, int) and in_channels > 0):
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
    h, w = size_pair(image_size)
    lazy = [m for m in model.modules() if isinstance(m, LazyModuleMixin)]
    with eval_mode(model):
        try:
            model(torch.zeros(2, in_channels, h, w, device=device_of(model)))
        except RuntimeError as e:
            msg = str(e).splitlines()[0]
            raise ValueError(
                f"{type(model).__name__} cannot take {in_channels}x{h}x{w} images ({msg}); use a larger image_size."
            ) from e
    for module in lazy:  # now nn.Conv2d / nn.Linear: a lazy module turns into its eager class in place
        init_cnn(module)
    return model
