"""A training run from its config: :func:`run_training` builds data, model, optimizer, schedule and trainer from a
:class:`~cnnlab.recipes.config.TrainConfig`, fits, and scores the best checkpoint on the test set.

It is what ``cnnlab train``, torchrun and the benchmarks call.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from cnnlab.errors import CheckpointError, ConfigError, RunInterrupted, TrainingDiverged
from cnnlab.inference.loaded import evaluate_checkpoint
from cnnlab.models import narrower_model
from cnnlab.recipes.blend import FinishBest, blend_seconds, scored_after_training, tta_views
from cnnlab.recipes.budget import (
    MIN_BUDGET_EPOCHS,
    TRAINING_SHARE,
    BudgetKeeper,
    budget_batch_size,
    budget_epochs,
    choose_threads,
    time_training_steps,
)
from cnnlab.recipes.config import TrainConfig, read_run_config, validate_config
from cnnlab.recipes.optim import make_optimizer, make_scheduler, progress_shape
from cnnlab.recipes.resume import AUTO, NEW, folder_to_resume
from cnnlab.training import distributed as dist_utils
from cnnlab.training.baseline import chance_warning
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.options import Display, Optimization, Speed
from cnnlab.training.runfolder import RunFolder, set_up_run_folder
from cnnlab.training.runtime import eval_batch_size, pick_device
from cnnlab.training.schedules import ClockProgress, ReplayProgress, StepProgress
from cnnlab.training.trainer import Trainer

__all__ = ["build_data", "build_model", "build_pace", "build_trainer", "default_run_dir", "describe_run",
           "run_training"]


# A run counted in steps or on the clock validates (and checkpoints) at the first epoch's end after this many
# steps: every epoch on Fashion-MNIST (235 steps at batch 256), every 50 epochs for 200 images.
VALIDATE_STEPS = 50


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_data(config: TrainConfig):
    """The data module the config describes: Fashion-MNIST, or the image folder of ``--images``."""
    if config.images is not None:
        from cnnlab.data.imagefolder import ImageFolderData

        main = dist_utils.current().is_main  # under torchrun rank 0 alone says what it decoded
        data = ImageFolderData(config.images, batch_size=config.batch_size, image_size=config.image_size,
                               channels=config.channels, normalize=config.normalize, augment=config.augment,
                               seed=config.seed, val_split=config.val_split,
                               val_batch_size=eval_batch_size(config.device),
                               skip_bad=config.skip_bad, progress=config.progress and main,
                               log=print if main else None, flip=config.flip is not False)
    else:
        from cnnlab.data.fashion_mnist import FashionMNIST

        data = FashionMNIST(batch_size=config.batch_size, resize=config.image_size, root=config.data_dir,
                            normalize=config.normalize, augment=config.augment, seed=config.seed,
                            num_train=config.num_train, num_val=config.num_val, val_split=config.val_split,
                            val_batch_size=eval_batch_size(config.device))
    data.cutout = config.cutout or 0.0
    if config.passes and config.passes > 1:  # the automatic recipe's epochs of several passes, resumed or replayed
        from cnnlab.data.passes import RepeatedPasses

        data = RepeatedPasses(data, config.passes)
    return data


def build_model(config: TrainConfig, data):
    """The registered model the config names, sized for ``data``'s classes, channels and image size."""
    from cnnlab.models import create_model

    channels, height, width = data.image_shape
    balance = {"white_balance": True} if config.white_balance else {}  # an argument of fastnet-auto alone
    model = create_model(config.model, num_classes=len(data.classes), in_channels=channels,
                         image_size=(height, width) if height != width else height, lr=config.lr, **balance)
    model.label_smoothing = config.label_smoothing
    return model


