"""The training loop and what surrounds it: Trainer and callbacks, run folders, checkpoints, evaluation,
runtime flags, torchrun and the TensorBoard logger."""
