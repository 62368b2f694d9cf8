"""What defines a training run: the frozen :class:`TrainConfig`, the recipe tables, and their resolution and checks.

The command line fills a :class:`TrainConfig`; every field left as None takes the model's recipe default
(timm's rule: CLI defaults never override model defaults): :func:`resolve_config` fills them,
:func:`validate_config` rejects impossible settings, :func:`read_run_config` reads a run folder's back.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass

from cnnlab.errors import ConfigError, RunFolderError
from cnnlab.recipes.optim import OPTIMIZERS, SCHEDULES
from cnnlab.training import distributed as dist_utils
from cnnlab.training.runfolder import RunFolder
from cnnlab.training.runtime import bf16_default, pick_device

__all__ = ["BASE", "RECIPES", "TrainConfig", "check_world_size", "model_defaults", "read_run_config",
           "resolve_config", "validate_config"]


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
    image_size: int | None = None  # the side the model sees (--image-size; `resize` in files before issue 24)
    augment: bool | None = None
    flip: bool | None = None  # with augment: mirror images too; None: yes (the seed's and Fashion's crop + flip)
    cutout: float | None = None  # with augment: Cutout of this fraction of the image side (0: none)
    passes: int | None = None  # passes over the training images per epoch (the automatic recipe's small folders)
    # After training, the net averaged with a linear classifier on its input pixels where the validation split
    # says so (cnnlab.recipes.blend); the automatic recipe's last step
    pixel_blend: bool | None = None
    # Each colour image's cast removed inside the model (cnnlab.nn.layers.white_balance); the automatic recipe
    # decides from the folder where not given (cnnlab.recipes.colour)
    white_balance: bool | None = None
    # After training, best.pt's net scores each image as the mean of its predictions over its shifts by up to
    # this many pixels, which its random crops taught it (FastNet's shift_tta; 0: one view); the automatic
    # recipe's wherever it crops, as many as the clock allows (cnnlab.recipes.blend.tta_shift)
    shift_tta: int | None = None
    normalize: bool | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    device: str = "auto"
    threads: int | None = None  # intra-op CPU threads; None: torch's, or under --budget timed (fastest_threads)
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
    budget: float | None = None
    steps: int | None = None
    min_steps: int | None = None
    replay: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The seed's recipe (d2l §7.6): sigmoid LeNet, xavier init, SGD lr 0.1, batch 128, 10 epochs, 28x28.
# How it runs is ours: channels_last and, where the hardware has it, bf16 autocast (bf16=None: decided by
# bf16_default) make the seed's LeNet 1.3x faster on an AMX CPU at the same accuracy (benchmarks/train.py
# --techniques); torch.compile pays for its ~20 s of compiling only on long runs, so it stays opt-in.
# Each model's own defaults (input size, optimizer, schedule; its learning rate is its builder's `lr`
# default) are registered with the model: see `register_model` and :func:`model_defaults`.
BASE = dict(epochs=10, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=0.0,
            schedule="constant", label_smoothing=0.0, image_size=28, augment=False, cutout=0.0, passes=1,
            normalize=False, bf16=None, channels_last=True, compile=False, min_steps=0, pixel_blend=False,
            white_balance=False, shift_tta=0)


# Validation images of a budgeted Fashion-MNIST run (see resolve_config).
BUDGET_NUM_VAL = 2000


def model_defaults(model: str) -> dict:
    """The training defaults of a registered model: the base recipe, then what the model registered."""
    from cnnlab.models import model_recipe

    return {**BASE, **model_recipe(model)}


# The floor of optimizer steps of the time-to-accuracy recipes: their one-cycle schedule needs a few hundred steps
# to warm up and anneal, whatever the data's size (1.4k images at batch 256 are 6 steps an epoch: 7 epochs would be
# 42 steps). A small data set gets more passes instead; an explicit --epochs turns the floor off.
_MIN_STEPS = 500

# What the time-to-accuracy recipes share (each sets its model and length).
_FAST = dict(model="fastnet-wide", batch_size=256, lr=0.2, optimizer="momentum", weight_decay=5e-4,
             schedule="onecycle", label_smoothing=0.1, augment=True, normalize=True, min_steps=_MIN_STEPS)

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
    (:func:`cnnlab.training.runtime.bf16_default`).
    """
    given = {k: v for k, v in config.to_dict().items() if v is not None}
    recipe_values = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
        recipe_values = dict(RECIPES[recipe])
        if "model" in recipe_values and config.model == TrainConfig.model:
            given["model"] = recipe_values["model"]
    from cnnlab.models import check_model_name

    model = check_model_name(given.get("model", config.model))
    filled = {**model_defaults(model), **recipe_values, **given}
    filled["model"] = model
    if config.images is not None and config.image_size is None:
        filled["image_size"] = None  # an image folder's own default: 28 for grey images, 32 for colour
    if filled["bf16"] is None:
        filled["bf16"] = bf16_default(pick_device(filled["device"]))
    if "epochs" in given and "min_steps" not in given:
        filled["min_steps"] = 0  # the epochs asked for, not a floor's
    if filled.get("budget") is not None and config.images is None and filled.get("num_val") is None:
        # Under a budget each validation pass costs training steps: 2,000 of the test images choose the best
        # epoch (about 1 s a pass, not 5, on 2 CPU cores), and the whole test set is scored once at the end.
        filled["num_val"] = BUDGET_NUM_VAL
    return TrainConfig(**{k: filled.get(k) for k in (f.name for f in dataclasses.fields(TrainConfig))})