def build_pace(config: TrainConfig, steps_per_epoch: int):
    """What decides the run's length and its schedule's progress (:mod:`cnnlab.training.schedules`).

    ``--replay RUN``: the progress that budgeted run recorded, step by step; ``--budget``: the clock (its
    seconds are planned when training starts; the budget overrides ``--epochs``); ``--steps N``: N steps (it
    overrides ``--epochs``); fewer steps than the recipe's floor (``min_steps``): that floor of steps. Otherwise
    None: the run counts epochs as the book's does.
    """
    if config.replay is not None:
        state = load_checkpoint(RunFolder(config.replay).last)
        trace = state.get("progress_trace")
        if trace is None or not len(trace):
            raise CheckpointError(f"{config.replay} recorded no steps to replay; --replay takes the run folder "
                                  "of a --budget or --steps run")
        return ReplayProgress(trace.tolist())
    if config.budget is not None:
        return ClockProgress(config.budget)  # re-planned by BudgetKeeper once the fixed costs are measured
    if config.steps is not None:
        return StepProgress(config.steps)
    if config.min_steps and config.epochs * steps_per_epoch < config.min_steps:
        return StepProgress(config.min_steps)
    return None


def describe_run(config: TrainConfig, data, steps_per_epoch: int, pace) -> str:
    """One line of what the run decided: model, input, length in steps and epochs, learning rate, augmentation."""
    channels, height, width = data.image_shape
    total = getattr(pace, "total_steps", None)
    if isinstance(pace, ClockProgress):
        length = f"as many steps as fit in --budget {config.budget:g}s ({steps_per_epoch} an epoch)"
    elif total is not None:
        epochs = total / steps_per_epoch
        why = ("replayed" if config.replay else "--steps" if config.steps else
               f"a floor of {config.min_steps} steps: {config.epochs} epochs would be "
               f"{config.epochs * steps_per_epoch}")
        length = f"{total} steps ({why}) = {epochs:.3g} epochs of {steps_per_epoch}"
    else:
        length = f"{config.epochs * steps_per_epoch} steps = {config.epochs} epochs of {steps_per_epoch}"
    # flip None is the seed's and Fashion-MNIST's crop + flip; the automatic recipe crops only (flip False)
    augment = ("random crop + flip" if config.flip is not False else "random crop") if config.augment else "none"
    if config.augment and config.cutout:
        augment += f" + cutout {config.cutout:g}"
    return (f"plan: {config.model}, input {channels}x{height}x{width}, {len(data.train_labels):,} "
            f"training images, {length}, batch {config.batch_size}, {config.optimizer} lr {config.lr:g} "
            f"{progress_shape(config) if pace is not None else config.schedule}, augmentation {augment}")


