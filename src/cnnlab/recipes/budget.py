"""A time budget for the whole command (``cnnlab train --budget 5m``): parsing it, and planning where its seconds go.

The budget runs from the process's start to its exit. What is not training is measured or estimated on this
machine before training starts: the start-up and data loading already spent, one validation pass and the final
test pass (timed on a few real batches of this model), and a safety margin. The rest is the training time that
:class:`~cnnlab.training.schedules.ClockProgress` spreads the learning-rate schedule over; validation passes at epoch
ends are timed as they happen and the training time left is re-planned after each, so the plan corrects itself on a
busy machine.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import torch

from cnnlab.errors import ConfigError
from cnnlab.nn.classifier import eval_mode
from cnnlab.training.callbacks import Callback
from cnnlab.training.distributed import all_reduce_sum
from cnnlab.training.runtime import autocast
from cnnlab.training.schedules import ClockProgress

__all__ = ["BATCH_FLOOR", "MIN_BUDGET_EPOCHS", "MIN_BUDGET_STEPS", "BudgetKeeper", "BudgetPlan", "budget_batch_size",
           "budget_epochs", "choose_threads", "fastest_threads", "parse_duration", "plan_budget", "process_seconds",
           "seconds_per_eval_image", "time_training_steps"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}

# Seconds kept free at the end, beyond every estimate: exit, the last file writes, an estimate's error. A share of
# the budget (so a 15-minute run keeps 13 s) plus a fixed second; the goal is "within budget + 2%".
MARGIN_SHARE, MARGIN_SECONDS = 0.025, 1.0
# The process's exit (torch's teardown) takes about this share of its start-up (torch's import), on any load.
EXIT_SHARE = 0.6


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``'90s'``, ``'5m'``, ``'1.5h'`` or a plain number of seconds.

    Raises:
        ConfigError: anything else, or a duration that is not positive.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
        if match is None:
            raise ConfigError(f"--budget {text!r} is not a duration; write e.g. 90s, 5m or 1h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"--budget must be a positive duration, got {text!r}")
    return seconds


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere 0, i.e. since this call's caller began).

    The budget covers the whole command, so the interpreter's and torch's start-up count too.
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass(frozen=True)
class BudgetPlan:
    """Where a budget's seconds go; ``training`` is what the learning-rate schedule is laid out over."""

    total: float
    spent: float  # start-up, data, model: before the plan
    validation: float  # one validation pass (the last one, after the clock stops)
    final: float  # the final test pass (reloading the best checkpoint and the test data) and the process's exit
    margin: float

    @property
    def training(self) -> float:
        return self.total - self.spent - self.validation - self.final - self.margin

    def describe(self) -> str:
        return (f"budget {self.total:.0f} s: {self.spent:.1f} s start-up and data, {self.training:.1f} s training, "
                f"{self.validation:.1f} s per validation pass, {self.final:.1f} s final test pass and exit, "
                f"{self.margin:.1f} s margin")


def plan_budget(total: float, spent: float, validation: float, final: float) -> BudgetPlan:
    """Plan ``total`` seconds of which ``spent`` are gone; raise when no training time would be left.

    Raises:
        ConfigError: the budget cannot hold even a second of training, naming what the fixed costs are.
    """
    plan = BudgetPlan(total=total, spent=spent, validation=validation, final=final,
                      margin=MARGIN_SHARE * total + MARGIN_SECONDS)
    if plan.training < 1.0:
        need = total - plan.training + 1.0
        raise ConfigError(f"--budget {total:g}s leaves no time to train on this machine ({plan.describe()}); "
                          f"give at least {math.ceil(need * 1.2)}s, or fewer images (--num-train)")
    return plan


def seconds_per_eval_image(model: torch.nn.Module, loader, device: torch.device, autocast_dtype=None,
                           channels_last: bool = False, images: int = 2048) -> float:
    """Seconds an evaluation pass spends per image on this machine: ``loader``'s batches, enough for ``images``
    images (or all there are), timed after one untimed warm-up batch (the model as it will be evaluated, flip
    averaging included); a loader of one batch is timed on that batch again."""
    taken, to_time = [], 0
    for X, y in loader:
        taken.append((X, y))
        to_time += y.shape[0] if len(taken) > 1 else 0
        if to_time >= images:
            break
    timed, timed_images = 0.0, 0
    with eval_mode(model), torch.inference_mode(), autocast(device, autocast_dtype):
        for i, (X, y) in enumerate(taken if len(taken) > 1 else taken * 2):
            X = X.to(device)
            if channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            model.validation_step((X, y.to(device)))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first batch warms up (allocations, kernel choice)
                timed, timed_images = timed + time.perf_counter() - start, timed_images + y.shape[0]
    return timed / max(timed_images, 1)


