"""The training loop: d2l's ``Trainer(max_epochs, num_gpus).fit(model, data)`` (d2l §3.4), made for real runs.

What the book's loop leaves out and this one adds: a device choice, no host sync per step (the loss is summed
on the device and read at progress refreshes), a progress bar, per-epoch metrics in CSV and JSON lines, a
curves PNG, atomic checkpoints (``last.pt`` every epoch, ``best.pt`` by validation accuracy), exact resume,
divergence detection, and DistributedDataParallel when launched by torchrun.

The model is never asked to move itself: the trainer owns devices, as in Lightning.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab import distributed as dist_utils
from cnnlab.atomic import atomic_write
from cnnlab.board import in_notebook, live_board
from cnnlab.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from cnnlab.errors import ConfigError, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "pick_device", "bf16_is_fast", "bf16_default", "evaluate",
           "EvalResult", "seed_everything"]

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_acc", "images_per_s", "seconds")


def pick_device(device: str | torch.device | None = "auto", num_gpus: int = 0) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; ``num_gpus=0`` with no device means the CPU.

    Raises:
        ValueError: a device that this machine does not have, with what it does have.
    """
    if device is None:
        device = "auto" if num_gpus > 0 else "cpu"
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was asked for but this machine has no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device} was asked for but MPS is not available here; use --device cpu")
    return device


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast speeds training up on ``device``.

    True on a CUDA GPU with native bf16 (Ampere or later) and on a CPU with AVX512-BF16 or AMX (Intel since
    Cooper Lake / Sapphire Rapids, AMD since Zen 4), where oneDNN runs bf16 convolutions 2-4x faster than fp32;
    False elsewhere, where bf16 is emulated and slower.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def bf16_default(device: str | torch.device) -> bool:
    """Whether bf16 autocast is on by default on ``device``: ``$CNNLAB_BF16`` if set, else :func:`bf16_is_fast`.

    ``CNNLAB_BF16=0`` turns it off everywhere (as on a CPU without bf16), ``CNNLAB_BF16=1`` on. The variable
    exists because CPUs that both have bf16 kernels round differently (Intel's AMX and AMD's AVX512-BF16), so a
    user comparing runs across machines, or a test suite, must be able to pin it.

    Raises:
        ValueError: the variable is set to something other than 0 or 1.
    """
    text = os.environ.get("CNNLAB_BF16", "").strip()
    if not text:
        return bf16_is_fast(device)
    if text not in ("0", "1"):
        raise ConfigError(f"CNNLAB_BF16 must be 0 (bf16 autocast off) or 1 (on), got {text!r}; unset it to let "
                         "cnnlab decide from the hardware")
    return text == "1"


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (cnnlab draws all its randomness from torch)."""
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch re-seeds from (seed, epoch), so a run resumed at an epoch boundary draws exactly the
    # random numbers (dropout masks, init of nothing else) that the uninterrupted run drew.
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


@dataclass
class EvalResult:
    """Loss, accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""

    loss: float
    accuracy: float
    count: int
    confusion: torch.Tensor

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return self.confusion.diagonal().double() / totals


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", num_classes: int | None = None,
             autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader``: mean loss, accuracy and the confusion matrix."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    num_classes = num_classes or getattr(model, "num_classes", None) or 10
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    count = 0
    for X, y in loader:
        X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            logits = model(X)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(dim=1), minlength=num_classes**2)
        count += y.numel()
    model.train(was_training)
    confusion = confusion.reshape(num_classes, num_classes).cpu()
    correct = int(confusion.diagonal().sum())
    return EvalResult(loss=float(loss_sum) / max(count, 1), accuracy=correct / max(count, 1), count=count,
                      confusion=confusion)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Fit a classifier to a data module: ``Trainer(max_epochs=10).fit(model, data)`` (d2l §3.4).

    Args:
        max_epochs: number of passes over the training data.
        num_gpus: the book's argument; 0 trains on the CPU, >= 1 on a GPU when there is one.
        device: 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'; overrides ``num_gpus``.
        run_dir: folder for metrics.csv/jsonl, curves.png, last.pt and best.pt; None writes no files.
        seed: seeds the run (and each epoch, so that resume is exact); None leaves torch's RNG alone.
        optimizer: ``params -> Optimizer``; None uses ``model.configure_optimizers()``.
        scheduler: ``(optimizer, steps_per_epoch, max_epochs) -> LR scheduler`` stepped every batch, or None.
        clip_grad_norm: clip the global gradient norm to this value (0 disables).
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision, None for full precision.
        channels_last: store images and conv weights NHWC (faster convolutions on many CPUs and GPUs).
        compile: run the training forward and backward through ``torch.compile`` (pays for its compile time,
            tens of seconds, only on long runs; needs a C++ compiler on the CPU, Triton on a GPU).
        progress: show a tqdm bar per epoch.
        log: where the per-epoch line goes (``print`` by default; None for silence).
        checkpoint_extra: plain values stored in every checkpoint (the CLI stores its settings there).
        on_epoch_end: called with (trainer, row) after each epoch's files are written.
        board: the live figure of the book's ``fit`` (see :mod:`cnnlab.board`): 'auto' draws it in a Jupyter
            notebook and nothing elsewhere; None never draws; or an object with ``step(loss)``,
            ``epoch(row)`` and ``close()``.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, device: str | torch.device | None = None,
                 run_dir: str | os.PathLike | None = None, seed: int | None = None,
                 optimizer: Callable | None = None, scheduler: Callable | None = None,
                 clip_grad_norm: float = 0.0, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = print, checkpoint_extra: dict | None = None,
                 on_epoch_end: Callable | None = None, board="auto"):
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        self.max_epochs = max_epochs
        self.device = pick_device(device, num_gpus)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.clip_grad_norm = clip_grad_norm
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.compile = compile
        self.progress = progress
        self.log = log
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.on_epoch_end = on_epoch_end
        self.board = board
        self._live = None  # the board fit() trains with
        self.history: list[dict] = []
        self.best_val_acc = -1.0
        self.epoch = 0
        self.ctx = dist_utils.current()

    # ---- set-up ----------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.log is not None and self.ctx.is_main:
            self.log(message)

    def prepare(self, model: nn.Module, data) -> None:
        """Move model and data to the device, build loaders and optimizer (and DDP under torchrun)."""
        if self.seed is not None:
            seed_everything(self.seed)
        if self.device.type == "cpu" and self.seed is not None:
            # Same seed, same machine, same weights: CPU kernels are deterministic once asked to be.
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Deterministic mode also fills every new tensor with NaN, a debugging aid that exposes reads of
            # uninitialized memory; results never depend on it, and on small models it costs ~5% of a step.
            torch.utils.deterministic.fill_uninitialized_memory = False
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # Every batch has the same shape, so timing cuDNN's algorithms once per shape pays at once.
            torch.backends.cudnn.benchmark = True
        if hasattr(data, "to"):
            data.to(self.device)
        self.data = data
        self.train_loader = data.train_dataloader()
        self.val_loader = data.val_dataloader()
        if self.ctx.world_size > 1 and hasattr(self.train_loader, "shard"):
            # Each rank takes a disjoint, equal share of every epoch's permutation (the train batch size is the
            # global one; the caller checks it divides). The validation batch size is ours to round.
            world = self.ctx.world_size
            self.train_loader.shard(self.ctx.rank, world)
            self.val_loader.batch_size = max(world, self.val_loader.batch_size // world * world)
            self.val_loader.shard(self.ctx.rank, world)
        self.net = dist_utils.wrap_model(self.model, self.device, self.ctx)
        if self.compile:
            # dynamic=False: the last, smaller batch gets its own static graph rather than turning every
            # step's graph into a slower dynamic-shape one. evaluate() runs the model eagerly.
            self.net = torch.compile(self.net, dynamic=False)
        self.optimizer = (self.optimizer_factory(self.model.parameters()) if self.optimizer_factory
                          else self.model.configure_optimizers())
        self.scheduler = (self.scheduler_factory(self.optimizer, len(self.train_loader), self.max_epochs)
                          if self.scheduler_factory else None)

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        model = self.model
        return {
            "version": CHECKPOINT_VERSION,
            "model_name": getattr(model, "model_name", None),
            "model_kwargs": dict(getattr(model, "model_kwargs", {}) or {}),
            "hparams": dict(getattr(model, "hparams", {}) or {}),
            "model_state": model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "max_epochs": self.max_epochs,
            "seed": self.seed,
            "history": list(self.history),
            "best_val_acc": self.best_val_acc,
            "rng_state": torch.get_rng_state(),
            "data_settings": self.data.settings() if hasattr(self.data, "settings") else {},
            **self.checkpoint_extra,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore model, optimizer, scheduler, epoch, metrics history and RNG from a checkpoint dict."""
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if self.scheduler is not None and state.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(state["scheduler_state"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.best_val_acc = float(state.get("best_val_acc", -1.0))
        if state.get("rng_state") is not None:
            torch.set_rng_state(state["rng_state"].cpu())

    def _write_checkpoints(self, is_best: bool) -> None:
        state = self.state_dict()
        # best.pt first: a crash between the two writes then redoes this epoch (resume reads last.pt) and
        # rewrites best.pt, instead of leaving a best.pt that misses its best epoch forever.
        if is_best:
            save_checkpoint(state, self.run_dir / "best.pt")
        save_checkpoint(state, self.run_dir / "last.pt")

    def _write_metrics(self) -> None:
        # Rewritten whole from the history each epoch (small), so a resumed run's files never hold rows of
        # epochs that were lost in a crash; atomic_write keeps them whole if we die mid-write.
        rows = self.history
        with atomic_write(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with atomic_write(self.run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        from cnnlab.plotting import plot_curves

        plot_curves(rows, self.run_dir / "curves.png")

    # ---- the loop --------------------------------------------------------------------------------

    def fit(self, model: nn.Module, data, resume_from: str | os.PathLike | dict | None = None) -> list[dict]:
        """Train ``model`` on ``data`` for ``max_epochs`` epochs (continuing a checkpoint if given).

        Returns:
            One metrics dict per epoch (train_loss, val_loss, val_acc, images_per_s, seconds).

        Raises:
            TrainingDiverged: the loss became NaN or infinite (``last.pt`` still holds the last good epoch).
        """
        self.prepare(model, data)
        if resume_from is not None:
            state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from, self.device)
            self.load_state_dict(state)
            if self.epoch < self.max_epochs:
                self._say(f"resuming at epoch {self.epoch + 1}/{self.max_epochs}")
        if self.run_dir is not None and self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # The book's live figure (cnnlab.board): fed each batch's loss and each epoch's row; None outside Jupyter.
        self._live = (live_board(self.board, self.max_epochs, len(self.train_loader), self.epoch)
                      if self.ctx.is_main else None)
        while self.epoch < self.max_epochs:
            row = self._fit_epoch()
            self.history.append(row)
            is_best = row["val_acc"] > self.best_val_acc
            self.best_val_acc = max(self.best_val_acc, row["val_acc"])
            if self.run_dir is not None and self.ctx.is_main:
                self._write_checkpoints(is_best)
                self._write_metrics()
            self._say(
                f"epoch {row['epoch']}/{self.max_epochs}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}  "
                f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s"
            )
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, row)
            if self._live is not None:
                self._live.epoch(row)
        if self._live is not None:
            self._live.close()
        return self.history

    def _fit_epoch(self) -> dict:
        epoch = self.epoch
        if self.seed is not None:
            # Plus the rank, so that ranks draw different dropout masks (rank 0 draws the single-process ones).
            torch.manual_seed(_epoch_seed(self.seed, epoch) + self.ctx.rank)
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        self.model.train()
        device = self.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        start = time.perf_counter()
        bar = self._progress_bar(epoch)
        for step, (X, y) in enumerate(self.train_loader):
            X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            with _autocast(device, self.autocast_dtype):
                loss = self.model.loss(self.net(X), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach().double() * y.shape[0]
            if self._live is not None:
                self._live.step(loss)
            seen += y.shape[0]
            if bar is not None and (step % 20 == 0 or step == len(self.train_loader) - 1):
                # The only host sync inside an epoch, every 20 steps, to show the running loss.
                running = float(loss_sum) / seen
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{running:.4f}", img_s=f"{seen * self.ctx.world_size / elapsed:,.0f}")
                bar.update(step + 1 - bar.n)
                if self.ctx.world_size == 1:  # under DDP only the all-reduced check below, taken by all ranks
                    self._check_finite(running, epoch)
        if bar is not None:
            bar.close()
        totals = dist_utils.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device,
                                                                               dtype=torch.float64)]), self.ctx)
        train_loss = float(totals[0] / totals[1])
        self._check_finite(train_loss, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        dist_utils.sync_buffers(self.model, self.ctx)  # rank 0's BatchNorm statistics, as its checkpoint holds
        val_loss, val_acc = self._validate()
        seconds = time.perf_counter() - start
        self.epoch = epoch + 1
        return {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
                "images_per_s": float(totals[1]) / train_seconds, "seconds": seconds}

    def _validate(self) -> tuple[float, float]:
        result = evaluate(self.model, self.val_loader, self.device, autocast_dtype=self.autocast_dtype)
        sums = torch.tensor([result.loss * result.count, result.accuracy * result.count, result.count],
                            dtype=torch.float64, device=self.device)
        sums = dist_utils.all_reduce_sum(sums, self.ctx)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def _check_finite(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            last = self.run_dir / "last.pt" if self.run_dir is not None else None
            # Only a checkpoint that exists is named: in epoch 1 there is none yet.
            where = f"; {last} keeps the last good epoch" if last is not None and last.is_file() else ""
            raise TrainingDiverged(
                f"the training loss became {loss} in epoch {epoch + 1}: training diverged; "
                f"try a lower --lr (the rate was {self._lr():.3g} at that point){where}"
            )

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _progress_bar(self, epoch: int):
        if not self.progress or not self.ctx.is_main:
            return None
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (CI logs, files), where \r updates are noise; in a
        # notebook (never a terminal) tqdm.auto's widget bar is shown.
        return tqdm(total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.max_epochs}", leave=False,
                    disable=False if in_notebook() else None, unit="batch", dynamic_ncols=True)
