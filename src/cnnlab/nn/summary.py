"""A per-layer table of output shapes, parameters and FLOPs: d2l's `layer_summary` (§7.6) grown up.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on each layer's own call, not derived by
hand, so they stay right whatever the layer does. Like torchvision's and fvcore's counts they cover matrix
multiplies and convolutions (one multiply-add = 2 FLOPs); elementwise work (ReLU, BatchNorm, pooling) counts
as zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import ConfigError
from cnnlab.nn.classifier import device_of, eval_mode

__all__ = ["LayerStats", "conv_layers", "find_conv", "layer_stats", "model_summary"]


@dataclass(frozen=True)
class LayerStats:
    """One row of the summary: a top-level layer's name, class, output shape, parameters and FLOPs."""

    name: str
    layer_type: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    net = getattr(model, "net", None)
    return list((net if isinstance(net, nn.Module) else model).named_children())


def layer_stats(model: nn.Module, input_shape: Sequence[int]) -> list[LayerStats]:
    """Run zeros of `input_shape` (batch included) through the top-level layers and measure each.

    The layers are those of `model.net`, or the model's children when it has no `net`, applied in order,
    as d2l's `layer_summary` does. Runs in eval mode under no_grad; lazy layers are materialized.

    Returns:
        One `LayerStats` per layer; FLOPs are for the whole batch.
    """
    layers = _layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layers to summarize.")
    p = next(model.parameters(), None)
    device = device_of(model)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    rows = []
    with eval_mode(model):
        X = torch.zeros(*input_shape, device=device, dtype=dtype)
        for name, layer in layers:
            # Counting one layer at a time gives the per-layer figure directly; a lazy layer materializes
            # inside the counter, but initialization only fills tensors and adds no FLOPs.
            with FlopCounterMode(display=False) as counter:
                X = layer(X)
            rows.append(
                LayerStats(
                    name=name,
                    # Read after the call: a lazy layer changes class when it materializes.
                    layer_type=type(layer).__name__,
                    output_shape=tuple(X.shape),
                    params=sum(q.numel() for q in layer.parameters()),
                    flops=int(counter.get_total_flops()),
                )
            )
    return rows


def model_summary(model: nn.Module, input_shape: Sequence[int]) -> str:
    """A table of the top-level layers of `model.net`: name, class, output shape, parameters and FLOPs.

    Args:
        model: a `Classifier` (its `net` is summarized) or any module (its children are).
        input_shape: the full input shape, batch included, e.g. `(1, 1, 28, 28)`.

    Returns:
        The table, with totals for parameters (all and trainable, over the whole model) and FLOPs.
    """
    rows = layer_stats(model, input_shape)
    header = ("Layer", "Type", "Output shape", "Params", "FLOPs")
    body = [(r.name, r.layer_type, str(r.output_shape), f"{r.params:,}", f"{r.flops:,}") for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        # Text columns flush left, numbers flush right so their digits line up.
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells)

    rule = "-" * len(fmt(header))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [
        f"Input shape: {tuple(input_shape)}",
        rule,
        fmt(header),
        rule,
        *(fmt(line) for line in body),
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        f"Total FLOPs: {sum(r.flops for r in rows):,}",
    ]
    return "\n".join(lines)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every 2-D convolution of ``model`` with its name from ``model.named_modules()``, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The conv layer called ``layer`` (the first conv when None).

    Raises:
        ValueError: no such layer, or not a conv; the message lists the conv layers there are.
    """
    convs = conv_layers(model)
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer whose kernels could be drawn")
    if layer is None:
        return convs[0]
    names = ", ".join(name for name, _ in convs)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ConfigError(f"no layer named {layer!r} in {type(model).__name__}; its conv layers are: {names}")
    if not isinstance(modules[layer], nn.Conv2d):
        raise ConfigError(f"layer {layer!r} is a {type(modules[layer]).__name__}, not a convolution; "
                         f"its conv layers are: {names}")
    return layer, modules[layer]
