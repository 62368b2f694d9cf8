"""The classification model base: loss, accuracy, steps and optimizer (d2l §3.2, §4.3, §7.6).

`Classifier` plays d2l's `Module`/`Classifier` role: a subclass builds `self.net` and the trainer calls
`training_step`, `validation_step` and `configure_optimizers`. The model never moves itself to a device
and never plots; those belong to the trainer.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Classifier", "caller_arguments", "device_of", "eval_mode", "init_cnn", "record_hparams"]


def caller_arguments(depth: int = 1) -> dict:
    """The arguments of a function up the call stack, by name: ``depth=1`` is the caller of this function.

    The book calls ``self.save_hyperparameters()`` with no arguments (d2l §3.2.1), so the only way to learn
    the constructor's arguments is to read its frame. ``save_hyperparameters`` is the one place cnnlab does
    that; library code passes values explicitly.
    """
    frame = inspect.currentframe()
    try:
        target = frame
        for _ in range(depth):
            target = target.f_back
        args = inspect.getargvalues(target)
        names = list(args.args)
        if args.varargs:
            names.append(args.varargs)
        values = {name: args.locals[name] for name in names}
        if args.keywords:
            values.update(args.locals[args.keywords])
        return values
    finally:
        del frame  # break the frame reference cycle (see the inspect docs)


def record_hparams(obj, values: dict, ignore: Iterable[str] = ()) -> None:
    """Store ``values`` (less ``ignore``, ``self`` and private names) as ``obj.hparams`` and as attributes.

    What d2l's ``save_hyperparameters`` does (d2l §3.2.1), for :class:`Classifier` and the book's
    ``HyperParameters`` (:mod:`cnnlab.compat`) alike.
    """
    skip = set(ignore) | {"self"}
    obj.hparams = {k: v for k, v in values.items() if k not in skip and not k.startswith("_")}
    for k, v in obj.hparams.items():
        setattr(obj, k, v)


def init_cnn(module: nn.Module) -> None:
    """Xavier-uniform initialization of conv and linear weights, as d2l §7.6 does.

    Use as `net.apply(init_cnn)`. Lazy layers are skipped until a forward pass has materialized them: only
    then does their type become `nn.Conv2d` / `nn.Linear`, which is why the type is compared exactly.
    """
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode under `torch.no_grad()`, restoring every submodule's own mode after.

    Eval mode keeps dry runs from touching BatchNorm's running statistics, and lets BatchNorm see a batch
    of one with 1x1 maps, which train mode refuses ("Expected more than 1 value per channel").
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without any)."""
    # Uninitialized (lazy) parameters also carry a device, so this works before materialization.
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class Classifier(nn.Module):
    """Base class of the classification models (d2l §4.3 `Classifier`).

    Subclass it the d2l way::

        class LeNet(Classifier):
            def __init__(self, lr=0.1, num_classes=10):
                super().__init__()
                self.save_hyperparameters()
                self.net = nn.Sequential(...)

    Attributes:
        label_smoothing: passed to the cross-entropy loss; 0.0 reproduces the book.
    """

    label_smoothing: float = 0.0

    def save_hyperparameters(self, ignore: Iterable[str] = (), **values) -> None:
        """Record hyperparameters in `self.hparams` and as attributes (d2l §3.2.1).

        cnnlab's own models pass them by name (`self.save_hyperparameters(lr=lr, num_classes=num_classes)`).
        Called bare, as the book's code does, it records the calling `__init__`'s arguments, read from its
        frame: the one place cnnlab looks up the call stack.

        Args:
            ignore: argument names to leave out.
            **values: the hyperparameters; none given means "the caller's arguments".
        """
        if "_parameters" not in self.__dict__:
            raise RuntimeError("call super().__init__() before self.save_hyperparameters().")
        record_hparams(self, values or caller_arguments(depth=2), ignore)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss(self, Y_hat: torch.Tensor, Y: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        """Cross-entropy of logits `Y_hat` against class indices `Y` (d2l §4.5.3).

        Shape:
            Y_hat: (N, num_classes); Y: (N,). Returns a scalar, or (N,) when `averaged` is False.
        """
        Y_hat = Y_hat.reshape(-1, Y_hat.shape[-1])
        return F.cross_entropy(
            Y_hat,
            Y.reshape(-1),
            reduction="mean" if averaged else "none",
            label_smoothing=self.label_smoothing,
        )

    def accuracy(self, Y_hat: torch.Tensor, Y: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        """Fraction (or per-example 0/1) of predictions equal to the labels (d2l §4.3.3).

        Shape:
            Y_hat: (N, num_classes); Y: (N,). Returns a scalar, or (N,) when `averaged` is False.
        """
        preds = Y_hat.reshape(-1, Y_hat.shape[-1]).argmax(dim=1)
        compare = (preds == Y.reshape(-1)).to(torch.float32)
        return compare.mean() if averaged else compare

    def training_step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean loss on one `(X, y)` batch; the trainer calls `backward()` on it."""
        return self.loss(self(*batch[:-1]), batch[-1])

    def validation_step(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed loss, number correct and example count of one `(X, y)` batch, as 0-dim tensors.

        Sums rather than means so that the trainer can add batches of unequal size exactly; nothing here
        calls `.item()`, so on an accelerator the host never waits for the device.
        """
        Y = batch[-1]
        Y_hat = self(*batch[:-1])
        loss_sum = self.loss(Y_hat, Y, averaged=False).sum()
        num_correct = (Y_hat.argmax(dim=1) == Y).sum()
        count = Y.new_full((), Y.shape[0], dtype=torch.int64)
        return loss_sum, num_correct, count

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Minibatch SGD with learning rate `self.lr` (d2l §3.4)."""
        if not hasattr(self, "lr"):
            raise AttributeError(
                f"{type(self).__name__} has no learning rate; give its __init__ an `lr` argument and call "
                "self.save_hyperparameters()."
            )
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(
        self,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        init: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Materialize lazy layers with one forward pass, then apply `init` to `self.net` (d2l §6.4, §7.6).

        As in the book, the forward pass runs in the model's own mode (train mode after construction) with
        gradients enabled, so BatchNorm layers see the batch: their running statistics take one momentum
        step towards it (`num_batches_tracked` becomes 1), and §8.5's from-scratch `batch_norm`, which tells
        training from prediction by `torch.is_grad_enabled()`, takes its training branch. Use a batch of
        more than one example when the model has BatchNorm, as the book does.

        Args:
            inputs: a batch, or a list/tuple of forward arguments as in `model.apply_init([X], init_cnn)`.
            init: a function for `self.net.apply`, e.g. `init_cnn`; None keeps PyTorch's defaults.
        """
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        self(*inputs)  # the output and its graph are dropped at once
        if init is not None:
            self.net.apply(init)

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """Print the output shape of each top-level layer of `self.net` for a random input (d2l §7.6)."""
        X = torch.randn(*X_shape, device=device_of(self))
        with eval_mode(self):
            for layer in self.net:
                X = layer(X)
                print(f"{layer.__class__.__name__} output shape:\t{X.shape}")
