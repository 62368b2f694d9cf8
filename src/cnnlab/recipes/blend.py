"""The automatic recipe's last step: the trained net's test-time shifts, and the net averaged with a linear
classifier on its input pixels where the validation split says the average is better (issue 23: never below a
baseline on the raw pixels).

A net trained on random crops of up to 2 pixels scores a test image better as the mean of its predictions over
the image shifted by up to 2 pixels each way (25 views, :func:`cnnlab.nn.layers.shifted_views`): the training's
own augmentation, so safe for any data that it was (airbench averages such translations too). Over the
collection's 30 cropped runs the means rose over one view's on every set not already at 1.000 (docs/own-images.md).
Each view is a pass of the net, so :func:`tta_shift` keeps to the views that the clock allows: a large test
split gets fewer, or one.

On a few hundred images a CNN may fall short of a linear model on the pixels (200 Fashion-MNIST images at 28 px:
the net 0.723-0.747, the linear model 0.740-0.777), and the two err on different images, so the mean of their
probabilities beats both. After training, :class:`FinishBest` fits softmax regression on the training images as
the net sees them (:func:`~cnnlab.training.baseline.fit_linear`, its L2 strength chosen on the validation split),
then the head's share ``w`` of the mixture from :data:`BLEND_WEIGHTS` by the validation split's log-loss (a
finer measure than its accuracy on a split of 20 images). Where no share lowers it the net stays alone. A chosen
``w`` is written into ``best.pt`` as the model's own ``pixel_blend`` argument
(:class:`~cnnlab.models.fastnet.FastNet`), so that ``evaluate``, ``predict``, ``explain`` and ``export`` all use
what the test accuracy scored.

The validation split also chose the best epoch, which flatters the net over the head: the choice leans to the net.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from cnnlab.data.batching import CROP_PADDING
from cnnlab.training.baseline import MAX_BASELINE_IMAGES, fit_standardized, fixed_subset
from cnnlab.training.callbacks import Callback
from cnnlab.training.runtime import eval_batch_size

__all__ = ["BLEND_WEIGHTS", "MAX_HEAD_VALUES", "TTA_BUDGET_SHARE", "TTA_SECONDS", "FinishBest", "blend_seconds",
           "choose_blend", "finish_best_checkpoint", "fit_pixel_head", "scored_after_training", "tta_shift",
           "tta_views"]

# Seconds the test-time views may take (the final pass and the blend's validation pass, every view counted), at
# most, or this share of a --budget. photos-32 (400 test and 120 validation images at 32 px): 25 views, estimated
# at 8.3 s, its test pass timed at 3.5 s (AMD EPYC, 2 cores); 10,000 test images at 28 px: one view (~4.5 s),
# where nine took ~45 s.
TTA_SECONDS = 15.0
TTA_BUDGET_SHARE = 0.1
BLEND_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)  # the head's shares tried besides none: never more than the net's
# Training inputs x features the head is fitted on at most: its L-BFGS fits cost time in proportion (with the
# classes). Of grey 28 px images a random 5,102, of 32 px colour ones 1,302.
MAX_HEAD_VALUES = 4_000_000
# Seconds of the head's fits per training input x feature, at worst: 10,000 of Fashion-MNIST's images as a folder
# (784 features, 10 classes) took 4.8 s, 6.1e-7 s a value (AMD EPYC, 2 cores; random inputs, which a linear model
# separates or gives up on sooner, 0.5 s); 2,604 random 32 px colour ones with 100 classes took 1.9x the time of 10
# classes. Times the square root of a tenth of the classes, from 10 up.
SECONDS_PER_HEAD_VALUE = 6.5e-7


def scored_after_training(data, blend: bool) -> int:
    """The images an image folder's run scores after training, once per test-time view: its test split (its
    validation split where it has none) and, with ``blend``, the pixel blend's validation pass."""
    test = data.test_labels if data.has_test else data.val_labels
    return len(test) + (len(data.val_labels) if blend else 0)


def tta_views(shift: int) -> int:
    """The views of a test-time shift of up to ``shift`` pixels each way: ``(2 * shift + 1) ** 2`` (0: one)."""
    return (2 * shift + 1) ** 2


def tta_shift(images: int, seconds_per_image: float | None, seconds: float = TTA_SECONDS) -> int:
    """The test-time shift for a net trained on random crops: the largest, up to the crops' own
    :data:`~cnnlab.data.batching.CROP_PADDING` (every shift they taught it; 25 views scored above 9, and 9 above
    5, docs/own-images.md), whose views of ``images`` images take at most ``seconds``; 0 (one view) if none.

    ``seconds_per_image``: a training step's time per image, which a view's fp32 pass took 0.4-0.6x of (fashion-16
    at 16 px 0.4, photos-32 at 32 px 0.55; AMD EPYC, 2 cores): an estimate that errs long. None (no step was
    timed: a GPU, ``--threads``, torchrun): every shift, as the plan's steps are then not cut to the clock either.
    """
    for shift in range(CROP_PADDING, 0, -1):
        if seconds_per_image is None or tta_views(shift) * images * seconds_per_image <= seconds:
            return shift
    return 0