def validate_config(config: TrainConfig) -> None:
    """Reject impossible settings with one clear sentence each (the CLI turns these into exit code 2)."""
    from cnnlab.models import check_model_name
    from cnnlab.models.registry import builder_arguments

    check_model_name(config.model)
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.lr > 0 and config.lr == config.lr and config.lr != float("inf"),
         f"--lr must be a positive finite number, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {config.label_smoothing}"),
        (0 <= config.cutout < 1, f"--cutout is a fraction of the image side in [0, 1), got {config.cutout}"),
        (config.image_size is None and config.images is not None or config.image_size is not None and
         8 <= config.image_size <= 512, f"--image-size must be between 8 and 512 pixels, got {config.image_size}"),
        (config.val_split is None or 0 < config.val_split < 1,
         f"--val-split must be a fraction between 0 and 1, such as 0.1, got {config.val_split}"),
        (config.channels in (None, 1, 3), f"--channels must be 1 or 3, got {config.channels}"),
        (config.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (config.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
        (config.num_train is None or config.num_train >= 1, "--num-train must be at least 1"),
        (config.num_val is None or config.num_val >= 1, "--num-val must be at least 1"),
        (config.budget is None or config.budget > 0, f"--budget must be a positive duration, got {config.budget}"),
        (config.steps is None or config.steps >= 1, f"--steps must be at least 1, got {config.steps}"),
        (config.passes >= 1, f"passes (over the training images per epoch) must be at least 1, got {config.passes}"),
        (config.threads is None or config.threads >= 1, f"--threads must be at least 1, got {config.threads}"),
        ((config.shift_tta or 0) >= 0, f"--shift-tta must be 0 or more, got {config.shift_tta}"),
        (not config.pixel_blend or config.images is not None and "pixel_blend" in builder_arguments(config.model),
         f"--pixel-blend needs --images and a model with a pixel head (fastnet-auto, the automatic recipe's), "
         f"not {config.model}"),
        (not config.white_balance or "white_balance" in builder_arguments(config.model),
         f"--white-balance needs a model that removes a colour cast (fastnet-auto, the automatic recipe's), not "
         f"{config.model}"),
        (not config.shift_tta or config.augment and "shift_tta" in builder_arguments(config.model),
         f"--shift-tta needs a model trained on random crops (--augment) that averages shifted views "
         f"(fastnet-auto, the automatic recipe's), not {config.model}{'' if config.augment else ' without crops'}"),
        (config.budget is None or config.steps is None, "give --budget or --steps, not both: --steps replays "
         "a number of steps without the clock"),
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


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The settings a run folder was started with (``config.json``), checked field by field, to resume it as it was.

    Raises:
        RunFolderError: no such folder, no config, or a config that is not what ``cnnlab train`` writes.
    """
    folder = RunFolder(run_dir)
    values = folder.read_config()
    if isinstance(values, dict):
        # A run folder written before a setting existed resumes with that setting's base value (min_steps: 0); one
        # written before a setting was renamed was read under today's names (resize: image_size) by read_config.
        values = {**{k: v for k, v in BASE.items() if k not in values and v is not None}, **values}
        if isinstance(values.get("shift_tta"), bool):  # a yes or no before December 2026: yes was one pixel
            values["shift_tta"] = int(values["shift_tta"])
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


def _resolved_types() -> dict[str, tuple[type, ...]]:
    """What each config field may hold once resolved, read off TrainConfig's annotations.

    A field the recipes fill (one of BASE's) is never None once resolved; the others keep None as "not given".
    JSON writes a whole float as an int, so a float field also accepts an int.
    """
    hints = typing.get_type_hints(TrainConfig)
    table = {}
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if field.name in BASE:
            kinds = tuple(k for k in kinds if k is not type(None))
        table[field.name] = kinds + ((int,) if float in kinds and int not in kinds else ())
    return table


_FIELD_TYPES = _resolved_types()
