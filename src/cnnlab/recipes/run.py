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

from cnnlab.errors import CheckpointError, TrainingDiverged, UserError
from cnnlab.inference.loaded import evaluate_checkpoint
from cnnlab.recipes.config import TrainConfig, read_run_config, validate_config
from cnnlab.recipes.optim import make_optimizer, make_scheduler
from cnnlab.recipes.resume import AUTO, folder_to_resume
from cnnlab.training import distributed as dist_utils
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.runfolder import RunFolder
from cnnlab.training.runtime import pick_device
from cnnlab.training.trainer import Trainer

__all__ = ["build_data", "build_model", "build_trainer", "default_run_dir", "run_training"]



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


def run_training(config: TrainConfig | None, resume: str | os.PathLike | None = None, log=print,
                 on_epoch_end=None, callbacks=()) -> dict:
    """Train as ``config`` says (or continue the run folder ``resume``) and return a summary dict.

    The summary's test accuracy is :func:`cnnlab.inference.loaded.evaluate_checkpoint` of the run folder: the
    run's best checkpoint on the whole test set in fp32, the number ``cnnlab evaluate`` prints for it. Under
    torchrun every rank calls this; only rank 0 writes files and evaluates.
    """
    start = time.perf_counter()
    state = None
    if resume == AUTO or (resume is None and config is not None):
        resume = folder_to_resume(config, resume)  # an elastic restart (torchrun) or --resume auto
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
        folder = RunFolder(config.out) if config.out else None  # None: rank 0 creates a default-named one
    device = pick_device(config.device)
    ctx = dist_utils.DistContext(world_size=dist_utils.env_world_size())
    holder = [folder]  # the folder once rank 0 has created (and locked) it, for the release below
    try:
        try:
            ctx = dist_utils.init_from_env(device.type)  # waits (up to the timeout) for all ranks to join
            if ctx.world_size > 1 and device.type == "cuda":
                device = torch.device("cuda", ctx.local_rank)
            config, trainer = _fit(config, holder, state, resume is None, ctx, device, log=log,
                                   callbacks=callbacks, on_epoch_end=on_epoch_end)
        except RuntimeError as exc:
            # Under torchrun a failed collective (gloo: "Connection reset by peer" when a rank died, "Timed out
            # waiting" when one hangs) is a plain RuntimeError; its first line goes into the message.
            if ctx.world_size == 1 or isinstance(exc, TrainingDiverged):
                raise
            raise dist_utils.run_failed(exc, holder[0].path if holder[0] else None) from exc
        folder, result = holder[0], None
        if ctx.is_main:
            _, result = evaluate_checkpoint(folder.path, config.data_dir, device)
    finally:
        if holder[0] is not None:
            holder[0].release()  # the run folder's lock (RunFolder.create); a library caller's process lives on
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


def _fit(config: TrainConfig, holder: list, state: dict | None, new: bool, ctx: dist_utils.DistContext,
         device: torch.device, **trainer_kwargs) -> tuple[TrainConfig, Trainer]:
    """Build data, model and trainer, set up the run folder (into ``holder[0]``) and fit; the final config."""
    if config.seed is not None:
        torch.manual_seed(config.seed)  # the same seed on every rank: identical initial weights
    data = build_data(config)
    if config.resize is None:  # an image folder chose its size: the run's config records it
        config = dataclasses.replace(config, resize=data.resize[0])
    model = build_model(config, data)
    holder[0] = folder = _set_up_run_folder(holder[0], config if new else None, state, ctx)
    callbacks = trainer_kwargs.pop("callbacks")
    if config.tensorboard:
        from cnnlab.training.tensorboard import TensorBoardLogger

        callbacks = [*callbacks, TensorBoardLogger(folder.path / "tensorboard", class_names=data.classes)]
    trainer = build_trainer(config, device, folder.path, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, data, resume_from=state)
    return config, trainer


def _set_up_run_folder(folder: RunFolder | None, new_config: TrainConfig | None, state: dict | None,
                       ctx: dist_utils.DistContext) -> RunFolder:
    """Rank 0 creates and locks the run folder (and writes ``config.json`` for a new run); every rank learns its path.

    ``folder`` None: a new run without ``--out``, in a default-named folder that rank 0 chooses.
    """
    error, path = None, None
    if ctx.is_main:
        values = new_config.to_dict() if new_config is not None else None
        try:
            if folder is None:  # a default name: taken exclusively, the next free one on a collision
                folder = RunFolder.create_new(default_run_dir(new_config.model), values)
            else:
                folder.create(values)
            path = str(folder.path)
        except UserError as exc:
            error = exc
    # One exchange settles the set-up for all ranks: rank 0's folder (the default name holds a timestamp that
    # could differ between ranks), whether rank 0 could create it (so no rank waits for a rank 0 that gave
    # up), and which checkpoint epoch each rank loaded (they must all resume from the same one).
    seen = dist_utils.all_gather_object((path, error, state.get("epoch") if state else None), ctx)
    if seen[0][1] is not None:
        raise seen[0][1]
    if not ctx.is_main:
        folder = RunFolder(seen[0][0])
    epochs = [epoch for _, _, epoch in seen]
    if len(set(epochs)) > 1:
        folder.release()  # run_training never learns of this folder: let go of it here
        raise CheckpointError(f"the processes of this run found different checkpoints in {folder.path} (epoch "
                              f"by rank: {epochs}); on several machines the run folder must be on a filesystem "
                              "they all share, at the same path")
    return folder