def fit_pixel_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression on the flattened inputs, standardized for the fit, its L2 strength the one of lowest
    validation log-loss; returned as ``(W, b)`` of a linear layer on the unstandardized flattened inputs.

    Shape:
        ``train_x`` (N, C, H, W), ``val_x`` (M, C, H, W) float -> ``W`` (K, C*H*W), ``b`` (K,).
    """
    W, b, mean, std, _ = fit_standardized(train_x.flatten(1).float(), train_y, val_x.flatten(1).float(), val_y,
                                          num_classes, lambda logits, labels: float(F.cross_entropy(logits, labels)))
    W = W / std  # folded in: the head then reads the net's own input
    return W, b - W @ mean


def choose_blend(net_logits: torch.Tensor, head_logits: torch.Tensor,
                 labels: torch.Tensor) -> tuple[float, float, float]:
    """The head's share of lowest validation log-loss (0 where none beats the net alone), with the net's log-loss
    and the chosen mixture's."""
    from cnnlab.models.fastnet import blend_logits

    alone = float(F.cross_entropy(net_logits.float(), labels))
    best = (alone, 0.0)
    for weight in BLEND_WEIGHTS:
        loss = float(F.cross_entropy(blend_logits(net_logits, head_logits, weight), labels))
        if loss < best[0]:
            best = (loss, weight)
    return best[1], alone, best[0]


def blend_seconds(data) -> float:
    """What :func:`blend_best_checkpoint` may take, at most, on the image-folder data module ``data`` (a
    ``--budget`` keeps it free): the head's fits, plus a second for the checkpoint's reading and writing. Its pass
    over the validation split a budget counts with the final pass's images, timed per image."""
    channels, height, width = data.image_shape
    features = channels * height * width
    fitted = min(len(data.train_labels), _subset_size(features))
    return 1.0 + SECONDS_PER_HEAD_VALUE * fitted * features * max(1.0, len(data.classes) / 10) ** 0.5


@torch.no_grad()
def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    batch_size = eval_batch_size(inputs.device)
    return torch.cat([model(inputs[i:i + batch_size]).float() for i in range(0, len(inputs), batch_size)])


def _subset_size(features: int) -> int:
    return max(1, min(MAX_BASELINE_IMAGES, MAX_HEAD_VALUES // max(1, features)))


def finish_best_checkpoint(run_dir, data, log=print, *, shift_tta: int = 0, blend: bool = True) -> float:
    """The run's best checkpoint made what the test pass scores: with ``shift_tta`` its net averages the shifted
    views by up to ``shift_tta`` pixels that its crops taught it (FastNet's own); with ``blend`` the pixel head is
    fitted on ``data``'s training images and its share chosen on the validation split (after the shifts: the head
    joins the net as tested). Where either changed the model, it is written into the checkpoint (atomically).
    Returns the head's share (0: none). ``data``: the run's data module (an image folder's, for the blend)."""
    from cnnlab.inference.loaded import load_trained
    from cnnlab.models import create_model
    from cnnlab.training.checkpoint import save_checkpoint

    start = time.perf_counter()
    loaded = load_trained(run_dir)
    kwargs = dict(loaded.state.get("model_kwargs") or {})
    if kwargs.get("pixel_blend") or kwargs.get("shift_tta"):
        return float(kwargs.get("pixel_blend") or 0.0)  # finished already (a finished run resumed)
    model = loaded.model
    if shift_tta and "shift_tta" in kwargs:
        model = create_model(loaded.state["model_name"], **{**kwargs, "shift_tta": int(shift_tta)})
        model.load_state_dict(loaded.model.state_dict())
        if log is not None:
            log(f"test-time shifts: each image scored as the mean of the net's predictions over its "
                f"{tta_views(shift_tta)} shifts by up to {shift_tta} pixel{'s' if shift_tta > 1 else ''} (the "
                f"random crops it trained on)")
    weight = 0.0
    if blend and len(data.val_labels) and "pixel_blend" in kwargs:
        model, weight = _blend(model, loaded, data, log, start)
    if model is not loaded.model:
        save_checkpoint({**loaded.state, "model_state": model.state_dict(), "model_kwargs": model.model_kwargs},
                        loaded.checkpoint)
    return weight


def _blend(model, loaded, data, log, start: float) -> tuple[torch.nn.Module, float]:
    """``model`` with the pixel head of lowest validation log-loss, and its share; ``model`` itself where none
    lowers it."""
    from cnnlab.models import create_model

    val_in, val_y = loaded.preprocess(data.val_images).cpu(), data.val_labels.cpu()
    val_x = model.balanced_input(val_in)  # the head reads what the net reads
    images, labels = fixed_subset(data.train_images, data.train_labels, _subset_size(val_x[0].numel()))
    W, b = fit_pixel_head(model.balanced_input(loaded.preprocess(images).cpu()), labels.cpu(), val_x, val_y,
                          len(loaded.class_names))
    weight, alone, blended = choose_blend(_logits(model, val_in), val_x.flatten(1) @ W.T + b, val_y)
    seconds = time.perf_counter() - start
    if weight == 0:
        if log is not None:
            log(f"pixel blend: none (a linear classifier on the pixels did not lower the validation log-loss "
                f"{alone:.3f}; {seconds:.1f} s)")
        return model, 0.0
    blended_model = create_model(loaded.state["model_name"], **{**model.model_kwargs, "pixel_blend": weight})
    blended_model.load_state_dict({**model.state_dict(), "pixel_head.weight": W, "pixel_head.bias": b})
    if log is not None:
        log(f"pixel blend: the net's probabilities averaged with a linear classifier's on the pixels, weight "
            f"{weight:g} (validation log-loss {alone:.3f} -> {blended:.3f}; {seconds:.1f} s)")
    return blended_model, weight


class FinishBest(Callback):
    """Runs :func:`finish_best_checkpoint` when the fit ends, before the test split is scored (rank 0 alone)."""

    def __init__(self, data, log=print, *, shift_tta: int = 0, blend: bool = True):
        self.data, self.log, self.shift_tta, self.blend = data, log, shift_tta, blend

    def on_fit_end(self, trainer, model) -> None:
        if trainer.is_main and trainer.run_dir is not None:
            finish_best_checkpoint(trainer.run_dir, self.data, self.log, shift_tta=self.shift_tta, blend=self.blend)
