"""The book's conventions, in one place, so that d2l's code runs unchanged with ``import cnnlab as d2l``.

What is here and where it comes from (d2l-en, ``d2l/torch.py``):

* ``add_to_class``: the book grows classes after the fact (d2l §3.2.1). cnnlab's own code never does this
  (methods live in their classes); the helper exists only for readers' code copied from the book.
* the tensor aliases that end ``d2l/torch.py`` ("Alias defined in config.ini"): ``d2l.tensor``,
  ``d2l.zeros``, ``d2l.reshape(x, shape)``, ``d2l.reduce_sum(x)``, ... The book writes its framework-neutral
  cells with them (e.g. ``corr2d`` in §7.2). They are attributes of ``cnnlab`` but not in its ``__all__``:
  ``from cnnlab import *`` must not replace Python's ``abs`` by ``torch.abs``.
* devices (d2l §6.7): ``cpu``, ``gpu``, ``num_gpus``, ``try_gpu``, ``try_all_gpus``.
* the base classes of d2l §3.2: ``HyperParameters``, ``DataModule``, ``Module`` (cnnlab's ``Classifier``
  plays d2l's ``Module`` and ``Classifier``), and ``Timer`` (d2l §3.1). d2l's ``ProgressBoard`` lives in
  :mod:`cnnlab.visual.board`, its ``plot`` in :mod:`cnnlab.visual.plotting`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from cnnlab.nn.classifier import Classifier, caller_arguments, record_hparams
from cnnlab.nn.layers import ResNeXtBlock  # noqa: F401 - d2l §8.6.5 saves it, §8.8 uses it as d2l.ResNeXtBlock

__all__ = ["ALIASES", "DataModule", "HyperParameters", "Module", "Timer", "add_to_class", "cpu", "gpu",
           "num_gpus", "try_all_gpus", "try_gpu"]


def add_to_class(Class):
    """Register the decorated function as a method of ``Class`` (d2l §3.2.1).

    Example:
        >>> class A: pass
        >>> @add_to_class(A)
        ... def hello(self): return "hi"
        >>> A().hello()
        'hi'
    """

    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
        return obj

    return wrapper


# --- d2l/torch.py's alias block, name for name ------------------------------------------------------------

nn_Module = nn.Module

ones_like = torch.ones_like
ones = torch.ones
zeros_like = torch.zeros_like
zeros = torch.zeros
tensor = torch.tensor
arange = torch.arange
meshgrid = torch.meshgrid
sin = torch.sin
sinh = torch.sinh
cos = torch.cos
cosh = torch.cosh
tanh = torch.tanh
linspace = torch.linspace
exp = torch.exp
log = torch.log
normal = torch.normal
rand = torch.rand
randn = torch.randn
matmul = torch.matmul
int32 = torch.int32
int64 = torch.int64
float32 = torch.float32
concat = torch.cat
stack = torch.stack
abs = torch.abs  # the book's name; kept out of __all__, so a star-import keeps Python's abs
eye = torch.eye
sigmoid = torch.sigmoid
batch_matmul = torch.bmm


# The "fluent" aliases call a method of their first argument: d2l.reshape(X, (2, 3)) is X.reshape((2, 3)).
def numpy(x, *args, **kwargs):
    """``x.detach().numpy()`` (d2l alias)."""
    return x.detach().numpy(*args, **kwargs)


def size(x, *args, **kwargs):
    """``x.numel()`` (d2l alias)."""
    return x.numel(*args, **kwargs)


def reshape(x, *args, **kwargs):
    """``x.reshape(...)`` (d2l alias)."""
    return x.reshape(*args, **kwargs)


def to(x, *args, **kwargs):
    """``x.to(...)`` (d2l alias)."""
    return x.to(*args, **kwargs)


def reduce_sum(x, *args, **kwargs):
    """``x.sum(...)`` (d2l alias)."""
    return x.sum(*args, **kwargs)


def argmax(x, *args, **kwargs):
    """``x.argmax(...)`` (d2l alias)."""
    return x.argmax(*args, **kwargs)


def astype(x, *args, **kwargs):
    """``x.type(...)`` (d2l alias)."""
    return x.type(*args, **kwargs)


def transpose(x, *args, **kwargs):
    """``x.t()`` (d2l alias)."""
    return x.t(*args, **kwargs)


def reduce_mean(x, *args, **kwargs):
    """``x.mean(...)`` (d2l alias)."""
    return x.mean(*args, **kwargs)


def expand_dims(x, *args, **kwargs):
    """``x.unsqueeze(...)`` (d2l alias)."""
    return x.unsqueeze(*args, **kwargs)


def swapaxes(x, *args, **kwargs):
    """``x.swapaxes(...)`` (d2l alias)."""
    return x.swapaxes(*args, **kwargs)


def repeat(x, *args, **kwargs):
    """``x.repeat(...)`` (d2l alias)."""
    return x.repeat(*args, **kwargs)


#: Every name of d2l/torch.py's alias block (d2l-en 23d7a5ae), all defined above.
ALIASES = (
    "nn_Module", "ones_like", "ones", "zeros_like", "zeros", "tensor", "arange", "meshgrid", "sin", "sinh", "cos",
    "cosh", "tanh", "linspace", "exp", "log", "normal", "rand", "randn", "matmul", "int32", "int64", "float32",
    "concat", "stack", "abs", "eye", "sigmoid", "batch_matmul", "numpy", "size", "reshape", "to", "reduce_sum",
    "argmax", "astype", "transpose", "reduce_mean", "expand_dims", "swapaxes", "repeat",
)


# --- devices (d2l §6.7) ------------------------------------------------------------------------------------


def cpu() -> torch.device:
    """The CPU device (d2l §6.7)."""
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    """The ``i``-th CUDA device, whether or not it exists (d2l §6.7)."""
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    """How many CUDA devices this machine has (d2l §6.7)."""
    return torch.cuda.device_count()


def try_gpu(i: int = 0) -> torch.device:
    """``gpu(i)`` if it exists, else ``cpu()`` (d2l §6.7)."""
    return gpu(i) if num_gpus() >= i + 1 else cpu()


def try_all_gpus() -> list[torch.device]:
    """All CUDA devices, or ``[cpu()]`` when there is none (d2l §6.7)."""
    return [gpu(i) for i in range(num_gpus())] or [cpu()]


# --- the base classes of d2l §3.2 --------------------------------------------------------------------------


class HyperParameters:
    """d2l's base class that records ``__init__``'s arguments as attributes (d2l §3.2.1)."""

    def save_hyperparameters(self, ignore=()):
        """Store the calling ``__init__``'s arguments in ``self.hparams`` and as attributes."""
        record_hparams(self, caller_arguments(depth=2), ignore)


