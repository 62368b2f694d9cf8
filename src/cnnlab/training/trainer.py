"""The training loop: d2l's ``Trainer(max_epochs, num_gpus).fit(model, data)`` (d2l §3.4), made for real runs.

The trainer owns the loop and nothing else. Each step it calls the model's ``training_step(batch)`` and each
validation batch its ``validation_step(batch)``, as the book's Trainer does, so a subclass that changes
either is trained as written. Around the loop: a device, DistributedDataParallel under torchrun, bf16
autocast, channels_last, ``torch.compile``, a progress bar, divergence detection, exact resume, and hooks
(:mod:`cnnlab.training.callbacks`) for what else a run does; the run folder's files are one such hook
(:class:`cnnlab.training.runfolder.RunFolder`, added by ``run_dir=``). Torch's process-wide flags are set only for
the duration of :meth:`Trainer.fit` (:func:`cnnlab.training.runtime.torch_flags`).

The model is never asked to move itself: the trainer owns devices, as in Lightning.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.training import distributed as dist_utils
from cnnlab.training.callbacks import Callback, EpochEndFunction
from cnnlab.training.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from cnnlab.training.divergence import LossWatch, chance_loss, divergence_error, val_loss_far_above_chance
from cnnlab.training.evaluation import best_two_validation_mean, validation_totals, within_one_standard_error
from cnnlab.training.options import Display, Optimization, Speed, or_defaults
from cnnlab.training.runfolder import RunFolder
from cnnlab.training.runtime import autocast, epoch_seed, pick_device, seed_everything, torch_flags
from cnnlab.training.schedules import ClockProgress, ProgressLR, StepProgress, epochs_for_steps
from cnnlab.visual.board import epoch_bar, live_board

__all__ = ["Trainer"]


class _TrainingStep(nn.Module):
    """The model's ``training_step`` as a module's forward, so that DDP and ``torch.compile`` wrap the whole step
    (DDP syncs gradients of what its forward ran; the step may call the model any way it likes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.training_step(batch)


class Trainer:
    """Fit a classifier to a data module: ``Trainer(max_epochs=10).fit(model, data)`` (d2l §3.4).

    The model provides ``training_step(batch) -> loss``, ``validation_step(batch) -> (loss_sum, correct,
    count)`` and ``configure_optimizers()`` (:class:`cnnlab.Classifier` does); the data module provides
    ``train_dataloader()`` and ``val_dataloader()``.

    The book's arguments come first (``Trainer(max_epochs=10, num_gpus=1)`` is the book's call), then the device,
    the run folder and the seed; the rest are keywords, three of them groups of options
    (:mod:`cnnlab.training.options`), each left out keeping all its defaults:

    - ``optimization``: :class:`~cnnlab.training.options.Optimization` (optimizer, scheduler, clip_grad_norm);
    - ``speed``: :class:`~cnnlab.training.options.Speed` (autocast_dtype, channels_last, compile, deterministic);
    - ``display``: :class:`~cnnlab.training.options.Display` (progress, log, board).

    Args:
        max_epochs: number of passes over the training data.
        num_gpus: the book's argument; 0 trains on the CPU, >= 1 on a GPU when there is one.
        device: 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'; overrides ``num_gpus``.
        run_dir: the run folder (metrics, curves, ``last.pt``, ``best.pt``): adds a
            :class:`~cnnlab.training.runfolder.RunFolder` callback. None writes no files.
        seed: seeds the run (and each epoch, so that resume is exact) and makes CPU kernels deterministic;
            None leaves torch's RNG alone.
        optimization: how the weights are updated; None: ``model.configure_optimizers()``, no schedule.
        speed: precision, memory layout, compiling and deterministic kernels; None: fp32, NCHW, eager, and
            deterministic kernels when seeded on the CPU.
        display: the progress bar, the per-epoch line and the live figure; None: all three (the figure only in
            a notebook).
        callbacks: :class:`~cnnlab.training.callbacks.Callback` objects, called in order after the run folder's.
        checkpoint_extra: plain values stored in every checkpoint (the CLI stores its settings there).
        on_epoch_end: shorthand for a callback whose ``on_train_epoch_end`` calls ``on_epoch_end(trainer, row)``.
        max_steps: stop after this many optimizer steps in all (mid-epoch if need be; that epoch is still
            validated and checkpointed); ``max_epochs`` becomes the passes they need.
        pace: where the run's progress comes from (:mod:`cnnlab.training.schedules`): a ``StepProgress``,
            a ``ClockProgress`` (a budget: the run stops when its planned training time is used) or a
            ``ReplayProgress``; None counts steps over ``max_steps`` (or ``max_epochs``). A
            :class:`~cnnlab.training.schedules.ProgressLR` scheduler is stepped with it.
        validate_every: validate, checkpoint and call the epoch-end hooks every this many epochs (and after the
            last): a tiny data set's epochs of one or two steps need not each be validated.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, device: str | torch.device | None = None,
                 run_dir: str | os.PathLike | None = None, seed: int | None = None, *,
                 optimization: Optimization | None = None, speed: Speed | None = None, display: Display | None = None,
                 callbacks: Sequence[Callback] = (), checkpoint_extra: dict | None = None,
                 on_epoch_end: Callable | None = None, max_steps: int | None = None, pace=None,
                 validate_every: int = 1):
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ConfigError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        self.optimization = or_defaults(optimization, Optimization, "optimization")
        self.speed, self.display = or_defaults(speed, Speed, "speed"), or_defaults(display, Display, "display")
        self.max_epochs = max_epochs
        self.pace = pace if pace is not None or max_steps is None else StepProgress(max_steps)
        self.global_step = 0
        self.validate_every, self._unreported, self._stop = max(1, int(validate_every)), 0.0, max_epochs
        self.progress_trace: list[float] = []  # the progress each step took: a budgeted run's replay
        self.device = pick_device(device, num_gpus)
        self.run_folder = RunFolder(run_dir) if run_dir is not None else None
        self.seed = seed
        deterministic = self.speed.deterministic
        self.deterministic = (seed is not None and self.device.type == "cpu") if deterministic is None \
            else deterministic
        self.callbacks = [*([self.run_folder] if self.run_folder else []), *callbacks,
                          *([EpochEndFunction(on_epoch_end)] if on_epoch_end is not None else [])]
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.history: list[dict] = []
        self.best_val_acc = -1.0
        self.is_best_epoch = False
        self._val_count = 0  # images of the last validation
        self.epoch = 0
        self.ctx = dist_utils.current()
        self.model = self.data = None
        self._live = None  # the board fit() trains with

    @property
    def run_dir(self):
        return self.run_folder.path if self.run_folder is not None else None

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints: rank 0 under torchrun, always otherwise."""
        return self.ctx.is_main

    def _say(self, message: str) -> None:
        if self.display.log is not None and self.is_main:
            self.display.log(message)

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ---- set-up ----------------------------------------------------------------------------------

    def _setup(self, model: nn.Module, data) -> None:
        """Move model and data to the device, build loaders and optimizer (and DDP under torchrun)."""
        for name in ("training_step", "validation_step"):
            if not callable(getattr(model, name, None)):
                raise ConfigError(f"{type(model).__name__} has no {name}(batch); the Trainer trains a "
                                  "cnnlab.Classifier (or any module with training_step and validation_step)")
        if self.seed is not None:
            seed_everything(self.seed)
        self.model = model.to(self.device)
        if self.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
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
        self.step = dist_utils.wrap_model(_TrainingStep(self.model), self.device, self.ctx)
        if self.speed.compile:
            # dynamic=False: the last, smaller batch gets its own static graph rather than turning every
            # step's graph into a slower dynamic-shape one. Validation runs the model eagerly.
            self.step = torch.compile(self.step, dynamic=False)
        if getattr(self.pace, "total_steps", None) is not None:
            self.max_epochs = epochs_for_steps(self.pace.total_steps, len(self.train_loader))
        make_optimizer, make_scheduler = self.optimization.optimizer, self.optimization.scheduler
        self.optimizer = make_optimizer(self.model.parameters()) if make_optimizer else model.configure_optimizers()
        self.scheduler = make_scheduler(self.optimizer, len(self.train_loader), self.max_epochs) \
            if make_scheduler else None

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs, as tensors and plain values; callbacks may add to it."""
        model = self.model
        state = {
            "version": CHECKPOINT_VERSION,
            "model_name": getattr(model, "model_name", None),
            "model_kwargs": dict(getattr(model, "model_kwargs", {}) or {}),
            "hparams": dict(getattr(model, "hparams", {}) or {}),
            "model_state": model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "max_epochs": self.max_epochs,
            "global_step": self.global_step,
            "progress_trace": torch.tensor(self.progress_trace, dtype=torch.float64),
            "finished": bool(self.finished),  # a clock may end a run before its progress reaches 1
            "seed": self.seed,
            "history": list(self.history),
            "best_val_acc": self.best_val_acc,
            "rng_state": torch.get_rng_state(),
            "data_settings": self.data.settings() if hasattr(self.data, "settings") else {},
            **self.checkpoint_extra,
        }
        self._call("on_save_checkpoint", state)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore model, optimizer, scheduler, epoch, metrics history and RNG from a checkpoint dict."""
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if self.scheduler is not None and state.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(state["scheduler_state"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.best_val_acc = float(state.get("best_val_acc", -1.0))
        self.global_step = int(state.get("global_step", 0))
        trace = state.get("progress_trace")
        self.progress_trace = trace.tolist() if trace is not None else []
        if isinstance(self.pace, ClockProgress) and (self.progress_trace or state.get("finished")):
            # A budgeted run goes on from where its clock stopped; one its clock ended, short of progress 1, is over.
            self.pace.base = 1.0 if state.get("finished") else self.progress_trace[-1]
        if state.get("rng_state") is not None:
            torch.set_rng_state(state["rng_state"].cpu())

    # ---- the loop --------------------------------------------------------------------------------

    def fit(self, model: nn.Module, data, resume_from: str | os.PathLike | dict | None = None,
            epochs: int | None = None) -> list[dict]:
        """Train ``model`` on ``data`` up to ``max_epochs`` epochs (continuing a checkpoint if given).

        Calling ``fit`` again with the same model and data continues where the last call stopped, with the
        same optimizer and schedule (as Keras's ``fit`` does).

        Args:
            model, data: the classifier and the data module.
            resume_from: a checkpoint (path or loaded dict) to continue from.
            epochs: train at most this many epochs in this call (default: up to ``max_epochs``).

        Returns:
            One metrics dict per epoch so far (see :data:`~cnnlab.training.runfolder.METRIC_FIELDS`).

        Raises:
            TrainingDiverged: the loss became NaN or infinite, grew tenfold within an epoch, or the validation
                loss is far above chance (:mod:`cnnlab.training.divergence`; ``last.pt`` holds the last good epoch).
        """
        with torch_flags(self.deterministic, cudnn_benchmark=self.device.type == "cuda", compiled=self.speed.compile):
            if model is not self.model or data is not self.data:
                self._setup(model, data)
            if resume_from is not None:
                state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from, self.device)
                self.load_state_dict(state)
                if self.epoch < self.max_epochs:
                    self._say(f"resuming at epoch {self.epoch + 1}/{self.max_epochs}")
            stop = self.max_epochs if epochs is None else min(self.max_epochs, self.epoch + epochs)
            try:
                self._call("on_fit_start", self.model)
                # The book's live figure (cnnlab.visual.board): fed each batch's loss and each epoch's row.
                self._live = (live_board(self.display.board, self.max_epochs, len(self.train_loader), self.epoch)
                              if self.is_main else None)
                self._stop = stop
                while self.epoch < stop and not self.finished:
                    row = self._train_epoch()
                    if row is None:  # an epoch between validations
                        continue
                    self._check_val_loss(row["val_loss"], row["epoch"] - 1)  # before a diverged epoch is saved
                    self.history.append(row)
                    # best.pt: the latest epoch within one standard error of the best two-validation mean
                    reference = best_two_validation_mean([r["val_acc"] for r in self.history])
                    self.is_best_epoch = within_one_standard_error(row["val_acc"], reference, self._val_count)
                    self.best_val_acc = max(self.best_val_acc, row["val_acc"])
                    self._call("on_train_epoch_end", self.model, row)
                    self._say(f"epoch {row['epoch']}{self._of_epochs()}  train loss {row['train_loss']:.4f}  "
                              f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}  "
                              f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s")
                    if self._live is not None:
                        self._live.epoch(row)
            except BaseException as exc:  # Ctrl-C too: callbacks release what they hold (Lightning's hook)
                self._call("on_exception", self.model, exc)
                raise
            finally:
                if self._live is not None:  # the figure shows the epochs done, whatever ended the loop
                    self._live.close()
                    self._live = None
            self._call("on_fit_end", self.model)
        return self.history

    def _train_epoch(self) -> dict:
        epoch, device = self.epoch, self.device
        if self.seed is not None:
            # Plus the rank, so that ranks draw different dropout masks (rank 0 draws the single-process ones).
            torch.manual_seed(epoch_seed(self.seed, epoch) + self.ctx.rank)
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        start = time.perf_counter()
        bar = (epoch_bar(len(self.train_loader), f"epoch {epoch + 1}{self._of_epochs()}")
               if self.display.progress and self.is_main else None)
        watch = LossWatch(floor=chance_loss(self._num_classes()))
        window = torch.zeros((), dtype=torch.float64, device=device)
        if isinstance(self.pace, ClockProgress):
            self.pace.resume()
        for step, (X, y) in enumerate(self.train_loader):
            loss = self._step(X, y)
            loss_sum += loss.detach().double() * y.shape[0]
            window += loss.detach().double()
            if self._live is not None:
                self._live.step(loss)
            seen += y.shape[0]
            if bar is not None and (step % 20 == 0 or step == len(self.train_loader) - 1):
                # A host sync every 20 steps, to show the running loss.
                running = float(loss_sum) / seen
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{running:.4f}", img_s=f"{seen * self.ctx.world_size / elapsed:,.0f}")
                bar.update(step + 1 - bar.n)
            if step % 20 == 19 and self.ctx.world_size == 1:
                # A host sync every 20 steps (under DDP only the all-reduced check below, taken by all ranks).
                self._diverged(watch.check(float(window) / 20), epoch)
                window.zero_()
            if self.finished:
                break
        if isinstance(self.pace, ClockProgress):
            self.pace.pause()  # validation is planned apart from the training time
        if bar is not None:
            bar.close()
        totals = dist_utils.all_reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)]), self.ctx)
        train_loss = float(totals[0] / totals[1])
        self._diverged(None if math.isfinite(train_loss) else f"the training loss became {train_loss}", epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        self.epoch = epoch + 1
        if self.epoch % self.validate_every and self.epoch < self._stop and not self.finished:
            self._unreported += train_seconds
            return None
        dist_utils.sync_buffers(self.model, self.ctx)  # rank 0's BatchNorm statistics, as its checkpoint holds
        val_loss, val_acc, self._val_count = validation_totals(
            self.model, self.val_loader, self.device, self.speed.autocast_dtype, self.speed.channels_last, self.ctx)
        seconds, self._unreported = time.perf_counter() - start + self._unreported, 0.0
        elapsed = (self.history[-1].get("elapsed", 0.0) if self.history else 0.0) + seconds
        return {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
                "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": float(totals[1]) / train_seconds,
                "seconds": seconds, "elapsed": elapsed}

    def _step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch: forward through ``training_step``, backward, update; the batch's loss."""
        X, y = X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.speed.channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.speed.autocast_dtype):
            loss = self.step((X, y))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optimization.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optimization.clip_grad_norm)
        self.optimizer.step()
        self._advance()
        return loss

    @property
    def finished(self) -> bool:
        """Whether the step count or the clock (``pace``) says the run is over."""
        return self.pace is not None and self.pace.done(self.global_step, self.run_progress)

    @property
    def run_progress(self) -> float:
        return self.progress_trace[-1] if self.progress_trace else 0.0

    def _advance(self) -> None:
        """Count an optimizer step, read the run's progress (rank 0's, under torchrun) and step the schedule."""
        self.global_step += 1
        if self.pace is not None:
            progress = self.pace(self.global_step)
            if self.ctx.world_size > 1 and isinstance(self.pace, ClockProgress):
                # Rank 0's clock decides for all: the same rate on every rank, and the same step to stop at.
                mine = torch.tensor([progress if self.ctx.is_main else 0.0], dtype=torch.float64,
                                    device=self.device)
                progress = float(dist_utils.all_reduce_sum(mine, self.ctx)[0])
            self.progress_trace.append(progress)
        if isinstance(self.scheduler, ProgressLR):
            self.scheduler.step(self.run_progress)
        elif self.scheduler is not None:
            self.scheduler.step()

    def _of_epochs(self) -> str:
        return "" if isinstance(self.pace, ClockProgress) else f"/{self.max_epochs}"

    def _num_classes(self) -> int:
        return len(getattr(self.data, "classes", None) or ())

    def _check_val_loss(self, val_loss: float, epoch: int) -> None:
        self._diverged(val_loss_far_above_chance(val_loss, self._num_classes(), self.global_step), epoch)

    def _diverged(self, reason: str | None, epoch: int) -> None:
        """Raise :class:`TrainingDiverged` for ``reason`` (None: all is well)."""
        if reason is not None:
            raise divergence_error(reason, epoch, self.optimizer.param_groups[0]["lr"],
                                   self.run_folder.last if self.run_folder is not None else None)
