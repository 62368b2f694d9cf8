"""What a trained network learned: its conv kernels, the feature maps of one image, its worst mistakes.

Each function takes a model rebuilt by :func:`cnnlab.inference.loaded.load_trained`, writes one PNG through
:mod:`cnnlab.visual.plotting` and returns a small record of what it drew (the counts the tests check and the CLI
prints). ``cnnlab viz kernels|features|mistakes`` and the HTML report (:mod:`cnnlab.analysis.report`) call them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.batching import BatchLoader
from cnnlab.inference.loaded import LoadedModel, check_test_index
from cnnlab.nn.classifier import device_of, eval_mode
from cnnlab.nn.summary import find_conv
from cnnlab.training.runtime import eval_batch_size
from cnnlab.visual.plotting import MAX_KERNEL_TILES

__all__ = [
    "KernelFigure", "FeatureFigure", "MistakesFigure", "feature_stages", "predict_probabilities",
    "plot_layer_kernels", "plot_test_features", "plot_test_mistakes", "stage_outputs",
]

# Above this many (out, in) pairs a layer is drawn as one mean-over-inputs tile per output channel, and above
# it output channels are cut to the first MAX_KERNEL_TILES: a grid larger than that is unreadable anyway.


@dataclass(frozen=True)
class KernelFigure:
    """What :func:`plot_layer_kernels` drew: ``tiles`` kernels of ``layer`` (weight ``weight_shape``)."""

    path: Path
    layer: str
    weight_shape: tuple[int, ...]
    mode: str  # "single" (one input channel), "pairs" (every (out, in) pair) or "mean" (mean over inputs)
    tiles: int


@dataclass(frozen=True)
class FeatureFigure:
    """What :func:`plot_test_features` drew: the maps after each stage (name, output shape) for one image."""

    path: Path
    index: int
    true_class: int
    predicted_class: int
    probability: float
    stages: list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class MistakesFigure:
    """What :func:`plot_test_mistakes` drew: ``indices`` (test-set positions), out of ``wrong`` of ``total``."""

    path: Path
    indices: list[int]
    wrong: int
    total: int
    explained: bool = False  # each drawn with its Grad-CAM overlay


def plot_layer_kernels(model: nn.Module, path: str | os.PathLike, layer: str | None = None) -> KernelFigure:
    """Draw the kernels of one conv layer (the first by default) as a grid of tiles.

    A layer with one input channel gets one tile per output channel. With several input channels every
    ``(out, in)`` pair gets its own tile (rows: output channels, columns: input channels) while there are
    at most ``MAX_KERNEL_TILES`` pairs; beyond that each output channel's kernel is averaged over its input
    channels (which can hide structure: opposite-signed slices cancel), and the title says so.
    """
    from cnnlab.visual.plotting import plot_kernels

    name, conv = find_conv(model, layer)
    weight = conv.weight.detach().float().cpu()  # (out, in / groups, kh, kw)
    out_ch, in_ch, kh, kw = weight.shape
    what = f"{name} ({type(conv).__name__}, weight {out_ch}x{in_ch}x{kh}x{kw})"
    if in_ch == 1 or out_ch * in_ch > MAX_KERNEL_TILES:
        mode = "single" if in_ch == 1 else "mean"
        kernels = weight.mean(dim=1) if in_ch > 1 else weight[:, 0]  # (out, kh, kw)
        shown = min(out_ch, MAX_KERNEL_TILES)
        tiles = list(kernels[:shown])
        ncols = min(shown, 16)
        what_tile = ("one tile per output channel" if mode == "single"
                     else f"each tile the mean of an output channel's kernel over its {in_ch} input channels")
        cut = f"; first {shown} of {out_ch} output channels" if shown < out_ch else ""
        title = f"Kernels of {what}:\n{what_tile}{cut}"
        plot_kernels(tiles, path, title, ncols=ncols, tile_titles=[f"out {i}" for i in range(shown)])
    else:
        mode = "pairs"
        # One column per output channel (its whole stack of input slices) while that fits a screen's width;
        # otherwise rows are output channels and columns input channels.
        if out_ch <= 20:
            tiles = [weight[o, i] for i in range(in_ch) for o in range(out_ch)]
            ncols, rows, cols = out_ch, [f"in {i}" for i in range(in_ch)], [f"out {o}" for o in range(out_ch)]
        else:
            tiles = [weight[o, i] for o in range(out_ch) for i in range(in_ch)]
            ncols, rows, cols = in_ch, [f"out {o}" for o in range(out_ch)], [f"in {i}" for i in range(in_ch)]
        title = f"Kernels of {what}:\none tile per (output, input) channel pair"
        plot_kernels(tiles, path, title, ncols=ncols, row_labels=rows, col_labels=cols)
    return KernelFigure(path=Path(path), layer=name, weight_shape=tuple(weight.shape), mode=mode,
                        tiles=len(tiles))


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation"


def feature_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level stages of ``model.net`` whose outputs are the feature maps worth drawing.

    In a flat net (LeNet) a stage ends at the activation after each conv (at the conv itself when no
    activation follows); in a net of blocks (VGG's ``vgg_block``, ResNet's ``b1``...) each block holding a
    conv is a stage. Names are as in ``model.named_modules()``.
    """
    net = getattr(model, "net", None)
    prefix = "net." if isinstance(net, nn.Module) else ""
    children = list((net if isinstance(net, nn.Module) else model).named_children())
    stages = []
    for i, (name, module) in enumerate(children):
        if isinstance(module, nn.Conv2d):
            after = children[i + 1] if i + 1 < len(children) else None
            chosen = after if after is not None and _is_activation(after[1]) else (name, module)
            stages.append((prefix + chosen[0], chosen[1]))
        elif any(isinstance(m, nn.Conv2d) for m in module.modules()):
            stages.append((prefix + name, module))
    return stages


