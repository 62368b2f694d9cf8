"""Batch normalization from scratch: the `batch_norm` operator and the `BatchNorm` layer (d2l §8.5.3).

After Ioffe & Szegedy (2015), written as the book writes it: the mathematics in a function, the bookkeeping
(parameters, moving averages) in a module. It lives beside `ops.py` and `layers.py`, not among the models,
because it is an operator and a layer that any model can use (the book's `BNLeNetScratch` is one).

Where cnnlab departs from the book's PyTorch code, and why:

* The moving variance is updated with the *unbiased* batch variance, as `torch.nn.BatchNorm*d` and
  `F.batch_norm` do, so a model trained with `BatchNorm` and one trained with `nn.BatchNorm2d` carry the same
  statistics. The book updates it with the biased variance; `unbiased=False` reproduces that. Both normalize
  the batch itself with the biased variance.
* Training or prediction mode is an explicit argument. The book's function guesses it from
  `torch.is_grad_enabled()`, so a model in `eval()` mode but with gradients on (as in saliency maps or
  adversarial examples) would normalize with batch statistics and overwrite its moving averages. Passing
  `training=None` keeps the book's rule; the `BatchNorm` module passes `self.training`.
* The moving averages are registered buffers: they are saved in the state dict, move with `.to()`, and are
  copied between processes by DistributedDataParallel. The book keeps them as plain attributes.
* Statistics of float16/bfloat16 inputs (bf16 autocast) are computed in float32; the output keeps the
  input's dtype.

The momentum convention is the book's PyTorch one, which is also torch's: `momentum` is the weight of the
new batch, `moving = (1 - momentum) * moving + momentum * batch_statistic` (the book's JAX code uses the
complementary 0.9).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchNorm", "batch_norm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def batch_norm(
    X: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    moving_mean: torch.Tensor,
    moving_var: torch.Tensor,
    eps: float,
    momentum: float,
    *,
    training: bool | None = None,
    unbiased: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch normalization of a fully connected (2-D) or convolutional (4-D) input (d2l §8.5.3).

    In training mode, normalize with the batch's mean and biased variance per feature (2-D) or per channel
    over batch, height and width (4-D), and return updated moving averages. In prediction mode, normalize
    with the moving averages and return them unchanged.

    Args:
        X: the input.
        gamma, beta: scale and shift, broadcastable to X: `(1, C)` or `(1, C, 1, 1)` as `BatchNorm` makes them.
        moving_mean, moving_var: the moving averages, of gamma's shape.
        eps: added to the variance before the square root.
        momentum: weight of the new batch in the moving averages (the book's and torch's convention).
        training: use batch statistics and update the averages; None decides as the book does, by
            `torch.is_grad_enabled()`.
        unbiased: update the moving variance with the unbiased batch variance (torch's rule, the default)
            rather than the biased one (the book's).

    Returns:
        `(Y, moving_mean, moving_var)`: Y has X's shape and dtype; the averages are new tensors, detached
        from the graph, with the old averages' shape and dtype.

    Raises:
        ValueError: X is not 2-D or 4-D, or, in training mode, holds a single value per feature or channel
            (its variance is undefined).

    Shape:
        X: (N, C) or (N, C, H, W); gamma, beta, moving_mean, moving_var: (1, C) or (1, C, 1, 1).
    """
    if X.ndim not in (2, 4):
        raise ValueError(f"batch_norm takes a 2-D (N, C) or 4-D (N, C, H, W) input, got shape {tuple(X.shape)}.")
    if training is None:
        training = torch.is_grad_enabled()  # the book's rule (see the module docstring)
    Xc = X.float() if X.dtype in _LOW_PRECISION else X
    if not training:
        X_hat = (Xc - moving_mean) / torch.sqrt(moving_var + eps)
        return (gamma * X_hat + beta).to(X.dtype), moving_mean, moving_var
    dims = (0,) if X.ndim == 2 else (0, 2, 3)
    n = X.numel() // X.shape[1]  # values per feature or channel
    if n < 2:
        raise ValueError(
            f"batch_norm in training mode needs more than one value per channel, got input shape "
            f"{tuple(X.shape)}; use a batch of at least 2, or prediction mode (training=False)."
        )
    # keepdim: the statistics get gamma's shape, (1, C) or (1, C, 1, 1), and broadcast against X.
    mean = Xc.mean(dim=dims, keepdim=True)
    var = ((Xc - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: the batch is normalized with it
    X_hat = (Xc - mean) / torch.sqrt(var + eps)
    with torch.no_grad():
        stat_var = var * (n / (n - 1)) if unbiased else var
        new_mean = (1.0 - momentum) * moving_mean + momentum * mean.to(moving_mean.dtype)
        new_var = (1.0 - momentum) * moving_var + momentum * stat_var.to(moving_var.dtype)
    return (gamma * X_hat + beta).to(X.dtype), new_mean, new_var


class BatchNorm(nn.Module):
    """The batch normalization layer of d2l §8.5.3, over `batch_norm`, for 2-D or 4-D inputs.

    Args:
        num_features: outputs of the fully connected layer, or channels of the convolution, it follows.
        num_dims: 2 for a fully connected layer's (N, C) output, 4 for a convolution's (N, C, H, W).
        eps: added to the variance (the book's 1e-5, torch's default).
        momentum: weight of each new batch in the moving averages (the book's 0.1, torch's default).
        unbiased: update the moving variance with the unbiased batch variance, as `nn.BatchNorm2d` does;
            False gives the book's biased update.

    Attributes:
        gamma, beta: scale (ones) and shift (zeros), shaped `(1, C)` or `(1, C, 1, 1)` as in the book.
        moving_mean, moving_var: buffers (zeros, ones) of the same shape, updated in training mode.

    Shape:
        (N, num_features) when num_dims is 2, (N, num_features, H, W) when it is 4; the output has the
        input's shape.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.1,
                 unbiased: bool = True):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (after a Linear) or 4 (after a Conv2d), got {num_dims!r}.")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum, self.unbiased = eps, momentum, unbiased
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim != self.num_dims or X.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm({self.num_features}, num_dims={self.num_dims}) got an input of shape "
                f"{tuple(X.shape)}; it needs {self.num_dims} dimensions with {self.num_features} at dim 1."
            )
        Y, moving_mean, moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, self.eps, self.momentum,
            training=self.training, unbiased=self.unbiased,
        )  # fmt: skip
        if self.training:
            # In place, so they stay the registered buffers (the book rebinds plain attributes).
            self.moving_mean.copy_(moving_mean)
            self.moving_var.copy_(moving_var)
        return Y

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}"
