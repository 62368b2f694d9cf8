"""Where and how a run computes: the device, bf16 autocast, seeding, and torch's process-wide flags.

Torch keeps some settings per process (deterministic algorithms, cuDNN autotuning). cnnlab sets them only
inside :func:`torch_flags`, a context manager that puts back what it found, so training never leaves a
changed torch behind for the code that runs next (a benchmark, a notebook's next cell, a test).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

from cnnlab.errors import ConfigError

__all__ = ["CPU_EVAL_BATCH_SIZE", "GPU_EVAL_BATCH_SIZE", "eval_batch_size", "pick_device", "bf16_is_fast",
           "bf16_default", "epoch_seed", "seed_everything", "set_deterministic", "torch_flags", "autocast"]


def pick_device(device: str | torch.device | None = "auto", num_gpus: int = 0) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; ``num_gpus=0`` with no device means the CPU.

    Raises:
        ConfigError: a device that this machine does not have, with what it does have.
    """
    if device is None:
        device = "auto" if num_gpus > 0 else "cpu"
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was asked for but this machine has no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device} was asked for but MPS is not available here; use --device cpu")
    return device


# Images per evaluation batch (validation, the test pass, predictions). On a CPU a conv net's pass over 128
# images at a time ran 1.3-1.75x faster than over 1,024 (channels_last, fp32 and bf16; FastNet at 28 px, the
# automatic recipe's at 16-32 px, ResNet-18; AMD EPYC, 2 cores): a smaller batch's activations stay in the
# cache. A GPU wants large batches to fill it.
CPU_EVAL_BATCH_SIZE = 128
GPU_EVAL_BATCH_SIZE = 1024


def eval_batch_size(device: str | torch.device | None) -> int:
    """Images per evaluation batch on ``device`` (a name as :func:`pick_device` takes it, or None: the CPU)."""
    return CPU_EVAL_BATCH_SIZE if pick_device(device).type == "cpu" else GPU_EVAL_BATCH_SIZE


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast speeds training up on ``device``.

    True on a CUDA GPU with native bf16 (Ampere or later) and on a CPU with AVX512-BF16 or AMX (Intel since
    Sapphire Rapids, AMD since Zen 4), where oneDNN's bf16 convolutions pay: FastNet trains ~2x faster than in
    fp32 on the project's Xeon (AMX), and in bf16 its AMD EPYC (AVX512-BF16, half the Xeon's fp32 matmul rate)
    trained faster than the Xeon does in fp32; False elsewhere, where bf16 is emulated and slower. (An Intel
    CPU with AVX512-BF16 but no AMX, Cooper Lake, also says True; this Xeon held to that instruction set ran the
    step no faster than fp32. No such machine is among this project's.)
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def bf16_default(device: str | torch.device) -> bool:
    """Whether bf16 autocast is on by default on ``device``: ``$CNNLAB_BF16`` if set, else :func:`bf16_is_fast`.

    ``CNNLAB_BF16=0`` turns it off everywhere (as on a CPU without bf16), ``CNNLAB_BF16=1`` on. The variable
    exists because CPUs that both have bf16 kernels round differently (Intel's AMX and AMD's AVX512-BF16), so a
    user comparing runs across machines, or a test suite, must be able to pin it.

    Raises:
        ConfigError: the variable is set to something other than 0 or 1.
    """
    text = os.environ.get("CNNLAB_BF16", "").strip()
    if not text:
        return bf16_is_fast(device)
    if text not in ("0", "1"):
        raise ConfigError(f"CNNLAB_BF16 must be 0 (bf16 autocast off) or 1 (on), got {text!r}; unset it to let "
                          "cnnlab decide from the hardware")
    return text == "1"


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (cnnlab draws all its randomness from torch)."""
    torch.manual_seed(seed)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def torch_flags(deterministic: bool = False, cudnn_benchmark: bool = False, compiled: bool = False) -> Iterator[None]:
    """Set torch's process-wide flags for a run, and put back the values found, also after an error.

    Args:
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``: same seed, same machine,
            same weights. Its NaN fill of new tensors (a debugging aid that exposes reads of uninitialized
            memory; results never depend on it, and on small models it costs ~5% of a step) is left off.
        cudnn_benchmark: time cuDNN's algorithms once per input shape (every batch has the same shape, so
            that pays at once on a GPU).
        compiled: the run compiles its model (``torch.compile``), whose kernels read the deterministic flag
            from inductor's config too (:func:`set_deterministic`).
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
    try:
        if deterministic:
            set_deterministic(True, warn_only=True, compiled=compiled)
            torch.utils.deterministic.fill_uninitialized_memory = False
        if cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        set_deterministic(saved[0], warn_only=saved[1], compiled=compiled)
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]
        torch.backends.cudnn.benchmark = saved[3]


def set_deterministic(mode: bool, warn_only: bool = False, compiled: bool = False) -> None:
    """Torch's deterministic-algorithms flag, without importing the compiler for a run that does not compile.

    ``torch.use_deterministic_algorithms`` also sets ``torch._inductor.config.deterministic``, and importing that
    module takes 1.2 s on a 2-core Intel Xeon (torch 2.13): 2% of a 60 s ``--budget``, on every run's start-up.
    Only compiled kernels read it, so the public call is made when the run compiles or the compiler is already
    loaded; otherwise the flag the eager operations read is set alone (``torch._C._set_deterministic_algorithms``,
    what the public call sets besides inductor's config).
    """
    fast = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiled or fast is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        fast(mode, warn_only=warn_only)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run seeded with ``seed``."""
    # Each epoch re-seeds from (seed, epoch), so a run resumed at an epoch boundary draws exactly the
    # random numbers (dropout masks) that the uninterrupted run drew.
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)
