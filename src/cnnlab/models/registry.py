"""A small model registry in the style of torchvision's `_api.py` and timm's `create_model`.

Builders are plain functions registered under a name (`@register_model("resnet18", image_size=96, ...)`);
`create_model(name, **kwargs)` calls one. The registration records, for every model it returns, how it was
built: `model.model_name` and `model.model_kwargs` (every builder argument, defaults included, read off the
builder's signature), so a checkpoint can rebuild it with `create_model(model.model_name, **model.model_kwargs)`
before loading its state dict. The registration also holds the model's training defaults (its recipe row, see
`cnnlab.recipes`); the learning rate among them is the builder's own `lr` default, so it is written once.
A registration may name a ``narrower`` model: the same network, cheaper per image, that a time budget too short
for the model switches to (``cnnlab train --budget``, :func:`narrower_model`). `cam_layer(model)` names the model's
last convolutional block (the layer Grad-CAM explains), from its
registration when one is given, else from the model's own forward pass (see :func:`cam_layer`).
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

__all__ = ["builder_arguments", "cam_layer", "check_model_name", "create_model", "list_models", "model_recipe",
           "narrower_model", "prepare_model", "register_model", "MODERN_RECIPE"]

M = TypeVar("M", bound=nn.Module)
Builder = Callable[..., nn.Module]

_MODELS: dict[str, Builder] = {}
_RECIPES: dict[str, dict] = {}
_CAM_LAYERS: dict[str, str] = {}
_NARROWER: dict[str, str] = {}

# The training defaults the modern networks share (momentum SGD, weight decay, one-cycle, standardized input);
# each model's registration adds what differs (input size, learning rate via its builder, augmentation).
MODERN_RECIPE = dict(optimizer="momentum", weight_decay=5e-4, schedule="onecycle", normalize=True)


def register_model(name: str, *, cam_layer: str | None = None, narrower: str | None = None,
                   **recipe: Any) -> Callable[[Builder], Builder]:
    """Decorator registering a keyword-only builder under `name`; a name can be registered only once.

    Args:
        name: the registry name (`create_model(name)`, `cnnlab train --model name`).
        cam_layer: the name (as in `model.named_modules()`) of the last convolutional block, for a model whose
            forward pass does not show it (see :func:`cam_layer`); None lets the forward pass decide.
        narrower: the registered name of a cheaper form of this model (fewer channels, the same design), for a
            budget that holds too few epochs of this one (:func:`narrower_model`).
        **recipe: the model's training defaults (`image_size=96`, `optimizer="momentum"`, ...); see
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
        if cam_layer is not None:
            _CAM_LAYERS[name] = cam_layer
        if narrower is not None:
            _NARROWER[name] = narrower
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


def builder_arguments(name: str) -> tuple[str, ...]:
    """The keyword arguments model `name`'s builder takes (`num_classes`, `in_channels`, ...)."""
    return tuple(inspect.signature(_MODELS[check_model_name(name)]).parameters)


def model_recipe(name: str) -> dict:
    """The training defaults registered with model `name` (a copy), its builder's `lr` default included."""
    return dict(_RECIPES[check_model_name(name)])


def narrower_model(name: str) -> str | None:
    """The registered cheaper form of model `name` (its registration's ``narrower``), or None."""
    narrower = _NARROWER.get(check_model_name(name))
    return None if narrower is None else check_model_name(narrower)


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


def cam_layer(model: nn.Module, image_size: int | tuple[int, int] | None = None) -> tuple[str, nn.Module]:
    """The last convolutional block of a registered model: the layer Grad-CAM (Selvaraju et al. 2017) explains.

    A name given at registration (`register_model(..., cam_layer="net.b5")`) wins. Otherwise one dry forward
    (eval mode, no_grad, zeros of the model's input size) records each module's output, and the answer is found
    from the top of the network down: the last top-level stage whose output is still a spatial map (4-D with more
    than one pixel, so not a global pool), descending into a stage that holds convolutions but ends flat (e.g.
    GoogLeNet's last block, whose inceptions are followed by pooling and flattening). Spatial maps of the last
    block are what Grad-CAM weighs; a 1x1 map would give a constant heat map.

    Args:
        model: a model from :func:`create_model` (it carries `model_name` and `model_kwargs`).
        image_size: the input side(s) for the dry forward; default the model's `image_size` argument, else its
            recipe's `image_size`, else 28.

    Returns:
        `(name, module)` with `name` as in `model.named_modules()`.
    """
    name = getattr(model, "model_name", None)
    modules = dict(model.named_modules())
    if name in _CAM_LAYERS:
        return _CAM_LAYERS[name], modules[_CAM_LAYERS[name]]
    kwargs = getattr(model, "model_kwargs", {}) or {}
    size = image_size or kwargs.get("image_size") or _RECIPES.get(name, {}).get("image_size") or 28
    shapes = _output_shapes(model, int(kwargs.get("in_channels", 1)), size_pair(size))
    root = model.net if isinstance(getattr(model, "net", None), nn.Module) else model
    prefix = "net." if root is not model else ""
    for spatial_only in (True, False):  # a tiny input may leave no map above 1x1: then any 4-D map will do
        found = _last_map(root, prefix, shapes, spatial_only)
        if found is not None:
            return found, modules[found]
    raise ValueError(f"{name or type(model).__name__} has no convolutional layer whose output is a feature map")


def _output_shapes(model: nn.Module, in_channels: int, size: tuple[int, int]) -> dict[nn.Module, tuple]:
    shapes: dict[nn.Module, tuple] = {}

    def keep(module, inputs, output):
        if isinstance(output, torch.Tensor):
            shapes[module] = tuple(output.shape)

    handles = [m.register_forward_hook(keep) for m in model.modules()]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, in_channels, *size, device=device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _last_map(module: nn.Module, prefix: str, shapes: dict, spatial_only: bool) -> str | None:
    """The last child (searched from the end, descending into conv-holding children) whose output is a map."""
    for child_name, child in reversed(list(module.named_children())):
        shape = shapes.get(child)
        holds_conv = any(isinstance(m, nn.Conv2d) for m in child.modules())
        is_map = shape is not None and len(shape) == 4 and (not spatial_only or shape[2] * shape[3] > 1)
        if is_map and (holds_conv or _after_conv(module, child)):
            return prefix + child_name
        if holds_conv:
            found = _last_map(child, f"{prefix}{child_name}.", shapes, spatial_only)
            if found is not None:
                return found
    return None


def _after_conv(parent: nn.Module, child: nn.Module) -> bool:
    """Whether a convolution comes before `child` among `parent`'s children (a flat net's ReLU or pooling)."""
    for sibling in parent.children():
        if sibling is child:
            return False
        if any(isinstance(m, nn.Conv2d) for m in sibling.modules()):
            return True
    return False
