"""Why a network made one prediction: attribution maps from Captum, and the figures that show them.

:func:`explain` is the library call: a model and a batch of its (preprocessed) inputs in, one ``(H, W)`` map per
image out. Four methods, all Captum's (Kokhlikyan et al. 2020, "Captum: A unified and generic model
interpretability library for PyTorch"):

=============  ===========================================================================================
``gradcam``    Grad-CAM (Selvaraju et al. 2017): the last convolutional block's maps weighted by their mean
               gradient, ReLU'd and upsampled; the block is the registry's :func:`~cnnlab.models.cam_layer`
``ig``         Integrated Gradients (Sundararajan et al. 2017) from a black-image baseline; sums to
               ``f(x) - f(baseline)`` (completeness), summed over colour channels
``occlusion``  Occlusion (Zeiler & Fergus 2014): the drop of the class score when a patch is greyed out
``saliency``   Saliency (Simonyan et al. 2014): the largest absolute input gradient over the channels
=============  ===========================================================================================

Captum is the optional ``cnnlab[explain]`` extra; without it the call raises a one-line
:class:`~cnnlab.errors.MissingExtra`. :func:`explain_images` serves ``cnnlab explain`` and the report: it runs a
:class:`~cnnlab.inference.loaded.LoadedModel` on uint8 images and draws the overlays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.extras import require
from cnnlab.inference.loaded import LoadedModel
from cnnlab.nn.classifier import device_of, eval_mode

__all__ = ["METHODS", "Explanation", "explain", "explain_images", "ig_completeness", "plot_explanations"]

METHODS = ("gradcam", "ig", "occlusion", "saliency")
IG_STEPS = 64  # Riemann steps of Integrated Gradients: the median image's completeness error < 1% on our nets


@dataclass(frozen=True)
class Explanation:
    """One explained image: its map ``(H, W)``, the predicted class and probability, the explained target."""

    heatmap: torch.Tensor
    predicted: int
    probability: float
    target: int
    truth: int | None


def explain(model: nn.Module, images: torch.Tensor, method: str = "gradcam", target=None, *,
            layer: nn.Module | None = None, steps: int = IG_STEPS) -> torch.Tensor:
    """Attribution maps ``(N, H, W)`` of ``model``'s score for ``target`` on ``images`` (Captum).

    Args:
        model: a classifier (a registered model for Grad-CAM's layer, unless ``layer`` is given).
        images: the model's float input ``(N, C, H, W)`` (normalized as it was trained), on its device.
        method: one of :data:`METHODS`.
        target: the class to explain: an int, one per image, or None for each image's predicted class.
        layer: Grad-CAM's layer; default the registry's :func:`~cnnlab.models.cam_layer`.
        steps: Integrated Gradients' steps.

    Returns:
        Detached float maps on the images' device; larger means more evidence for ``target``.

    Shape:
        (N, C, H, W) -> (N, H, W)
    """
    attr = require("captum.attr", "explain", "cnnlab explain (Captum)")
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point()):
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {getattr(images, 'shape', images)!r}")
    with eval_mode(model):
        target = _targets(model, images, target)
        x = images.detach().clone().requires_grad_(True)
        n, c, h, w = x.shape
        if method == "gradcam":
            if layer is None:
                from cnnlab.models import cam_layer

                layer = cam_layer(model, image_size=(h, w))[1]
            # A model that averages test-time views (FastNet's flip_tta, shift_tta) runs the layer once per view,
            # and the hook would keep the last view's activations (a mirror image's map): Grad-CAM reads the
            # model on the image as given; the target stays the averaged model's prediction.
            forward = getattr(model, "single_view", model)
            maps = attr.LayerGradCam(forward, layer).attribute(x, target=target, relu_attributions=True)
            # Bilinear upsampling assumes the layer's cells tile the image evenly, as a same-padded net's do
            # (FastNet: 7x7 cells of 4 px); LeNet's valid convolutions centre its 5x5 cells at 4j + 5.5 px, up
            # to 3 px from where the upsampled map puts them (docs/explain.md, localization).
            maps = attr.LayerAttribution.interpolate(maps.float(), (h, w), interpolate_mode="bilinear")[:, 0]
        elif method == "ig":
            maps = attr.IntegratedGradients(model).attribute(x, torch.zeros_like(x), target=target,
                                                             n_steps=steps).sum(1)
        elif method == "occlusion":
            side = max(2, min(h, w) // 7)  # a patch a seventh of the image, moved half a patch at a time
            maps = attr.Occlusion(model).attribute(x, sliding_window_shapes=(c, side, side),
                                                   strides=(c, max(1, side // 2), max(1, side // 2)),
                                                   target=target, baselines=0.0,
                                                   # several patches per forward: one each is 169 passes at 28x28
                                                   perturbations_per_eval=max(1, 256 // n)).sum(1)
        else:
            maps = attr.Saliency(model).attribute(x, target=target, abs=True).amax(1)
    return maps.detach().float()


def _targets(model: nn.Module, images: torch.Tensor, target) -> torch.Tensor:
    """``target`` as one class index per image; the predicted class where it is None."""
    if target is None:
        with torch.no_grad():
            return model(images).argmax(1)
    target = torch.as_tensor(target, device=images.device).long().reshape(-1)
    return target.expand(len(images)) if len(target) == 1 else target


def ig_completeness(model: nn.Module, images: torch.Tensor, target=None, steps: int = IG_STEPS) -> torch.Tensor:
    """Integrated Gradients' relative completeness error per image: ``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|``.

    Completeness (Sundararajan et al. 2017, axiom 1) says the attributions add up to the score's change from the
    baseline; Captum's convergence delta is the difference, divided here by the change itself.
    """
    attr = require("captum.attr", "explain", "cnnlab explain (Captum)")
    with eval_mode(model):
        target = _targets(model, images, target)
        baseline = torch.zeros_like(images)
        _, delta = attr.IntegratedGradients(model).attribute(images, baseline, target=target, n_steps=steps,
                                                             return_convergence_delta=True)
        with torch.no_grad():
            rows = torch.arange(len(images), device=images.device)
            change = model(images)[rows, target] - model(baseline)[rows, target]
    return (delta.abs() / change.abs().clamp_min(1e-12)).detach().cpu()


def explain_images(loaded: LoadedModel, images_uint8: torch.Tensor, method: str = "gradcam", target=None,
                   truths=None) -> list[Explanation]:
    """Explain a trained model's predictions on uint8 images ``(N, H, W)`` or ``(N, C, H, W)``.

    The images are prepared as ``cnnlab predict`` prepares them (:meth:`LoadedModel.preprocess`).
    """
    model = loaded.model
    device = device_of(model)
    x = loaded.preprocess(images_uint8.to(device))
    with eval_mode(model), torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1).cpu()
    if target is not None and not 0 <= int(target) < probs.shape[1]:
        raise ConfigError(f"--target {target} is not a class of this model; it has {probs.shape[1]} classes "
                          f"(0..{probs.shape[1] - 1}): {', '.join(loaded.class_names)}")
    maps = explain(model, x, method, target).cpu()
    predicted = probs.argmax(1)
    targets = predicted if target is None else torch.full_like(predicted, int(target))
    truths = list(truths) if truths is not None else [None] * len(maps)
    return [Explanation(heatmap=maps[i], predicted=int(predicted[i]), probability=float(probs[i, predicted[i]]),
                        target=int(targets[i]), truth=truths[i]) for i in range(len(maps))]


def plot_explanations(loaded: LoadedModel, images_uint8: torch.Tensor, explanations: list[Explanation],
                      names: list[str], path: str | os.PathLike, method: str, show_input: bool = False) -> Path:
    """Draw pictures with their heat maps, titled with the true and predicted class and the probability."""
    from cnnlab.analysis.figures import picture
    from cnnlab.visual.plotting import plot_overlays

    classes = loaded.class_names
    titles = []
    for name, e in zip(names, explanations, strict=True):
        truth = f"true: {classes[e.truth]}\n" if e.truth is not None else ""
        why = "" if e.target == e.predicted else f"\nexplained: {classes[e.target]}"
        titles.append(f"{name}\n{truth}pred: {classes[e.predicted]} {e.probability:.2f}{why}")
    model_name = loaded.state.get("model_name") or type(loaded.model).__name__
    title = f"{_LABELS[method]} of {model_name}"
    return plot_overlays([picture(image.cpu()) for image in images_uint8], [e.heatmap for e in explanations],
                         titles, path, title, ncols=1 if show_input else 6, show_input=show_input)


_LABELS = {"gradcam": "Grad-CAM", "ig": "Integrated Gradients", "occlusion": "Occlusion", "saliency": "Saliency"}
