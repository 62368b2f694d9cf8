"""Training recipes: one frozen config, per-model defaults, and the code that turns them into a run.

The command line fills a :class:`TrainConfig`; every field left as None takes the model's recipe default
(timm's rule: CLI defaults never override model defaults). :func:`run_training` builds data, model,
optimizer, schedule and trainer from it, and is what ``cnnlab train``, torchrun and the benchmarks call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import distributed as dist_utils
from cnnlab.atomic import atomic_write
from cnnlab.checkpoint import CheckpointError, load_checkpoint
from cnnlab.train import Trainer, TrainingDiverged, bf16_default, evaluate, pick_device

__all__ = ["TrainConfig", "RECIPES", "MODEL_DEFAULTS", "resolve_config", "run_training", "make_optimizer",
           "make_scheduler", "OPTIMIZERS", "SCHEDULES"]

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
    out: str | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The seed's recipe (d2l §7.6): sigmoid LeNet, xavier init, SGD lr 0.1, batch 128, 10 epochs, 28x28.
# How it runs is ours: channels_last and, where the hardware has it, bf16 autocast (bf16=None: decided by
# bf16_default) make the seed's LeNet 1.3x faster on an AMX CPU at the same accuracy (benchmarks/train.py
# --techniques); torch.compile pays for its ~20 s of compiling only on long runs, so it stays opt-in.
BASE = dict(epochs=10, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=0.0,
            schedule="constant", label_smoothing=0.0, resize=28, augment=False, normalize=False, bf16=None,
            channels_last=True, compile=False)

MODEL_DEFAULTS: dict[str, dict] = {
    "lenet": {},
    "lenet-relu": dict(optimizer="momentum", lr=0.05, schedule="onecycle", weight_decay=5e-4, normalize=True),
    "vgg11": dict(lr=0.05, optimizer="momentum", resize=32, weight_decay=5e-4, schedule="onecycle",
                  normalize=True),
    "vgg-small": dict(lr=0.05, optimizer="momentum", resize=32, weight_decay=5e-4, schedule="onecycle",
                      normalize=True),
    "resnet18": dict(lr=0.05, optimizer="momentum", resize=96, weight_decay=5e-4, schedule="onecycle",
                     normalize=True),
    "resnet18-small": dict(lr=0.05, optimizer="momentum", resize=28, weight_decay=5e-4, schedule="onecycle",
                           normalize=True, augment=True, label_smoothing=0.1),
    "resnet34": dict(lr=0.05, optimizer="momentum", resize=96, weight_decay=5e-4, schedule="onecycle",
                     normalize=True),
    "fastnet": {},  # its tuned recipe is RECIPES["fast"]; this entry gives `cnnlab summary fastnet` its size
    "fastnet-wide": {},  # the model of RECIPES["fast"] and RECIPES["fast-long"]
    # The chapter-8 networks with the book's training cells (d2l §8.1-§8.8): plain SGD, batch 128, 10 epochs,
    # at the book's input size and learning rate. The -small variants take native 28x28 images.
    "alexnet": dict(lr=0.01, resize=224),
    "alexnet-small": dict(lr=0.01, resize=28),
    "nin": dict(lr=0.05, resize=224),
    "nin-small": dict(lr=0.05, resize=28),
    "googlenet": dict(lr=0.01, resize=96),
    "lenet-bn": dict(lr=0.1, resize=28),
    "lenet-bn-scratch": dict(lr=0.1, resize=28),
    "densenet": dict(lr=0.01, resize=96),
    "densenet-small": dict(lr=0.01, resize=28),
    "regnetx32": dict(lr=0.05, resize=96),
}

# Named recipes choose a model too (``cnnlab train --recipe fast``).
RECIPES: dict[str, dict] = {
    "seed": dict(model="lenet"),
    # Chosen on a stratified 10% validation split of the training images (benchmarks/tune_recipes.py,
    # benchmarks/results/): FastNet 32-64-128 with test-time flip averaging, 6 epochs, for >= 0.930 in <= 5 min
    # on 2 CPU cores (the previous choice, FastNet 24-48-96 for 6 epochs, scored 0.928 on the test set).
    "fast": dict(model="fastnet-wide", epochs=6, batch_size=256, lr=0.2, optimizer="momentum",
                 weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment=True, normalize=True),
    # The same for 12 epochs, for >= 0.940 in <= 15 min on 2 CPU cores (~9 min estimated: room for more epochs
    # that the tuning budget did not allow validating).
    "fast-long": dict(model="fastnet-wide", epochs=12, batch_size=256, lr=0.2, optimizer="momentum",
                      weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment=True, normalize=True),
}


def resolve_config(config: TrainConfig, recipe: str | None = None) -> TrainConfig:
    """Fill every None field of ``config`` from the recipe, then the model's defaults, then the base.

    bf16 left unset everywhere is ``$CNNLAB_BF16`` if set, else decided by the hardware: on where it is fast
    (:func:`cnnlab.train.bf16_default`).
    """
    given = {k: v for k, v in config.to_dict().items() if v is not None}
    recipe_values = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
        recipe_values = dict(RECIPES[recipe])
        if "model" in recipe_values and config.model == TrainConfig.model:
            given["model"] = recipe_values["model"]
    model = given.get("model", config.model)
    filled = {**BASE, **MODEL_DEFAULTS.get(model, {}), **recipe_values, **given}
    filled["model"] = model
    if filled["bf16"] is None:
        filled["bf16"] = bf16_default(pick_device(filled["device"]))
    return TrainConfig(**{k: filled.get(k) for k in (f.name for f in dataclasses.fields(TrainConfig))})


def validate_config(config: TrainConfig) -> None:
    """Reject impossible settings with one clear sentence each (the CLI turns these into exit code 2)."""
    from cnnlab.models import list_models

    if config.model not in list_models():
        raise ValueError(f"unknown model {config.model!r}; known models: {', '.join(list_models())}")
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.lr > 0 and config.lr == config.lr and config.lr != float("inf"),
         f"--lr must be a positive finite number, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {config.label_smoothing}"),
        (8 <= config.resize <= 512, f"--resize must be between 8 and 512 pixels, got {config.resize}"),
        (config.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (config.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
        (config.num_train is None or config.num_train >= 1, "--num-train must be at least 1"),
        (config.num_val is None or config.num_val >= 1, "--num-val must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
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
        raise ValueError(f"--batch-size {batch_size} is the global batch and must split evenly over the "
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


def build_data(config: TrainConfig, test: bool = False):
    """The Fashion-MNIST data module the config describes (``test`` is the 10k test split as val)."""
    from cnnlab.data import FashionMNIST

    return FashionMNIST(batch_size=config.batch_size, resize=config.resize, root=config.data_dir,
                        normalize=config.normalize, augment=config.augment, seed=config.seed,
                        num_train=config.num_train, num_val=config.num_val, val_batch_size=1024)


def build_model(config: TrainConfig):
    from cnnlab.models import create_model

    model = create_model(config.model, num_classes=10, in_channels=1, image_size=config.resize, lr=config.lr)
    model.label_smoothing = config.label_smoothing
    return model


def read_run_config(run_dir: Path) -> TrainConfig:
    """The settings a run folder was started with (``config.json``), to resume it as it was."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a cnnlab run folder (no config.json); give the folder "
                              "that `cnnlab train --out` wrote")
    try:
        values = json.loads(path.read_text())
        config = TrainConfig(**values)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid run config: {exc}") from None
    for field in dataclasses.fields(TrainConfig):
        value, kinds = getattr(config, field.name), _FIELD_TYPES[field.name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CheckpointError(f"{path} is not a valid run config: {field.name} is {value!r}, expected "
                                  f"{' or '.join(k.__name__ for k in kinds)}")
    return config


# What each config field may hold once resolved (JSON gives ints for whole floats, so floats accept ints).
_FIELD_TYPES = {
    "model": (str,), "epochs": (int,), "batch_size": (int,), "lr": (float, int), "optimizer": (str,),
    "momentum": (float, int), "weight_decay": (float, int), "schedule": (str,), "label_smoothing": (float, int),
    "resize": (int,), "augment": (bool,), "normalize": (bool,), "bf16": (bool,), "channels_last": (bool,),
    "compile": (bool,), "device": (str,), "seed": (int,), "data_dir": (str, type(None)),
    "num_train": (int, type(None)), "num_val": (int, type(None)), "out": (str, type(None)), "progress": (bool,),
}


def run_training(config: TrainConfig, resume: str | os.PathLike | None = None, log=print,
                 on_epoch_end=None) -> dict:
    """Train as ``config`` says (or continue the run folder ``resume``) and return a summary dict.

    The summary holds the test accuracy of the final weights on the full validation split, the wall time,
    and where the files are. Under torchrun every rank calls this; only rank 0 writes files.
    """
    start = time.perf_counter()
    state = None
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise CheckpointError(f"no such run folder: {run_dir}")
        config = read_run_config(run_dir)
        # The same checks as a new run (a hand-edited config.json is no exception), including that the batch
        # splits over this run's processes: a run may be resumed with another number of them.
        validate_config(config)
        if (run_dir / "last.pt").is_file():
            state = load_checkpoint(run_dir / "last.pt")
    else:
        validate_config(config)
        run_dir = Path(config.out) if config.out else default_run_dir(config.model)
    device = pick_device(config.device)
    ctx = dist_utils.DistContext(world_size=dist_utils.env_world_size())
    try:
        ctx = dist_utils.init_from_env(device.type)  # waits (up to the timeout) for all ranks to join
        if ctx.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        if config.seed is not None:
            torch.manual_seed(config.seed)  # the same seed on every rank: identical initial weights
        data = build_data(config)
        model = build_model(config)
        run_dir = _set_up_run_dir(run_dir, config if resume is None else None, state, ctx)
        trainer = Trainer(
            max_epochs=config.epochs, device=device, run_dir=run_dir, seed=config.seed,
            optimizer=make_optimizer(config), scheduler=make_scheduler(config),
            autocast_dtype=torch.bfloat16 if config.bf16 else None, channels_last=config.channels_last,
            compile=config.compile,
            progress=config.progress, log=log, checkpoint_extra={"config": config.to_dict()},
            on_epoch_end=on_epoch_end,
        )
        if state is not None and state.get("epoch", 0) >= config.epochs:
            trainer.prepare(model, data)
            trainer.load_state_dict(state)
            finished_already = True
        else:
            trainer.fit(model, data, resume_from=state)
            finished_already = False
    except RuntimeError as exc:
        # Under torchrun a failed collective (gloo: "Connection reset by peer" when a rank died, "Timed out
        # waiting" when one hangs) is a plain RuntimeError; its first line goes into the message.
        if ctx.world_size == 1 or isinstance(exc, TrainingDiverged):
            raise
        raise dist_utils.DistributedRunFailed(exc, run_dir) from exc
    result = evaluate(trainer.model, data.val_dataloader(), trainer.device,
                      autocast_dtype=trainer.autocast_dtype) if ctx.is_main else None
    return {
        "run_dir": str(run_dir),
        "config": config,
        "history": trainer.history,
        "test_accuracy": result.accuracy if result else None,
        "test_count": result.count if result else None,
        "seconds": time.perf_counter() - start,
        "finished_already": finished_already,
    }


def _set_up_run_dir(run_dir: Path, new_config: TrainConfig | None, state: dict | None,
                    ctx: dist_utils.DistContext) -> Path:
    """Rank 0 creates the run folder (and writes ``config.json`` for a new run); every rank learns its path."""
    error = None
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if new_config is not None:
                _check_writable(run_dir)
                with atomic_write(run_dir / "config.json", "w") as f:  # a kill never leaves half a config
                    f.write(json.dumps(new_config.to_dict(), indent=2) + "\n")
        except OSError as exc:
            error = CheckpointError(f"cannot create run folder {run_dir}: {exc.strerror or exc}; "
                                    "choose another --out folder")
        except ValueError as exc:
            error = exc
    # One exchange settles the set-up for all ranks: rank 0's folder (the default name holds a timestamp that
    # could differ between ranks), whether rank 0 could create it (so no rank waits for a rank 0 that gave
    # up), and which checkpoint epoch each rank loaded (they must all resume from the same one).
    seen = dist_utils.all_gather_object((run_dir, error, state.get("epoch") if state else None), ctx)
    run_dir, error = seen[0][0], seen[0][1]
    if error is not None:
        raise error
    epochs = [epoch for _, _, epoch in seen]
    if len(set(epochs)) > 1:
        raise CheckpointError(f"the processes of this run found different checkpoints in {run_dir} (epoch by "
                              f"rank: {epochs}); on several machines the run folder must be on a filesystem "
                              "they all share, at the same path")
    return run_dir


def _check_writable(run_dir: Path) -> None:
    probe = run_dir / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"cannot write into run folder {run_dir}: {exc.strerror or exc}; "
                              "choose another --out folder") from None
