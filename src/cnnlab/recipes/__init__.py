"""Recipes: a training run described as data (:class:`TrainConfig`, recipe tables, optimizers and schedules)
and :func:`run_training`, which turns one into a trained, scored run folder."""

from cnnlab.recipes.config import (
    BASE,
    RECIPES,
    TrainConfig,
    check_world_size,
    model_defaults,
    read_run_config,
    resolve_config,
    validate_config,
)
from cnnlab.recipes.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler
from cnnlab.recipes.run import build_data, build_model, build_trainer, default_run_dir, run_training

__all__ = [
    "BASE", "OPTIMIZERS", "RECIPES", "SCHEDULES", "TrainConfig", "build_data", "build_model", "build_trainer",
    "check_world_size", "default_run_dir", "make_optimizer", "make_scheduler", "model_defaults", "read_run_config",
    "resolve_config", "run_training", "validate_config",
]