class DataModule(HyperParameters):
    """d2l's base class of data (d2l §3.2.3): ``get_dataloader(train)`` gives the batches.

    ``cnnlab.FashionMNIST`` is a complete one; subclass this for data of your own, as the book does.
    """

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError(f"{type(self).__name__} must define get_dataloader(train)")

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """A shuffled (train) or ordered DataLoader over slices of ``tensors`` (d2l §3.3)."""
        tensors = tuple(a[indices] for a in tensors)
        dataset = torch.utils.data.TensorDataset(*tensors)
        return torch.utils.data.DataLoader(dataset, self.batch_size, shuffle=train)


#: d2l's ``Module`` (d2l §3.2.2). cnnlab's :class:`Classifier` plays both of d2l's roles, ``Module`` and its
#: subclass ``Classifier``: ``save_hyperparameters``, ``forward`` through ``self.net``, ``loss``,
#: ``configure_optimizers`` (SGD at ``self.lr``) and ``apply_init``. A subclass defines its own ``loss``.
Module = Classifier


class Timer:
    """Record running times (d2l §3.1): ``start()``, ``stop()`` -> seconds, ``avg()``, ``sum()``, ``cumsum()``."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock  # seconds; tests give a fake one
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = self.clock()

    def stop(self) -> float:
        self.times.append(self.clock() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        return sum(self.times)

    def cumsum(self) -> list[float]:
        out, total = [], 0.0
        for t in self.times:
            total += t
            out.append(total)
        return out
