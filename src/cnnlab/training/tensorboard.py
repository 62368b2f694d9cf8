"""TensorBoard logging as a Trainer callback: ``Trainer(callbacks=[TensorBoardLogger(run_dir / "tb")])``.

What it writes (``tensorboard --logdir RUN/tb`` shows it), every scalar at ``global_step`` = the epoch number:

- each epoch: ``train/loss``, ``val/loss``, ``val/accuracy``, ``lr``, ``images_per_s``, and ``time/epoch_s`` and
  ``time/elapsed_s`` when the row has ``seconds`` and ``elapsed``;
- once, when a run starts from epoch 0: the model's graph (a failed trace is a warning, never a crash);
- at the end: the validation confusion matrix (the figure :func:`cnnlab.visual.plotting.plot_confusion` draws for the
  report) and the first conv layer's kernels as an image grid.

Only the main process writes. A resumed run reopens the folder with ``purge_step`` = the first epoch it trains,
so TensorBoard drops any step the interrupted run logged after its checkpoint: each step appears once.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab.extras import require
from cnnlab.nn.classifier import device_of
from cnnlab.nn.ops import size_pair
from cnnlab.training.callbacks import Callback

__all__ = ["TensorBoardLogger", "kernel_grid"]


class TensorBoardLogger(Callback):
    """Write a run's curves, graph, confusion matrix and first-layer kernels for TensorBoard.

    Args:
        log_dir: the folder of event files (created when the fit starts), e.g. ``run_dir / "tb"``.
        class_names: the names on the confusion matrix's axes; None takes ``trainer.data.classes`` when the data
            module has them, else the class indices.
        log_graph: add the model's graph (a ``torch.jit.trace`` of one batch) when a run starts at epoch 0.

    Raises:
        MissingExtra: tensorboard is not installed (``pip install 'cnnlab[tensorboard]'``).
    """

    def __init__(self, log_dir: str | os.PathLike, *, class_names: list[str] | None = None, log_graph: bool = True):
        require("tensorboard", "tensorboard", "TensorBoard logging")  # fail before training, not after it
        self.log_dir = Path(log_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.log_graph = log_graph
        self.writer = None
        self._start_epoch = 0

    # ---- the trainer's hooks -----------------------------------------------------------------------------

    def on_fit_start(self, trainer, model: nn.Module) -> None:
        """Open the writer; a resumed run (``trainer.epoch > 0``) purges the steps after its checkpoint."""
        self._start_epoch = int(trainer.epoch)
        if not trainer.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        # Steps > trainer.epoch may have been logged by the interrupted run after its last checkpoint; purge_step
        # makes TensorBoard's reader drop them, and the resumed run logs them again.
        purge_step = self._start_epoch + 1 if self._start_epoch > 0 else None
        self.writer = SummaryWriter(os.fspath(self.log_dir), purge_step=purge_step)
        if self._start_epoch == 0 and self.log_graph:
            self._add_graph(trainer, model)

    def on_train_epoch_end(self, trainer, model: nn.Module, row: dict) -> None:
        """Log the epoch's metrics row at ``global_step = row["epoch"]``."""
        if self.writer is None:
            return
        step = int(row["epoch"])
        scalars = {"train/loss": row.get("train_loss"), "val/loss": row.get("val_loss"),
                   "val/accuracy": row.get("val_acc"), "lr": row.get("lr"), "images_per_s": row.get("images_per_s"),
                   "time/epoch_s": row.get("seconds"), "time/elapsed_s": row.get("elapsed")}
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()  # a crash or a kill later loses no finished epoch

    def on_fit_end(self, trainer, model: nn.Module) -> None:
        """Add the confusion matrix and the first conv layer's kernels at the last epoch, then close the writer.

        Every process evaluates its share of the validation set (under DDP each holds one shard), so the matrix
        counts the whole set. A call that trained nothing (a finished run resumed) adds no figures: the first
        call added them at this step.
        """
        if trainer.epoch > self._start_epoch:
            result = _evaluate_everywhere(trainer, model, self.class_names)
            if self.writer is not None:
                step = int(trainer.epoch)
                self._add_confusion(trainer, result, step)
                self._add_kernels(model, step)
        self.close()

    def on_exception(self, trainer, model: nn.Module, exc: BaseException) -> None:
        """Close the writer when the fit raised: the epochs logged so far stay readable."""
        self.close()

    def close(self) -> None:
        """Flush and close the event file (``on_fit_end`` and ``on_exception`` call it)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ---- what is drawn ------------------------------------------------------------------------------------

    def _add_graph(self, trainer, model: nn.Module) -> None:
        from cnnlab.nn.classifier import eval_mode

        shape = _input_shape(trainer, model)
        if shape is None:
            warnings.warn("TensorBoard: the model graph was left out: the input shape is unknown (the data module "
                          "has no image_shape and the model no model_kwargs)", RuntimeWarning, stacklevel=3)
            return
        example = torch.zeros(2, *shape, device=device_of(model))
        try:
            # eval mode under no_grad: tracing must not move BatchNorm statistics or draw dropout masks, or a run
            # with TensorBoard would train differently from one without. add_graph prints its errors: muted.
            with eval_mode(model), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's TracerWarnings concern the graph view only
                self.writer.add_graph(model, example)
        except Exception as exc:  # noqa: BLE001 - a graph TensorBoard cannot draw must not stop training
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            warnings.warn(f"TensorBoard: the model graph was left out ({type(exc).__name__}: {first})",
                          RuntimeWarning, stacklevel=3)

    def _add_confusion(self, trainer, result, step: int) -> None:
        from PIL import Image

        from cnnlab.visual.plotting import plot_confusion

        names = self._names(trainer, result.confusion.shape[0])
        title = f"Validation confusion matrix after epoch {step} (accuracy {result.accuracy:.2%})"
        # Drawn by the report's own function and read back, so TensorBoard shows the figure the report shows.
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_confusion(result.confusion, names, Path(tmp) / "confusion.png", title=title)
            with Image.open(path) as img:
                pixels = torch.from_numpy(_rgb_array(img))  # (H, W, 3) uint8
        self.writer.add_image("val/confusion_matrix", pixels, step, dataformats="HWC")

    def _add_kernels(self, model: nn.Module, step: int) -> None:
        from cnnlab.nn.summary import find_conv

        try:
            name, conv = find_conv(model)
        except ValueError:
            return  # no conv layer, nothing to draw
        self.writer.add_image(f"kernels/{name}", kernel_grid(conv.weight), step)

    def _names(self, trainer, num_classes: int) -> list[str]:
        names = self.class_names or list(getattr(getattr(trainer, "data", None), "classes", None) or [])
        return [str(n) for n in names] if len(names) == num_classes else [str(i) for i in range(num_classes)]


def kernel_grid(weight: torch.Tensor, tile_pixels: int = 40, max_tiles: int | None = None) -> torch.Tensor:
    """Conv kernels as one RGB image on a diverging scale: red > 0 > blue, white = 0, shared by every tile.

    A layer with one input channel gets one tile per output channel (16 a row). With several input channels each
    ``(out, in)`` pair gets a tile (a row per output channel) while there are at most ``max_tiles`` pairs; beyond
    that each output channel's kernel is averaged over its inputs, as
    :func:`cnnlab.analysis.figures.plot_layer_kernels` does.

    Args:
        weight: a conv weight ``(out, in, kh, kw)``.
        tile_pixels: about how many pixels a tile is wide (kernels are enlarged by a whole factor).
        max_tiles: the most tiles drawn; default ``cnnlab.visual.plotting.MAX_KERNEL_TILES``.

    Returns:
        A float tensor ``(3, H, W)`` in [0, 1], as ``SummaryWriter.add_image`` takes; tiles are parted by grey.

    Shape:
        weight ``(O, I, kh, kw)`` -> ``(3, rows * (kh * s + 1) + 1, cols * (kw * s + 1) + 1)``, ``s`` the factor.
    """
    from cnnlab.visual.plotting import MAX_KERNEL_TILES

    max_tiles = max_tiles or MAX_KERNEL_TILES
    w = weight.detach().float().cpu()
    out_ch, in_ch, kh, kw = w.shape
    if in_ch > 1 and out_ch * in_ch <= max_tiles:
        tiles, ncols = w.reshape(out_ch * in_ch, kh, kw), in_ch  # row o holds output channel o's input slices
    else:
        tiles = (w.mean(dim=1) if in_ch > 1 else w[:, 0])[:max_tiles]  # (out, kh, kw)
        ncols = min(len(tiles), 16)
    limit = float(tiles.abs().max()) or 1.0
    v = tiles / limit  # (n, kh, kw) in [-1, 1]
    rgb = torch.stack([1 - (-v).clamp(min=0), 1 - v.abs(), 1 - v.clamp(min=0)], dim=1)  # (n, 3, kh, kw)
    scale = max(1, tile_pixels // max(kh, kw))
    rgb = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (n, 3, kh*s, kw*s)
    th, tw = kh * scale, kw * scale
    nrows = math.ceil(len(rgb) / ncols)
    grid = torch.full((3, nrows * (th + 1) + 1, ncols * (tw + 1) + 1), 0.5)
    for k, tile in enumerate(rgb):
        r, c = divmod(k, ncols)
        grid[:, 1 + r * (th + 1):1 + r * (th + 1) + th, 1 + c * (tw + 1):1 + c * (tw + 1) + tw] = tile
    return grid


# ---- helpers ---------------------------------------------------------------------------------------------


def _evaluate_everywhere(trainer, model: nn.Module, class_names):
    """The validation result with the confusion matrix summed over all processes (None on a lone non-main one)."""
    from cnnlab.training import distributed as dist_utils
    from cnnlab.training.evaluation import evaluate

    ctx = dist_utils.current()  # the process group itself, whatever the trainer calls its context
    world = ctx.world_size
    if world == 1 and not trainer.is_main:
        return None
    num_classes = len(class_names) if class_names else getattr(getattr(trainer, "data", None), "num_classes", None)
    result = evaluate(model, trainer.val_loader, trainer.device, num_classes=num_classes)  # fp32, as cnnlab evaluate
    if world > 1:
        device = torch.device(trainer.device)
        confusion = dist_utils.all_reduce_sum(result.confusion.to(device), ctx).cpu()
        correct, count = int(confusion.diagonal().sum()), int(confusion.sum())
        result = type(result)(loss=result.loss, accuracy=correct / max(count, 1), count=count, confusion=confusion)
    return result


def _input_shape(trainer, model: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(getattr(trainer, "data", None), "image_shape", None)
    if shape is not None:
        return tuple(shape)
    kwargs = getattr(model, "model_kwargs", None) or {}
    if "in_channels" in kwargs and "image_size" in kwargs:
        size = kwargs["image_size"]
        h, w = size_pair(size)
        return kwargs["in_channels"], h, w
    return None


def _rgb_array(img):
    import numpy as np

    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