def build_trainer(config: TrainConfig, device: torch.device | str | None = None,
                  run_dir: str | os.PathLike | None = None, pace=None, steps_per_epoch: int = 0, log=print,
                  **kwargs) -> Trainer:
    """The :class:`~cnnlab.training.trainer.Trainer` the config describes (``log``: its per-epoch line; ``kwargs``:
    ``callbacks``, ``on_epoch_end``, ...).

    ``pace`` (:func:`build_pace`): a step count or a clock decides the run's length; None: ``config.epochs``.
    """
    # A budget overrides the epochs: the clock ends the run (a step count sets the epochs itself).
    epochs = 10**6 if isinstance(pace, ClockProgress) else config.epochs
    if pace is not None and steps_per_epoch:
        # Validation every VALIDATE_STEPS steps or more: a tiny data set's epochs are a step or two each.
        kwargs.setdefault("validate_every", -(-VALIDATE_STEPS // steps_per_epoch))
    return Trainer(
        max_epochs=epochs, device=device if device is not None else config.device, run_dir=run_dir,
        seed=config.seed,
        optimization=Optimization(make_optimizer(config), make_scheduler(config, by_progress=pace is not None)),
        speed=Speed(autocast_dtype=torch.bfloat16 if config.bf16 else None, channels_last=config.channels_last,
                    compile=config.compile),
        display=Display(progress=config.progress, log=log),
        pace=pace, checkpoint_extra={"config": config.to_dict()}, **kwargs,
    )


def run_training(config: TrainConfig | None, resume: str | os.PathLike | None = None, log=print,
                 on_epoch_end=None, callbacks=(), spent: float = 0.0, data=None,
                 initial_state: dict | None = None, startup: float | None = None) -> dict:
    """Train as ``config`` says (or continue the run folder ``resume``) and return a summary dict, whose test
    accuracy is :func:`cnnlab.inference.loaded.evaluate_checkpoint` of the run folder (its best checkpoint on
    the whole test set in fp32, as ``cnnlab evaluate`` prints it). Under torchrun every rank calls this; only
    rank 0 writes files and evaluates. ``spent``: seconds the command spent before this call (the CLI passes
    its process's age), which a ``--budget`` counts too; ``startup``: those of them that were the process's
    start-up, whose share estimates its exit (default all; not the automatic recipe's range test). ``data``: a
    data module already built for ``config`` (the automatic recipe's), instead of :func:`build_data`.
    ``initial_state``: the model's weights to start from instead of its initialization (a state dict: the
    automatic recipe's restart from a last good state). Ctrl-C is raised as
    :class:`~cnnlab.errors.RunInterrupted`, which names the run folder."""
    start, restart = time.perf_counter(), resume == NEW  # restart: the automatic recipe's, which says what it does
    config, resume, folder, state = _start(config, resume)
    device = pick_device(config.device)
    ctx = dist_utils.DistContext(world_size=dist_utils.env_world_size())
    holder = [folder]  # the folder once rank 0 has created (and locked) it, for the release below
    threads_before = torch.get_num_threads()  # --threads, or a budget's timed choice, lasts for this call only
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        try:
            ctx = dist_utils.init_from_env(device.type)  # waits (up to the timeout) for all ranks to join
            if ctx.world_size > 1 and device.type == "cuda":
                device = torch.device("cuda", ctx.local_rank)
            config, trainer, steps_per_epoch = _fit(config, holder, state, resume is None, ctx, device, data=data,
                                                    clock=lambda: spent + time.perf_counter() - start,
                                                    startup=spent if startup is None else startup, log=log,
                                                    callbacks=callbacks, on_epoch_end=on_epoch_end,
                                                    initial_state=initial_state, restart=restart)
        except RuntimeError as exc:
            # Under torchrun a failed collective (gloo: "Connection reset by peer" when a rank died, "Timed out
            # waiting" when one hangs) is a plain RuntimeError; its first line goes into the message.
            if ctx.world_size == 1 or isinstance(exc, TrainingDiverged):
                raise
            raise dist_utils.run_failed(exc, holder[0].path if holder[0] else None) from exc
        folder, result, warning, loaded = holder[0], None, None, None
        if ctx.is_main:
            loaded, result = evaluate_checkpoint(folder.path, config.data_dir, device)
            warning = chance_warning(result.accuracy, result.confusion.sum(1), loaded.class_names)
    except KeyboardInterrupt as exc:  # Ctrl-C: the CLI says what the run folder holds
        raise RunInterrupted(holder[0].path if holder[0] is not None else None) from exc
    finally:
        torch.set_num_threads(threads_before)
        if holder[0] is not None:
            holder[0].release()  # the run folder's lock (RunFolder.create); a library caller's process lives on
    return {
        "run_dir": str(folder.path),
        "config": config,
        "history": trainer.history,
        "test_accuracy": result.accuracy if result else None,
        "test_count": result.count if result else None,
        "chance_warning": warning,
        "checkpoint": str(folder.checkpoint()) if ctx.is_main else None,
        "seconds": time.perf_counter() - start,
        "finished_already": state is not None and _finished(state, config, steps_per_epoch),
        "steps": trainer.global_step,
        "pixel_blend": getattr(loaded.model, "pixel_blend", 0.0) if loaded is not None else 0.0,  # of best.pt
    }


def _final_pass_images(config: TrainConfig, data) -> int:
    """How many images are scored after training, each test-time view counted: by the final test pass
    (:func:`cnnlab.inference.loaded.evaluate_checkpoint`), and by the pixel blend's validation pass."""
    views = tta_views(config.shift_tta or 0)
    if config.images is not None:
        return scored_after_training(data, bool(config.pixel_blend)) * views
    return 10_000 * views  # Fashion-MNIST's whole test set, whatever --num-val kept for validation


def _finished(state: dict, config: TrainConfig, steps_per_epoch: int) -> bool:
    """Whether the checkpoint a run resumed from had already finished the run."""
    if config.budget is not None:
        trace = state.get("progress_trace")
        return bool(state.get("finished")) or (trace is not None and len(trace) > 0 and float(trace[-1]) >= 1.0)
    total = config.steps or max(config.epochs * steps_per_epoch, config.min_steps or 0)
    return state.get("global_step", state.get("epoch", 0) * steps_per_epoch) >= total


def _start(config: TrainConfig | None, resume) -> tuple[TrainConfig, Path | None, RunFolder | None, dict | None]:
    """What this start continues: ``(config, resume folder or None, run folder or None, checkpoint state)``.

    A folder is None for a new run without ``--out`` (rank 0 then creates a default-named one); ``resume`` NEW: a
    new run whatever ``--out`` holds."""
    if resume == AUTO or (resume is None and config is not None):
        resume = folder_to_resume(config, resume)  # an elastic restart (torchrun) or --resume auto
    if resume in (None, NEW):
        validate_config(config)
        return config, None, RunFolder(config.out) if config.out else None, None
    config = read_run_config(resume)
    # The same checks as a new run (a hand-edited config.json is no exception), including that the batch
    # splits over this run's processes: a run may be resumed with another number of them.
    validate_config(config)
    folder = RunFolder(resume)
    state = load_checkpoint(folder.last) if folder.last.is_file() else None
    _check_schedule_unchanged(config, state, resume)
    return config, Path(resume), folder, state


def _check_schedule_unchanged(config: TrainConfig, state: dict | None, resume) -> None:
    """Refuse to resume a one-cycle or cosine schedule of torch's whose length was changed (config.json
    edited): the scheduler resumes laid out over the old number of steps and fails past its end. A constant
    rate (a run too short for a cycle keeps one) and the progress-driven schedules may be extended."""
    saved = state.get("config") if state is not None and isinstance(state.get("config"), dict) else {}
    before = saved.get("epochs")
    scheduler = state.get("scheduler_state") if state is not None else None
    laid_out = isinstance(scheduler, dict) and ("total_steps" in scheduler or "T_max" in scheduler)
    if laid_out and before not in (None, config.epochs):
        raise ConfigError(f"{resume}: its {config.schedule} schedule was laid out over {before} epochs, and its "
                          f"config.json now says {config.epochs}; a schedule that has run cannot be stretched. Set "
                          f"epochs back to {before}, or start a new run (--out NEW_FOLDER)")


def _fit(config: TrainConfig, holder: list, state: dict | None, new: bool, ctx: dist_utils.DistContext,
         device: torch.device, *, data=None, clock, startup: float, log, callbacks,
         on_epoch_end, initial_state: dict | None = None, restart: bool = False) -> tuple[TrainConfig, Trainer, int]:
    """Build data, model and trainer, set up the run folder (into ``holder[0]``) and fit.

    Returns:
        The final config, the trainer and the number of steps in an epoch.

    ``clock``: seconds since the command started (a ``--budget`` counts all of them), ``startup`` of them the
    process's start-up (:class:`~cnnlab.recipes.budget.BudgetKeeper` estimates the exit from it).
    """
    if config.seed is not None:
        torch.manual_seed(config.seed)  # the same seed on every rank: identical initial weights
    data_start = time.perf_counter()
    data = build_data(config) if data is None else data
    data_seconds = time.perf_counter() - data_start
    if config.image_size is None:  # an image folder chose its size: the run's config records it
        config = dataclasses.replace(config, image_size=data.image_size[0])
    initial_rng = torch.get_rng_state()
    model = build_model(config, data)
    if config.budget is not None and config.threads is None and device.type == "cpu" and ctx.world_size == 1:
        # Recorded in the run's config, so that --replay and --resume run with the same model, threads and batch.
        config, model = _fit_model_to_budget(config, data, model, initial_rng, clock, log)
        torch.set_num_threads(config.threads)  # run_training gives the process its own count back
    if initial_state is not None:
        model.load_state_dict(initial_state)
    holder[0] = folder = set_up_run_folder(holder[0], config.to_dict() if new else None,
                                           default_run_dir(config.model), state, ctx, None if restart else log)
    if config.tensorboard:
        from cnnlab.training.tensorboard import TensorBoardLogger

        callbacks = [*callbacks, TensorBoardLogger(folder.path / "tensorboard", class_names=data.classes)]
    if config.pixel_blend or config.shift_tta:  # here, not in the automatic recipe: a resumed run finishes too
        callbacks = [*callbacks, FinishBest(data, log, shift_tta=config.shift_tta or 0, blend=config.pixel_blend)]
    steps_per_epoch = len(data.train_dataloader())
    pace = build_pace(config, steps_per_epoch)
    if isinstance(pace, ClockProgress):
        callbacks = [*callbacks, BudgetKeeper(config.budget, pace, data_seconds, _final_pass_images(config, data),
                                              log=log, clock=clock, startup=startup,
                                              after_training=blend_seconds(data) if config.pixel_blend else 0)]
    if log is not None and ctx.is_main:
        log(describe_run(config, data, steps_per_epoch, pace))
    trainer = build_trainer(config, device, folder.path, pace=pace, steps_per_epoch=steps_per_epoch, log=log,
                            callbacks=callbacks, on_epoch_end=on_epoch_end)
    trainer.fit(model, data, resume_from=state)
    return config, trainer, steps_per_epoch


def _fit_model_to_budget(config: TrainConfig, data, model, initial_rng: torch.Tensor, clock,
                         log) -> tuple[TrainConfig, torch.nn.Module]:
    """A budgeted CPU run's model, threads and batch, from a few timed training steps.

    A model with a registered narrower form (:func:`~cnnlab.models.narrower_model`) is timed on three steps; if
    the budget holds fewer than :data:`MIN_BUDGET_EPOCHS` epochs of it, it is rebuilt as that form from the random
    state the first was built from (so ``--replay``, building the narrower model directly, starts from the same
    weights). The model settled, :func:`choose_threads` times it with each thread count, and the batch is fitted
    to the time left (:func:`_fit_batch_to_budget`). Each change is said in one line.
    """
    batch = next(iter(data.train_dataloader()))
    train_images = len(data.train_dataloader()) * config.batch_size
    while (narrower := narrower_model(config.model)) is not None:
        step_seconds = min(time_training_steps(model, batch, torch.bfloat16 if config.bf16 else None,
                                               config.channels_last, steps=3)[1:])
        epochs = budget_epochs(step_seconds, config.batch_size, config.budget - clock(), train_images)
        if epochs >= MIN_BUDGET_EPOCHS:
            break
        if log is not None:
            log(f"model {narrower}, not {config.model}: {config.budget - clock():.0f} s left hold about "
                f"{epochs:.1f} epochs of it on this machine ({step_seconds * 1000:.0f} ms a step of "
                f"{config.batch_size}), and a net that sees the data more often learns more in a short run")
        config = dataclasses.replace(config, model=narrower)
        torch.set_rng_state(initial_rng)
        model = build_model(config, data)
    threads, step_seconds = choose_threads(model, data, config.bf16, config.channels_last, log)
    config = dataclasses.replace(config, threads=threads)
    return _fit_batch_to_budget(config, data, step_seconds, config.budget - clock(), log), model


def _fit_batch_to_budget(config: TrainConfig, data, step_seconds: float, seconds_left: float, log) -> TrainConfig:
    """Halve the batch of a budget too short for a few hundred steps of it (:func:`budget_batch_size`); says so."""
    batch = budget_batch_size(config.batch_size, step_seconds, seconds_left)
    if batch == config.batch_size:
        return config
    if log is not None:
        log(f"batch {batch}, not {config.batch_size}: {seconds_left:.0f} s left hold about "
            f"{TRAINING_SHARE * seconds_left / step_seconds:.0f} training steps of {config.batch_size} on this "
            f"machine ({step_seconds * 1000:.0f} ms each), and a short run gains more from more, smaller steps")
    data.batch_size = batch
    return dataclasses.replace(config, batch_size=batch)