def picture(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image ``(H, W)`` or ``(C, H, W)`` as matplotlib draws it: ``(H, W)`` grey or ``(H, W, 3)``."""
    if image.ndim == 3:
        return image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    return image


@torch.inference_mode()
def stage_outputs(model: torch.nn.Module, X: torch.Tensor, stages=None) -> dict[str, torch.Tensor]:
    """Each stage's output (:func:`feature_stages`, or the ``(name, module)`` pairs given) for the input ``X``,
    by forward hooks, detached.

    A model that averages test-time views (FastNet's ``flip_tta``, ``shift_tta``) runs each stage once per view
    and a hook keeps the last (a mirror image's maps, before December 2026): these are the maps of ``X`` as
    given (``single_view``).
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            captured[name] = output.detach()
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in stages or feature_stages(model)]
    try:
        getattr(model, "single_view", model)(X)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def plot_test_features(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor, index: int,
                       path: str | os.PathLike, max_channels: int = 16) -> FeatureFigure:
    """Run test image ``index`` through the model and draw the maps after each stage (forward hooks).

    Each row shows the ``max_channels`` channels with the largest mean activation, labelled with their
    channel index, the stage's name, its class and its output shape.

    Raises:
        ValueError: ``index`` is outside the test set.
    """
    from cnnlab.visual.plotting import plot_feature_maps

    check_test_index(index, len(images))
    model = loaded.model
    stages = feature_stages(model)
    with eval_mode(model), torch.no_grad():
        X = loaded.preprocess(images[index:index + 1]).to(device_of(model))  # (1, C, h, w)
        captured = stage_outputs(model, X, stages)
        probs = torch.softmax(model(X).float(), dim=1)[0].cpu()  # the class as the model, views and all, says
    rows, shapes = [], []
    for name, module in stages:
        out = captured.get(name)
        if out is None or out.ndim != 4:
            continue  # a stage the input never reached, or one that no longer has maps
        maps = out[0].float().cpu()  # (C, H, W)
        order = maps.mean(dim=(1, 2)).argsort(descending=True)[:max_channels].sort().values
        shape = tuple(maps.shape)
        shown = (f"all {shape[0]} channels" if len(order) == shape[0]
                 else f"the {len(order)} most active of {shape[0]} channels")
        rows.append((f"after {name} ({type(module).__name__}): {'x'.join(map(str, shape))}; {shown}",
                     maps[order], order.tolist()))
        shapes.append((name, shape))
    truth, pred = int(labels[index]), int(probs.argmax())
    verdict = "right" if pred == truth else "wrong"
    h, w = loaded.image_size
    names = loaded.class_names
    image_title = (f"input: test image {index}, {loaded.channels}x{h}x{w}; true {names[truth]}, "
                   f"predicted {names[pred]} {float(probs[pred]):.2f} ({verdict})")
    title = f"Feature maps of {loaded.state.get('model_name') or type(model).__name__} for test image {index}"
    plot_feature_maps(picture(images[index]), image_title, rows, path, title, max_channels=max_channels)
    return FeatureFigure(path=Path(path), index=index, true_class=truth, predicted_class=pred,
                         probability=float(probs[pred]), stages=shapes)


@torch.inference_mode()
def predict_probabilities(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                       batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities ``(N, num_classes)`` of every image, batched as ``cnnlab evaluate`` batches them.

    The images are prepared by the same :class:`BatchLoader` (resize, normalization, batch size) that
    evaluation uses, so the predictions are those behind the accuracy ``cnnlab evaluate`` prints.
    """
    model = loaded.model
    device = device_of(model)
    loader = BatchLoader(images, labels, batch_size or eval_batch_size(device), image_size=loaded.image_size,
                         normalize=loaded.normalization())
    with eval_mode(model):
        probs = [torch.softmax(model(X.to(device)).float(), dim=1).cpu() for X, _ in loader]
    return torch.cat(probs)


def plot_test_mistakes(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                       path: str | os.PathLike, n: int = 24, probs: torch.Tensor | None = None,
                       explain: bool = False) -> MistakesFigure:
    """Draw the ``n`` wrong predictions the model was surest of, with true and predicted class.

    Args:
        probs: the probabilities from :func:`predict_probabilities`, if already computed.
        explain: draw each mistake's Grad-CAM map (of the wrong, predicted class) over it; needs Captum.
    """
    from cnnlab.visual.plotting import plot_mistakes

    if probs is None:
        probs = predict_probabilities(loaded, images, labels)
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels.cpu()).nonzero().flatten()
    ranked = wrong[confidence[wrong].argsort(descending=True, stable=True)][:n].tolist()
    names = loaded.class_names
    titles = [f"#{i}  true: {names[int(labels[i])]}\npred: {names[int(predicted[i])]} "
              f"{float(confidence[i]):.2f}" for i in ranked]
    total = len(labels)
    heatmaps = None
    if explain and ranked:
        from cnnlab.analysis.explain import explain_images

        heatmaps = [e.heatmap for e in explain_images(loaded, images[ranked], "gradcam")]
    what = "; Grad-CAM of the predicted class over each" if heatmaps is not None else ""
    title = (f"The {len(ranked)} most confident mistakes of {loaded.state.get('model_name') or 'the model'} "
             f"({len(wrong):,} wrong of {total:,} test images; pred = predicted class and its probability{what})")
    plot_mistakes([picture(images[i]) for i in ranked], titles, path, title, heatmaps=heatmaps)
    return MistakesFigure(path=Path(path), indices=ranked, wrong=len(wrong), total=total,
                          explained=heatmaps is not None)
