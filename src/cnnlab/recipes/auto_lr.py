"""The automatic recipe's learning rate and thread count: a learning-rate range test (:mod:`cnnlab.training.lr_find`)
on the run's own model and batches, the peak rate read off it (:func:`peak_lr`), and the thread count timed
fastest for the run's steps (:func:`~cnnlab.recipes.budget.choose_threads`); also ``--lr auto`` for any model."""

from __future__ import annotations

import torch

from cnnlab.recipes.config import TrainConfig

__all__ = ["LR_TEST_STEPS", "MAX_PEAK_LR", "find_lr", "model_and_threads", "peak_lr", "range_test"]

LR_TEST_STEPS = 60
MAX_PEAK_LR = 0.2  # --recipe fast's rate for FastNet at batch 256; the automatic recipe's batches are 16-64


def peak_lr(found) -> float:
    """The peak rate of the automatic recipe's warm-up and decay from a range test: half the rate at which the
    smoothed loss has done 90% of its fall (:func:`~cnnlab.training.lr_find.descent_edge`), at least the test's
    own suggestion, at most :data:`MAX_PEAK_LR`.

    Read where the curve flattens, not at its lowest point: the bottom is flat and noisy, and a third of its
    argmin (this rule until December 2026) moved with the float rounding of the thread count, by 1.02 decades
    at worst on 30 recorded tests (0.31 here); photos-32 at seed 1 got 0.049 on one thread and 0.0047 on two.
    Measured over seeds 0-2 on the own-image collection (docs/own-images.md): half the edge met 20 of 24 goals,
    the edge itself 17 (fashion-28-200's 200 images overfit at its rates, 0.688 on the mean), the argmin's
    third 19.

    The cap is for folders of a few dozen images, which the net memorizes within the test: the loss then falls
    to its last step (lr 10): 10 images got 3.33 from the argmin's third, diverged at it and at its quarter and
    stopped with exit 3 after the third try."""
    return min(max(found.suggestion, found.edge / 2), MAX_PEAK_LR)


def model_and_threads(config: TrainConfig, data, log=None):
    """The run's model as it will be built (seeded), its device, and its thread count with the seconds a
    training step took: ``config.threads`` (seconds None), else on a CPU the faster of all cores' and half
    (:func:`~cnnlab.recipes.budget.choose_threads`: the plan's seconds are then the run's)."""
    from cnnlab.recipes.budget import choose_threads
    from cnnlab.recipes.run import build_model
    from cnnlab.training.distributed import env_world_size
    from cnnlab.training.runtime import pick_device

    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device)
    if config.threads is None and device.type == "cpu" and env_world_size() == 1:
        threads, seconds = choose_threads(model, data, bool(config.bf16), bool(config.channels_last), log)
        return model, device, threads, seconds
    return model, device, config.threads, None


def range_test(config: TrainConfig, data, steps: int = LR_TEST_STEPS, log=None):
    """The learning-rate range test of ``config``'s model and optimizer on ``data``'s training batches, with the
    seconds a training step takes (on this machine under its present load) and the run's thread count
    (:func:`model_and_threads`). The test runs on ``--threads`` or torch's default count, not on the count timed
    fastest: 1 and 2 threads round the loss apart, and the rate read off it moved up to 2x with that choice
    (fashion-28-200 at seed 0: 0.0056 on one thread, 0.0114 on two). The run's own count is timed by that choice."""
    from cnnlab.recipes.optim import make_optimizer
    from cnnlab.training.lr_find import lr_find

    model, device, threads, chosen_seconds = model_and_threads(config, data, log)
    threads_before = torch.get_num_threads()
    tested = config.threads or threads_before
    loader = data.train_dataloader()
    loader.set_epoch(10_000)  # its own batches, not the first epoch's (which are no different in kind)
    try:
        torch.set_num_threads(tested)
        result = lr_find(model, loader, make_optimizer(config), num_steps=steps, device=device,
                         autocast_dtype=torch.bfloat16 if config.bf16 else None, channels_last=config.channels_last)
    finally:
        torch.set_num_threads(threads_before)
    same = threads in (None, tested) or chosen_seconds is None
    return result, result.seconds_per_step if same else chosen_seconds, threads


def find_lr(config: TrainConfig, log=print) -> float:
    """``--lr auto`` outside the automatic recipe: the range test's suggestion for ``config``, said in one line."""
    from cnnlab.recipes.run import build_data

    result = range_test(config, build_data(config), 100)[0]
    if log is not None:
        log(f"--lr auto: the range test suggests {result.suggestion:.3g} (steepest descent {result.steepest:.3g}, "
            f"lowest loss at {result.minimum:.3g})")
    return result.suggestion
