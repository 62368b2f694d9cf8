"""The edge-detection experiment of d2l §7.2.4: learn the kernel [1, -1] back from its output."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnlab.nn.ops import conv2d, corr2d


def edge_image() -> torch.Tensor:
    """The book's 6x8 image: ones with columns 2-5 black, so it has one rising and one falling edge."""
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    return X


def learn_edge_kernel(lr: float = 3e-2, epochs: int = 10, seed: int | None = 0,
                      log: Callable[[str], None] | None = print) -> tuple[torch.Tensor, list[float]]:
    """Recover K = [[1, -1]] from X and Y = corr2d(X, K) by plain gradient descent (d2l §7.2.4).

    The kernel starts as ``nn.LazyConv2d(1, kernel_size=(1, 2), bias=False)`` would initialise it
    (uniform in +-1/sqrt(fan_in)); each step minimises the summed squared error, as the book does.

    Args:
        lr: learning rate of the update ``K -= lr * grad``.
        epochs: number of full-batch steps.
        seed: seeds the initial kernel (None leaves torch's RNG alone).
        log: called with ``epoch i, loss L`` every 2 epochs (None prints nothing).

    Returns:
        The learned (1, 2) kernel and the loss of every epoch.
    """
    X = edge_image()
    Y = corr2d(X, torch.tensor([[1.0, -1.0]]))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    bound = 1 / 2**0.5
    weight = (torch.rand((1, 1, 1, 2), generator=generator) * 2 - 1) * bound
    weight.requires_grad_(True)
    X4, Y4 = X.reshape(1, 1, 6, 8), Y.reshape(1, 1, 6, 7)  # (example, channel, height, width)
    losses = []
    for i in range(epochs):
        loss = ((conv2d(X4, weight) - Y4) ** 2).sum()
        weight.grad = None
        loss.backward()
        with torch.no_grad():
            weight -= lr * weight.grad
        losses.append(loss.item())
        if log is not None and (i + 1) % 2 == 0:
            log(f"epoch {i + 1}, loss {loss:.3f}")
    return weight.detach().reshape(1, 2), losses
