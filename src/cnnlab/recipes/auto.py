"""The automatic recipe for your own images: ``cnnlab train --images DIR`` with no other option (issue 23, item 3).

Every choice is read off the data, never tuned for one dataset: :func:`plan_recipe` is a pure function of the
:class:`DataFacts` (image size, channels, number of images, classes) and the measured seconds per step, so its
decisions are tested without training. The plan:

- the net: FastNet sized to the input (``fastnet-auto``: BatchNorm, two conv groups up to 16 px, three above);
  images above 32 px are resized to 32 (the time goes into steps rather than pixels);
- a colour set whose cast does not tell the class (:mod:`cnnlab.recipes.colour`) white-balanced image by image;
- augmentations safe for any data: random crops of 2 px from 16 px up, Cutout (a square of a quarter of the side
  set to the mean) from 32 px, no mirror images unless the classes are mirror-symmetric (``--augment flip``), no
  flip averaging, no label smoothing;
- the learning rate from a range test (:mod:`cnnlab.recipes.auto_lr`), which also times a
  step;
- a schedule in optimizer steps: :data:`STEP_FLOOR` steps when the clock allows (a small folder gets many
  passes), fewer when :data:`TRAIN_SECONDS` would not hold them; warm-up then linear decay to zero;
- the best epoch chosen on a validation split carved from ``train/`` when there is no ``val/``; the test
  split is scored once, beside a linear classifier on the raw pixels (:mod:`cnnlab.training.baseline`).

A run that diverges anyway (loss not finite, train loss above 2 ln K or validation loss above 3 ln K after an
epoch) is restarted from its last good state (the weights of the last epoch that passed the checks, the initial
weights if none did) with a quarter of the learning rate and a fresh warm-up, and says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.passes import RepeatedPasses
from cnnlab.errors import TrainingDiverged
from cnnlab.recipes.auto_lr import LR_TEST_STEPS, MAX_PEAK_LR, model_and_threads, peak_lr, range_test
from cnnlab.recipes.blend import TTA_BUDGET_SHARE, TTA_SECONDS, scored_after_training, tta_shift, tta_views
from cnnlab.recipes.config import TrainConfig, resolve_config
from cnnlab.recipes.resume import NEW
from cnnlab.training import distributed as dist_utils
from cnnlab.training.baseline import save_baseline
from cnnlab.training.callbacks import Callback
from cnnlab.training.runtime import eval_batch_size

__all__ = ["LR_TEST_STEPS", "MAX_PEAK_LR", "STEP_FLOOR", "TRAIN_SECONDS", "AutoPlan", "DataFacts", "DivergenceGuard",
           "RepeatedPasses", "data_facts", "lr_find_for", "native_size", "peak_lr", "plan_recipe", "range_test",
           "run_auto"]

STEP_FLOOR = 1500  # optimizer steps a small folder gets when the clock allows (FastNet by hand: ~30 epochs)
TRAIN_SECONDS = 40.0  # training time planned: with data, lr test, validation and test, ~60 s, 90 s if 1.5x slower
MAX_SIDE = 32  # larger images are resized down to this
VALIDATIONS = 12  # validation points (epochs of the trainer) over the run
CUTOUT = 0.25  # Cutout's square, a fraction of the side (DeVries & Taylor: 8 px of CIFAR-100's 32)
CUTOUT_FROM = 32  # the side from which it cuts out (measured: a gain at 32 px, 0.02 lost at 28, none at 16 or 25)


@dataclass(frozen=True)
class DataFacts:
    """What the recipe is chosen from: the images' side, channels, training images and classes."""

    height: int
    width: int
    channels: int
    num_train: int
    num_classes: int


@dataclass(frozen=True)
class AutoPlan:
    """The automatic recipe's decisions (printed in one line by :meth:`describe`)."""

    image_size: int
    batch_size: int
    steps: int
    passes_per_epoch: int
    epochs: int
    augment: bool
    flip: bool
    cutout: float = 0.0
    shift_tta: int = 0  # the net tested on its shifts by up to this many pixels (cnnlab.recipes.blend)
    length: str | None = None  # what decides the length instead of the plan (--steps, --budget), as the line says

    def describe(self, model: str, lr: float, source: str = "range test") -> str:
        augment = ("crop+flip" if self.flip else "crop") if self.augment else "none"
        if self.augment and self.cutout:
            augment += f"+cutout {self.cutout:g}"
        augment += f", tested on {tta_views(self.shift_tta)} shifts" if self.shift_tta else ""
        side, passes = self.image_size, f"{self.passes_per_epoch} pass{'es' if self.passes_per_epoch > 1 else ''}"
        length = self.length or f"{self.steps:,} steps ({self.epochs} epochs of {passes})"
        return (f"automatic recipe: {model} at {side}x{side}, batch {self.batch_size}, {length}, "
                f"lr {lr:.3g} ({source}), warm-up + linear decay, augment {augment}")


