"""Training recipes: one frozen config, per-model defaults, and the code that turns them into a run.

The command line fills a :class:`TrainConfig`; every field left as None takes the model's recipe default
(timm's rule: CLI defaults never override model defaults). :func:`run_training` builds data, model,
optimizer, schedule and trainer from it, and is what ``cnnlab train``, torchrun and the benchmarks call.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.errors import CheckpointError, ConfigError, RunFolderError, TrainingDiverged, UserError
from cnnlab.training import distributed as dist_utils
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.evaluation import evaluate_checkpoint
from cnnlab.training.runfolder import RunFolder
from cnnlab.training.runtime import bf16_default, pick_device
from cnnlab.training.trainer import Trainer

__all__ = ["TrainConfig", "RECIPES", "BASE", "model_defaults", "resolve_config", "run_training", "make_optimizer",
           "make_scheduler", "build_data", "build_model", "build_trainer", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; None means "the model's recipe default"."""

    model: str = "lenet"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    resize: int | None = None
    augment: bool | None = None
    normalize: bool | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    device: str = "auto"
    seed: int = 0
    data_dir: str | None = None
    num_train: int | None = None
    num_val: int | None = None
    val_split: float | None = None
    images: str | None = None
    channels: int | None = None
    skip_bad: bool = False
    tensorboard: bool = False
    out: str | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The seed's recipe (d2l §7.6): sigmoid LeNet, xavier init, SGD lr 0.1, batch 128, 10 epochs, 28x28.
# How it runs is ours: channels_last and, where the hardware has it, bf16 autocast (bf16=None: decided by
# bf16_default) make the seed's LeNet 1.3x faster on an AMX CPU at the same accuracy (benchmarks/train.py
# --techniques); torch.compile pays for its ~20 s of compiling only on long runs, so it stays opt-in.
# Each model's own defaults (input size, optimizer, schedule; its learning rate is its builder's `lr`
# default) are registered with the model: see `register_model` and :func:`model_defaults`.
BASE = dict(epochs=10, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=0.0,
            schedule="constant", label_smoothing=0.0, resize=28, augment=False, normalize=False, bf16=None,
            channels_last=True, compile=False)


def model_defaults(model: str) -> dict:
    """The training defaults of a registered model: the base recipe, then what the model registered."""
    from cnnlab.models import model_recipe

    return {**BASE, **model_recipe(model)}


# What the time-to-accuracy recipes share (each sets its model and length).
_FAST = dict(model="fastnet-wide", batch_size=256, lr=0.2, optimizer="momentum", weight_decay=5e-4,
             schedule="onecycle", label_smoothing=0.1, augment=True, normalize=True)

# Named recipes choose a model too (``cnnlab train --recipe fast``).
RECIPES: dict[str, dict] = {
    "seed": dict(model="lenet"),
    # Chosen on a stratified 10% validation split of the training images (benchmarks/tune_recipes.py,
    # benchmarks/results/tuning.md), to fit 5 minutes on 2 CPU cores: FastNet 24-48-96 with test-time flip
    # averaging, 7 epochs (validation accuracy 0.9277 after 6 epochs, 0.9340 after 8; FastNet 32-64-128 reaches
    # 0.9318 in 6 epochs but takes ~6.5 minutes).
    "fast": dict(_FAST, model="fastnet-flip", epochs=7),
    # FastNet 32-64-128 with flip averaging for 12 epochs (validation accuracy 0.9407), for >= 0.940 in <= 15 min.
    "fast-long": dict(_FAST, epochs=12),
}


def resolve_config(config: TrainConfig, recipe: str | None = None) -> TrainConfig:
    """Fill every None field of ``config`` from the recipe, then the model's defaults, then the base.

    bf16 left unset everywhere is ``$CNNLAB_BF16`` if set, else decided by the hardware: on where it is fast
    (:func:`cnnlab.training.trainer.bf16_default`).
    """
    given = {k: v for k, v in config.to_dict().items() if v is not None}
    recipe_values = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
        recipe_values = dict(RECIPES[recipe])
        if "model" in recipe_values and config.model == TrainConfig.model:
            given["model"] = recipe_values["model"]
    model = given.get("model", config.model)
    from cnnlab.models import list_models

    if model not in list_models():
        raise ConfigError(f"unknown model {model!r}; known models: {', '.join(list_models())}")
    filled = {**model_defaults(model), **recipe_values, **given}
    filled["model"] = model
    if config.images is not None and config.resize is None:
        filled["resize"] = None  # an image folder's own default: 28 for grey images, 32 for colour
    if filled["bf16"] is None:
        filled["bf16"] = bf16_default(pick_device(filled["device"]))
    return TrainConfig(**{k: filled.get(k) for k in (f.name for f in dataclasses.fields(TrainConfig))})