def time_training_steps(model: torch.nn.Module, batch, autocast_dtype=None, channels_last: bool = False,
                        steps: int = 6) -> list[float]:
    """Seconds each of ``steps`` training steps (forward and backward) on ``batch`` took, with the process's
    thread count, on a copy of ``model``: its weights, its BatchNorm statistics and the random number
    generators are left as they were. The first step warms up (allocations, the thread pool)."""
    import copy

    trial = copy.deepcopy(model).train()
    X, y = batch
    if channels_last:
        trial, X = trial.to(memory_format=torch.channels_last), X.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps):
            start = time.perf_counter()
            with autocast(torch.device("cpu"), autocast_dtype):
                loss = trial.training_step((X, y))
            loss.backward()
            trial.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    return times


def fastest_threads(model: torch.nn.Module, batch, autocast_dtype=None,
                    channels_last: bool = False) -> tuple[int, dict[int, float]]:
    """The intra-op thread count that trains ``model`` fastest on this CPU now, and the seconds a training step
    took with each count tried: torch's own (one thread per core) and half of it.

    On a machine where another process keeps a core busy, torch's threads wait for each other at every
    operation's end. Measured on 2 cores (Intel Xeon) with one kept busy, a FastNet step at batch 256 (bf16) took
    344 ms on 2 threads and 150 ms on 1 (quiet: 106 and 168 ms); a 60 s budget took 86 steps instead of ~380.
    Timing both on one of this run's batches (:func:`time_training_steps`) decides from the machine as it is, not
    from a load average that lags a minute. Fewer threads must be 10% faster to win. The process's thread count
    is left as it was: the caller applies the winner (``TrainConfig.threads``).
    """
    counts = sorted({torch.get_num_threads(), max(1, torch.get_num_threads() // 2)}, reverse=True)
    seconds, threads = {}, torch.get_num_threads()
    try:
        for count in counts:
            torch.set_num_threads(count)
            times = time_training_steps(model, batch, autocast_dtype, channels_last)
            # The median: on a shared core the threads' waits come and go, and one lucky step must not decide.
            seconds[count] = sorted(times[1:])[2]
    finally:
        torch.set_num_threads(threads)
    best = counts[0]
    for count in counts[1:]:
        if seconds[count] < 0.9 * seconds[best]:
            best = count
    return best, seconds


def choose_threads(model: torch.nn.Module, data, bf16: bool = False, channels_last: bool = False,
                   log=print) -> tuple[int, float]:
    """A clock-planned CPU run's thread count (``--budget``, the automatic recipe) and the seconds a training
    step took with it: :func:`fastest_threads` on the first training batch of ``data``, said in one line when
    the count is not torch's default."""
    default = torch.get_num_threads()
    batch = next(iter(data.train_dataloader()))
    threads, seconds = fastest_threads(model, batch, torch.bfloat16 if bf16 else None, channels_last)
    if threads != default and log is not None:
        steps = ", ".join(f"{n} thread{'s' * (n > 1)} {s * 1000:.0f} ms" for n, s in seconds.items())
        log(f"threads: {threads} of {default}, as another process is using the cores (a training step: {steps})")
    return threads, seconds[threads]


# A budget that allows fewer optimizer steps than this at the recipe's batch halves the batch (to BATCH_FLOOR).
MIN_BUDGET_STEPS = 500
BATCH_FLOOR = 64
TRAINING_SHARE = 0.6  # of the seconds left, a rough share for training (the plan proper comes at fit start)


def budget_batch_size(batch_size: int, step_seconds: float, seconds_left: float) -> int:
    """The batch a budgeted run trains with: the recipe's ``batch_size``, halved while the training time left
    (about :data:`TRAINING_SHARE` of ``seconds_left``) holds fewer than :data:`MIN_BUDGET_STEPS` steps of
    ``step_seconds`` each (a step's time taken as proportional to its batch), down to :data:`BATCH_FLOOR`.

    Early in training the batch that still pays is small (McCandlish et al., "An Empirical Model of Large-Batch
    Training", 2018): a run that cannot make a few hundred steps gains more from more, smaller steps than from
    large ones. Measured on 2 cores (Intel Xeon, fp32 as on a CPU without bf16): ``--recipe fast --budget 60s``
    made 157 steps of 256 and scored 0.844; 345 steps of 128, 0.886; 712 of 64, 0.894.
    """
    training = TRAINING_SHARE * max(seconds_left, 0.0)
    while batch_size // 2 >= BATCH_FLOOR and training < MIN_BUDGET_STEPS * step_seconds:
        batch_size //= 2
        step_seconds /= 2
    return batch_size


# A budget that holds fewer passes over the training images than this of a model with a registered narrower form
# (``fastnet-wide`` -> ``fastnet-flip`` -> ``fastnet-slim``) trains the narrower one: a net that sees the data more
# often beats a wider one that sees it a few times. Measured with ``--recipe fast`` on Fashion-MNIST (2 cores,
# Intel Xeon, one seed each; "holds" is this estimate for FastNet 24-48-96, test accuracy 24-48-96 -> 16-32-64):
#   bf16: 30 s holds 0.6, 0.869 -> 0.895; 60 s 1.5, 0.912 -> 0.916; 2 m 3.0, 0.925 -> 0.931; 5 m 7.6, 0.939 -> 0.936;
#   fp32 (a CPU without bf16): 60 s 0.7, 0.892 -> 0.906; 5 m 3.7, 0.924 -> 0.929;
#   fp32 on one core: 60 s 0.3, 0.828 -> 0.891.
# The narrower net wins up to 3.7 epochs and loses at 7.6: the threshold sits between.
MIN_BUDGET_EPOCHS = 5.0


def budget_epochs(step_seconds: float, batch_size: int, seconds_left: float, train_images: int) -> float:
    """About how many passes over ``train_images`` a budget with ``seconds_left`` holds at ``step_seconds`` for a
    step of ``batch_size`` (the training share of the seconds, :data:`TRAINING_SHARE`)."""
    return TRAINING_SHARE * max(seconds_left, 0.0) / step_seconds * batch_size / max(train_images, 1)


class BudgetKeeper(Callback):
    """Plans the budget when training starts and re-plans the training time left after every epoch's end.

    At the start it times this model's evaluation on 2,048 validation images, plans (:func:`plan_budget`), sets
    the trainer's :class:`~cnnlab.training.schedules.ClockProgress` to the planned training time and prints the
    plan. After each epoch's end (validation, checkpoints, plots: everything after the clock paused) it measures
    what that took and spreads the progress left over the seconds left, so an estimate that was off, or a machine
    that got busier, moves the end of the schedule rather than the end of the command.

    Args:
        total: the budget in seconds, counted from the process's start.
        pace: the trainer's clock.
        data_seconds: how long loading the data took (the final pass reloads the test split).
        test_images: the number of images of the final test pass.
        clock: seconds since the process started (:func:`process_seconds`; tests pass a fake one).
        startup: seconds the process took to reach the command (interpreter, torch's import): its exit, torch's
            teardown, scales with it (measured under load: 12 s to start, 7 s to exit).
        after_training: seconds of work planned between training's end and the final pass (the automatic
            recipe's pixel blend, :func:`cnnlab.recipes.blend.blend_seconds`).
    """

    def __init__(self, total: float, pace: ClockProgress, data_seconds: float, test_images: int,
                 log=print, clock=process_seconds, startup: float = 0.0, after_training: float = 0.0):
        self.total, self.pace, self.log, self.clock = total, pace, log, clock
        self.exit_seconds, self.after_training = EXIT_SHARE * startup, after_training
        self.data_seconds, self.test_images = data_seconds, test_images
        self.plan: BudgetPlan | None = None

    def on_fit_start(self, trainer, model) -> None:
        per_image = seconds_per_eval_image(model, trainer.val_loader, trainer.device, trainer.speed.autocast_dtype,
                                           trainer.speed.channels_last)
        # The final pass scores the best checkpoint in fp32 (cnnlab.inference.loaded.evaluate_checkpoint): timed
        # so, since on a CPU with AMX an fp32 pass takes about twice the bf16 validation's time.
        per_final_image = seconds_per_eval_image(model, trainer.val_loader, trainer.device)
        n_val = len(getattr(trainer.val_loader, "labels", ()))
        # The last validation pass also saves checkpoints and draws curves: a second for those.
        validation = per_image * n_val * 1.2 + 1.0
        final = (per_final_image * self.test_images * 1.2 + self.data_seconds + 0.5 + self.exit_seconds
                 + self.after_training)
        # Under torchrun rank 0's measurements decide, so that every rank plans (or refuses) alike.
        spent, validation, final = _rank0(trainer, self.clock(), validation, final)
        self.plan = plan_budget(self.total, spent, validation, final)
        self.pace.replan(self.plan.training)
        if self.log is not None and trainer.is_main:
            blend = f" (with the pixel blend after training: its fit, {self.after_training:.1f} s, and a " \
                "validation pass)" if self.after_training else ""
            self.log(self.plan.describe() + blend)

    def on_train_epoch_end(self, trainer, model, row: dict) -> None:
        if trainer.finished:
            return
        end_of_epoch = self.pace.clock() - self.pace.paused_at  # validation, checkpoints, curves
        spent, end_of_epoch = _rank0(trainer, self.clock(), end_of_epoch)
        validation = max(self.plan.validation, end_of_epoch * 1.2)
        self.plan = BudgetPlan(self.total, spent, validation, self.plan.final, self.plan.margin)
        # The last validation pass stays reserved, so any training time left is spent on training.
        if self.plan.training <= 0:
            self.pace.finish()
        else:
            self.pace.replan(self.plan.training)


def _rank0(trainer, *values: float) -> list[float]:
    """Rank 0's ``values`` on every rank (under torchrun; the values themselves otherwise)."""
    if trainer.ctx.world_size == 1:
        return list(values)
    mine = torch.tensor(values if trainer.ctx.is_main else [0.0] * len(values), dtype=torch.float64,
                        device=trainer.device)
    return all_reduce_sum(mine, trainer.ctx).tolist()
