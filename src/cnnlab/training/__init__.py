"""The training loop and what surrounds it: Trainer and callbacks, run folders, checkpoints, evaluation,
runtime flags, torchrun and the TensorBoard logger."""

from cnnlab.training.options import Display, Optimization, Speed
from cnnlab.training.trainer import Trainer

__all__ = ["Display", "Optimization", "Speed", "Trainer"]