def native_size(root: str | os.PathLike, sample: int = 32) -> tuple[int, int]:
    """The median (height, width) of the first ``sample`` image files under ``root``, read from their headers."""
    from cnnlab.data.images import IMAGE_SUFFIXES, probe_image
    from cnnlab.errors import ImageError

    sizes = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                try:
                    width, height, _ = probe_image(os.path.join(here, name))
                except ImageError:
                    continue  # the folder's own decoding lists every bad file, or skips it (--skip-bad)
                sizes.append((height, width))
                if len(sizes) >= sample:
                    break
        if len(sizes) >= sample:
            break
    if not sizes:
        return 32, 32  # no image found: the folder's own check will say so
    sizes.sort()
    return sizes[len(sizes) // 2]


def choose_image_size(height: int, width: int) -> int:
    """The square side images are trained at: their own (the smaller side), at most :data:`MAX_SIDE`."""
    return max(8, min(MAX_SIDE, min(height, width)))


def data_facts(data) -> DataFacts:
    """The :class:`DataFacts` of an image-folder data module (its training split, as decoded)."""
    channels, height, width = data.image_shape
    return DataFacts(height, width, channels, len(data.train_labels), len(data.classes))


def plan_recipe(facts: DataFacts, flip: bool = False, seconds_per_step: float | None = None,
                train_seconds: float = TRAIN_SECONDS) -> AutoPlan:
    """The recipe for these data: a pure function of the facts and the measured time of one step.

    Batches of 16 below 400 images, 32 below 1,500, else 64 (small folders need steps more than large
    batches); :data:`STEP_FLOOR` steps, fewer when ``seconds_per_step`` says they would take longer than
    ``train_seconds``, never fewer than 8 passes; about :data:`VALIDATIONS` epochs of whole passes.
    """
    n = facts.num_train
    batch = 16 if n < 400 else 32 if n < 1500 else 64
    per_pass = max(1, math.ceil(n / batch))
    steps = STEP_FLOOR
    if seconds_per_step is not None and seconds_per_step > 0:
        steps = min(steps, int(train_seconds / seconds_per_step))
    steps = max(steps, 8 * per_pass, 50)
    passes_per_epoch = max(1, round(steps / (VALIDATIONS * per_pass)))
    epochs = max(1, math.ceil(steps / (passes_per_epoch * per_pass)))
    side = min(facts.height, facts.width)
    return AutoPlan(image_size=side, batch_size=batch, steps=epochs * passes_per_epoch * per_pass,
                    passes_per_epoch=passes_per_epoch, epochs=epochs, augment=side >= 16, flip=flip,
                    cutout=CUTOUT if side >= CUTOUT_FROM else 0.0)


class DivergenceGuard(Callback):
    """Stop a run whose losses say it diverged: train loss above 2 ln K or validation loss above 3 ln K.

    It keeps the last good state: a copy of the weights after the last epoch that passed (``good_state``, with
    ``good_epoch``), which a restart begins from; None before the first.
    """

    def __init__(self, num_classes: int):
        self.chance_loss = math.log(num_classes)
        self.good_state: dict[str, torch.Tensor] | None = None
        self.good_epoch = 0

    def on_train_epoch_end(self, trainer, model, row: dict) -> None:
        if row["train_loss"] > 2 * self.chance_loss or not row["val_loss"] <= 3 * self.chance_loss:
            raise TrainingDiverged(
                f"epoch {row['epoch']}: train loss {row['train_loss']:.3g}, validation loss {row['val_loss']:.3g} "
                f"against {self.chance_loss:.3g} (ln {round(math.exp(self.chance_loss))}) at chance: the run diverged")
        if model is not None:
            # On the CPU, detached: the copy must not follow the weights as they go on training (or diverging).
            self.good_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.good_epoch = row["epoch"]


# ---- the run ------------------------------------------------------------------------------------------------

def _folder_data(config: TrainConfig, image_size: int, val_split: float | None, flip: bool, log=print):
    from cnnlab.data.imagefolder import ImageFolderData

    return ImageFolderData(config.images, batch_size=config.batch_size or 16, image_size=image_size,
                           channels=config.channels, normalize=True, augment=False, seed=config.seed,
                           val_split=val_split, val_batch_size=eval_batch_size(config.device),
                           skip_bad=config.skip_bad, progress=config.progress and log is not None, log=log, flip=flip)


def _draft(config: TrainConfig, log=print) -> tuple[TrainConfig, object]:
    """The automatic recipe before its range test: the config (lr 0.1 unless given, the plan's batch size) and
    the data module, not yet augmented; ``cnnlab lr-find --images`` tests exactly what the run will test."""
    root = Path(config.images)
    image_size = config.image_size or choose_image_size(*native_size(root))
    has_val = (root / "train").is_dir() and (root / "val").is_dir()
    # The best epoch is chosen on images carved from train/, never on the test split, which is scored once.
    val_split = config.val_split if config.val_split is not None or has_val else 0.1
    data = _folder_data(config, image_size, val_split, flip=bool(config.flip), log=log)
    recipe = dict(model="fastnet-auto", image_size=image_size, val_split=val_split, normalize=True,
                  optimizer="momentum", momentum=0.9, weight_decay=5e-4, schedule="linear", label_smoothing=0.0,
                  flip=bool(config.flip), pixel_blend=True, white_balance=_white_balance(config, data, log))
    # The user's options win over the recipe's (--weight-decay, --schedule, ...); the model is the recipe's, as
    # a model named on the command line does not come here.
    given = {k: v for k, v in config.to_dict().items() if v is not None and k != "model"}
    draft = resolve_config(TrainConfig(**{**recipe, **given, "lr": config.lr or 0.1}))
    data.batch_size = config.batch_size or plan_recipe(data_facts(data), flip=bool(config.flip)).batch_size
    return dataclasses.replace(draft, batch_size=data.batch_size), data


def _white_balance(config: TrainConfig, data, log=None) -> bool:
    """The user's ``--white-balance`` if given, else whether the colour cast of the training images is noise to
    their classes (:mod:`cnnlab.recipes.colour`; grey images have none)."""
    from cnnlab.recipes.colour import cast_test

    if config.white_balance is not None or data.image_shape[0] == 1:
        return bool(config.white_balance)
    test = cast_test(data.train_images, data.train_labels)
    if log is not None:
        log(test.describe())
    return test.cast_is_noise


def auto_config(config: TrainConfig, log=print) -> tuple[TrainConfig, object, AutoPlan]:
    """``config`` (the user's options, the rest None) completed by the automatic recipe for its image folder:
    the config, the data module to train on and the plan."""
    draft, data = _draft(config, log)
    lr, source, threads = config.lr, "given", config.threads
    if lr is None:
        found, seconds_per_step, threads = range_test(draft, data, log=log)
        lr = peak_lr(found)
        source = "range test" if lr < MAX_PEAK_LR else f"range test, at its cap {MAX_PEAK_LR:g}"
    else:  # no range test: the thread choice times a step, so that a slow machine's plan is still cut to time
        _, _, threads, seconds_per_step = model_and_threads(draft, data, log)
    plan = plan_recipe(data_facts(data), flip=bool(config.flip), seconds_per_step=seconds_per_step)
    augment = plan.augment if config.augment is None else config.augment
    cutout = (plan.cutout if augment else 0.0) if config.cutout is None else config.cutout
    data.augment, data.cutout = augment, cutout
    epochs = config.epochs or plan.epochs
    # An epoch of several passes (validated a dozen times in all) unless --epochs counts the epochs itself
    passes = plan.passes_per_epoch if epochs == plan.epochs else 1
    shift_tta = _shift_tta(config, data, augment, seconds_per_step, blend=bool(draft.pixel_blend))
    # The plan as run, the options given included (its line said "augment crop" under --no-augment)
    plan = dataclasses.replace(plan, augment=augment, cutout=cutout, epochs=epochs, passes_per_epoch=passes,
                               batch_size=data.batch_size, steps=epochs * passes * len(data.train_dataloader()),
                               shift_tta=shift_tta, length=_length_given(config))
    final = dataclasses.replace(draft, lr=float(lr), epochs=epochs, passes=passes, augment=augment, cutout=cutout,
                                threads=threads, shift_tta=shift_tta)
    if log is not None:
        log(plan.describe(final.model, final.lr, source))
    return final, data, plan


def _shift_tta(config: TrainConfig, data, augment: bool, seconds_per_step: float | None, blend: bool) -> int:
    """The test-time shift in pixels: ``--shift-tta N`` / ``--no-shift-tta`` if given; else, where the net trains
    on random crops, the largest whose views of the test and validation images fit the clock
    (:func:`cnnlab.recipes.blend.tta_shift`; under a ``--budget``, a tenth of it at most); else none."""
    if config.shift_tta is not None:
        return config.shift_tta
    if not augment:
        return 0
    seconds = TTA_SECONDS if config.budget is None else min(TTA_SECONDS, TTA_BUDGET_SHARE * config.budget)
    return tta_shift(scored_after_training(data, blend), seconds_per_step and seconds_per_step / data.batch_size,
                     seconds)


def _length_given(config: TrainConfig) -> str | None:
    """The run's length where an option decides it rather than the plan (the line said the plan's steps)."""
    if config.steps is not None:
        return f"{config.steps:,} steps (--steps)"
    if config.budget is not None:
        return f"as many steps as fit in --budget {config.budget:g}s"
    return None


def run_auto(config: TrainConfig, log=print, callbacks=(), spent: float = 0.0) -> dict:
    """``cnnlab train --images DIR`` with the automatic recipe: plan, train (lowering the lr and restarting on
    divergence), score the best epoch once on the test split, beside the linear baseline on the raw pixels."""
    from cnnlab.recipes.run import run_training
    from cnnlab.training.baseline import linear_baseline

    start = time.perf_counter()
    ctx = _join_group(config)
    log = log if ctx.is_main else None  # under torchrun rank 0 speaks for all
    config, data, plan = _agree_on_plan(*auto_config(config, log), ctx)
    # Scored before training, so that a --budget counts its seconds with the data and the range test's
    test = (data.test_images, data.test_labels) if data.has_test else (data.val_images, data.val_labels)
    # Rank 0 alone prints and saves it: under torchrun the other processes would fit it for nothing
    baseline = linear_baseline((data.train_images, data.train_labels), (data.val_images, data.val_labels), test,
                               len(data.classes)) if ctx.is_main else None
    guard, start_from, start_epoch = DivergenceGuard(len(data.classes)), None, 0
    for attempt in range(3):
        try:  # spent: everything before this attempt, earlier attempts included
            # A restart is a new run in the diverged attempt's folder, not torchrun's elastic continuation of it
            summary = run_training(config, resume=NEW if attempt else None, log=log,
                                   data=RepeatedPasses(data, config.passes),
                                   spent=spent + time.perf_counter() - start, startup=spent,
                                   callbacks=[guard, _SaveBaseline(baseline), *callbacks], initial_state=start_from)
            break
        except TrainingDiverged as exc:
            if attempt == 2:
                raise
            config = dataclasses.replace(config, lr=config.lr / 4)
            if guard.good_state is not None:  # this attempt had good epochs: the last of them is the new start
                start_from, start_epoch, guard.good_state = guard.good_state, guard.good_epoch, None
            where = "the initial weights" if start_from is None else \
                f"epoch {start_epoch}'s weights (the last good state)"
            if log is not None:  # None: silent, as auto_config and run_training take it
                log(f"{exc}; restarting from {where} with a quarter of the learning rate, {config.lr:.3g}")
    summary["baseline"] = baseline.to_dict() if baseline is not None else None
    summary["seconds"] = time.perf_counter() - start  # the data, the range test and the baseline included
    return summary


def _join_group(config: TrainConfig):
    """Under torchrun, the process group, joined before the planning (the range test then runs on the process's
    share of the cores, as its training will); the single-process context otherwise."""
    from cnnlab.training.runtime import pick_device

    if not dist_utils.launched_by_torchrun():
        return dist_utils.DistContext()
    try:
        return dist_utils.init_from_env(pick_device(config.device).type)
    except RuntimeError as exc:  # gloo's rendezvous failed: a rank died or never came
        raise dist_utils.run_failed(exc, None) from exc


def _agree_on_plan(config: TrainConfig, data, plan: AutoPlan, ctx) -> tuple[TrainConfig, object, AutoPlan]:
    """Every rank takes rank 0's plan. Each planned alone, from its own range test and its own timing of a step,
    which differ by noise (and by float rounding on unlike machines): ranks with another rate would train apart,
    and ranks with another number of steps would hang at the first collective of the shorter run."""
    if ctx.world_size == 1:
        return config, data, plan
    try:
        config, plan = dist_utils.all_gather_object((config, plan), ctx)[0]
    except RuntimeError as exc:
        raise dist_utils.run_failed(exc, None) from exc
    data.batch_size, data.augment, data.cutout = config.batch_size, config.augment, config.cutout
    return config, data, plan


class _SaveBaseline(Callback):
    """Writes the linear baseline into the run folder as soon as it exists, so that a run resumed after Ctrl-C
    or a crash (``cnnlab train --resume RUN``) still prints it beside the network's accuracy."""

    def __init__(self, baseline):
        self.baseline = baseline

    def on_fit_start(self, trainer, model) -> None:
        if trainer.is_main and trainer.run_dir is not None:
            save_baseline(trainer.run_dir, self.baseline)


def lr_find_for(config: TrainConfig, automatic: bool, steps: int = 100):
    """``cnnlab lr-find``: the range test for ``config`` (unset fields: the automatic recipe's if ``automatic``,
    else the model's recipe), and the resolved config it ran with."""
    from cnnlab.recipes.run import build_data

    if automatic:
        draft, data = _draft(config)
        return range_test(draft, data, steps)[0], draft
    config = resolve_config(config)
    return range_test(config, build_data(config), steps)[0], config