def validate_config(config: TrainConfig) -> None:
    """Reject impossible settings with one clear sentence each (the CLI turns these into exit code 2)."""
    from cnnlab.models import list_models

    if config.model not in list_models():
        raise ConfigError(f"unknown model {config.model!r}; known models: {', '.join(list_models())}")
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.lr > 0 and config.lr == config.lr and config.lr != float("inf"),
         f"--lr must be a positive finite number, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {config.label_smoothing}"),
        (config.resize is None and config.images is not None or config.resize is not None and
         8 <= config.resize <= 512, f"--resize must be between 8 and 512 pixels, got {config.resize}"),
        (config.val_split is None or 0 < config.val_split < 1,
         f"--val-split must be a fraction between 0 and 1, such as 0.1, got {config.val_split}"),
        (config.channels in (None, 1, 3), f"--channels must be 1 or 3, got {config.channels}"),
        (config.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (config.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
        (config.num_train is None or config.num_train >= 1, "--num-train must be at least 1"),
        (config.num_val is None or config.num_val >= 1, "--num-val must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_world_size(config.batch_size)


def check_world_size(batch_size: int, world_size: int | None = None) -> None:
    """Under torchrun ``batch_size`` is the global batch: it must split evenly over the processes.

    Raises:
        ValueError: it does not, with the nearest sizes that would.
    """
    world_size = dist_utils.env_world_size() if world_size is None else world_size
    if world_size > 1 and batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, (batch_size // world_size + 1) * world_size
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split evenly over the "
                         f"{world_size} processes of this distributed run; use a multiple of {world_size}, "
                         f"e.g. {sizes}")


def make_optimizer(config: TrainConfig):
    """``params -> Optimizer`` for the configured optimizer (foreach kernels: one launch per group)."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay

    def build(params):
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd, foreach=True)
        if name == "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd,
                                   foreach=True)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd, foreach=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)

    return build


def make_scheduler(config: TrainConfig):
    """``(optimizer, steps_per_epoch, epochs) -> scheduler`` stepped per batch, or None for a constant LR."""
    if config.schedule == "constant":
        return None

    def build(optimizer, steps_per_epoch, epochs):
        total = max(1, steps_per_epoch * epochs)
        if total < 8:
            # OneCycleLR needs at least one step up and one down; a run this short just keeps its LR.
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        if config.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                       pct_start=0.25)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)

    return build


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_data(config: TrainConfig):
    """The data module the config describes: Fashion-MNIST, or the image folder of ``--images``."""
    if config.images is not None:
        from cnnlab.data.imagefolder import ImageFolderData

        return ImageFolderData(config.images, batch_size=config.batch_size, resize=config.resize,
                               channels=config.channels, normalize=config.normalize, augment=config.augment,
                               seed=config.seed, val_split=config.val_split, val_batch_size=1024,
                               skip_bad=config.skip_bad, progress=config.progress)
    from cnnlab.data.fashion_mnist import FashionMNIST

    return FashionMNIST(batch_size=config.batch_size, resize=config.resize, root=config.data_dir,
                        normalize=config.normalize, augment=config.augment, seed=config.seed,
                        num_train=config.num_train, num_val=config.num_val, val_split=config.val_split,
                        val_batch_size=1024)


def build_model(config: TrainConfig, data):
    """The registered model the config names, sized for ``data``'s classes, channels and image size."""
    from cnnlab.models import create_model

    channels, height, width = data.image_shape
    model = create_model(config.model, num_classes=len(data.classes), in_channels=channels,
                         image_size=(height, width) if height != width else height, lr=config.lr)
    model.label_smoothing = config.label_smoothing
    return model


def build_trainer(config: TrainConfig, device: torch.device | str | None = None,
                  run_dir: str | os.PathLike | None = None, **kwargs) -> Trainer:
    """The :class:`~cnnlab.training.trainer.Trainer` the config describes (``kwargs``: ``log``, ``callbacks``, ...)."""
    return Trainer(
        max_epochs=config.epochs, device=device if device is not None else config.device, run_dir=run_dir,
        seed=config.seed, optimizer=make_optimizer(config), scheduler=make_scheduler(config),
        autocast_dtype=torch.bfloat16 if config.bf16 else None, channels_last=config.channels_last,
        compile=config.compile, progress=config.progress, checkpoint_extra={"config": config.to_dict()},
        **kwargs,
    )


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The settings a run folder was started with (``config.json``), checked field by field, to resume it as it was.

    Raises:
        RunFolderError: no such folder, no config, or a config that is not what ``cnnlab train`` writes.
    """
    folder = RunFolder(run_dir)
    values = folder.read_config()
    try:
        config = TrainConfig(**values)
    except TypeError as exc:
        raise RunFolderError(f"{folder.config_file} is not a valid run config: {exc}") from None
    for field in dataclasses.fields(TrainConfig):
        value, kinds = getattr(config, field.name), _FIELD_TYPES[field.name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise RunFolderError(f"{folder.config_file} is not a valid run config: {field.name} is {value!r}, "
                                 f"expected {' or '.join(k.__name__ for k in kinds)}")
    return config


# What each config field may hold once resolved (JSON gives ints for whole floats, so floats accept ints).
_FIELD_TYPES = {
    "model": (str,), "epochs": (int,), "batch_size": (int,), "lr": (float, int), "optimizer": (str,),
    "momentum": (float, int), "weight_decay": (float, int), "schedule": (str,), "label_smoothing": (float, int),
    "resize": (int,), "augment": (bool,), "normalize": (bool,), "bf16": (bool,), "channels_last": (bool,),
    "compile": (bool,), "device": (str,), "seed": (int,), "data_dir": (str, type(None)),
    "num_train": (int, type(None)), "num_val": (int, type(None)), "val_split": (float, type(None)),
    "images": (str, type(None)), "channels": (int, type(None)), "skip_bad": (bool,), "tensorboard": (bool,),
    "out": (str, type(None)), "progress": (bool,),
}


def run_training(config: TrainConfig | None, resume: str | os.PathLike | None = None, log=print,
                 on_epoch_end=None, callbacks=()) -> dict:
    """Train as ``config`` says (or continue the run folder ``resume``) and return a summary dict.

    The summary's test accuracy is :func:`cnnlab.training.evaluation.evaluate_checkpoint` of the run folder: the
    run's best checkpoint on the whole test set in fp32, the number ``cnnlab evaluate`` prints for it. Under
    torchrun every rank calls this; only rank 0 writes files and evaluates.
    """
    start = time.perf_counter()
    state = None
    if resume is not None:
        config = read_run_config(resume)
        # The same checks as a new run (a hand-edited config.json is no exception), including that the batch
        # splits over this run's processes: a run may be resumed with another number of them.
        validate_config(config)
        folder = RunFolder(resume)
        if folder.last.is_file():
            state = load_checkpoint(folder.last)
    else:
        validate_config(config)
        folder = RunFolder(config.out or default_run_dir(config.model))
    device = pick_device(config.device)
    ctx = dist_utils.DistContext(world_size=dist_utils.env_world_size())
    try:
        ctx = dist_utils.init_from_env(device.type)  # waits (up to the timeout) for all ranks to join
        if ctx.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        if config.seed is not None:
            torch.manual_seed(config.seed)  # the same seed on every rank: identical initial weights
        data = build_data(config)
        if config.resize is None:  # an image folder chose its size: the run's config records it
            config = dataclasses.replace(config, resize=data.resize[0])
        model = build_model(config, data)
        folder = _set_up_run_folder(folder, config if resume is None else None, state, ctx)
        if config.tensorboard:
            from cnnlab.visual.tensorboard import TensorBoardLogger

            callbacks = [*callbacks, TensorBoardLogger(folder.path / "tensorboard", class_names=data.classes)]
        trainer = build_trainer(config, device, folder.path, log=log, callbacks=callbacks,
                                on_epoch_end=on_epoch_end)
        trainer.fit(model, data, resume_from=state)
    except RuntimeError as exc:
        # Under torchrun a failed collective (gloo: "Connection reset by peer" when a rank died, "Timed out
        # waiting" when one hangs) is a plain RuntimeError; its first line goes into the message.
        if ctx.world_size == 1 or isinstance(exc, TrainingDiverged):
            raise
        raise dist_utils.run_failed(exc, folder.path) from exc
    result = None
    if ctx.is_main:
        _, result = evaluate_checkpoint(folder.path, config.data_dir, device)
    return {
        "run_dir": str(folder.path),
        "config": config,
        "history": trainer.history,
        "test_accuracy": result.accuracy if result else None,
        "test_count": result.count if result else None,
        "checkpoint": str(folder.checkpoint()) if ctx.is_main else None,
        "seconds": time.perf_counter() - start,
        "finished_already": state is not None and state.get("epoch", 0) >= config.epochs,
    }


def _set_up_run_folder(folder: RunFolder, new_config: TrainConfig | None, state: dict | None,
                       ctx: dist_utils.DistContext) -> RunFolder:
    """Rank 0 creates the run folder (and writes ``config.json`` for a new run); every rank learns its path."""
    error = None
    if ctx.is_main:
        try:
            folder.create(new_config.to_dict() if new_config is not None else None)
        except UserError as exc:
            error = exc
    # One exchange settles the set-up for all ranks: rank 0's folder (the default name holds a timestamp that
    # could differ between ranks), whether rank 0 could create it (so no rank waits for a rank 0 that gave
    # up), and which checkpoint epoch each rank loaded (they must all resume from the same one).
    seen = dist_utils.all_gather_object((str(folder.path), error, state.get("epoch") if state else None), ctx)
    folder, error = RunFolder(seen[0][0]), seen[0][1]
    if error is not None:
        raise error
    epochs = [epoch for _, _, epoch in seen]
    if len(set(epochs)) > 1:
        raise CheckpointError(f"the processes of this run found different checkpoints in {folder.path} (epoch "
                              f"by rank: {epochs}); on several machines the run folder must be on a filesystem "
                              "they all share, at the same path")
    return folder
