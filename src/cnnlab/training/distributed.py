"""PyTorch's own distributed engine, as torchrun sets it up: process group, DDP, metric reduction.

``torchrun --nproc_per_node=N -m cnnlab train ...`` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE and MASTER_ADDR/PORT in their environment. :func:`init_from_env` reads them and joins the
group (gloo on CPU, nccl on CUDA); plain ``cnnlab train`` never touches any of this and stays one process.

Every collective is bounded by a timeout (``CNNLAB_DIST_TIMEOUT`` seconds, default 300), so a rank that dies
or hangs makes the others fail with :class:`DistributedRunFailed` instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.errors import ConfigError, DistributedRunFailed

__all__ = ["DistContext", "DistributedRunFailed", "run_failed", "current", "init_from_env", "launched_by_torchrun",
           "env_world_size", "timeout_from_env", "threads_per_process", "wrap_model", "all_reduce_sum",
           "all_gather_object", "sync_buffers", "shutdown", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 300.0


def run_failed(cause: BaseException, run_dir: str | os.PathLike | None, then: str | None = None
               ) -> DistributedRunFailed:
    """The error for a collective that failed or timed out: another rank died or hangs; ``--resume`` continues."""
    # gloo's messages start with its source position and end with advice: keep the sentence in between.
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    detail = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", detail).split(". ")[0].rstrip(".")[:160]
    if then is None and run_dir is not None and (Path(run_dir) / "last.pt").is_file():
        then = (f"start the same torchrun line with `cnnlab train --resume {run_dir}` to continue from the "
                "last finished epoch")
    elif then is None:
        then = "start the run again (no epoch had finished)"
    return DistributedRunFailed(f"another process of this distributed run failed or timed out ({detail}); fix "
                                f"it, then {then}")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """The number of processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 for this process."""
    return env_world_size() > 1


def current() -> DistContext:
    """The context of the process group already joined, or the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                           int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return DistContext()


def timeout_from_env() -> float:
    """Seconds any collective may wait: ``CNNLAB_DIST_TIMEOUT``, default 300.

    Raises:
        ValueError: the variable is set but is not a positive number.
    """
    text = os.environ.get("CNNLAB_DIST_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"CNNLAB_DIST_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def threads_per_process(cores: int, local_world_size: int) -> int:
    """Torch threads for each of ``local_world_size`` processes sharing ``cores`` cores (at least 1)."""
    return max(1, cores // max(1, local_world_size))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def init_from_env(device_type: str, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (backend from the device type).

    Args:
        device_type: 'cpu' joins with gloo, 'cuda' with nccl (and selects GPU LOCAL_RANK).
        timeout_s: bound on every collective; None reads :func:`timeout_from_env`. A rank that dies makes
            the others fail with an error after at most this long instead of hanging forever.

    Raises:
        ValueError: an unsupported device, more processes per machine than GPUs, or a bad timeout.
    """
    if not launched_by_torchrun():
        return DistContext()
    if dist.is_initialized():
        return current()
    if device_type not in ("cpu", "cuda"):
        raise ConfigError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device_type}; "
                         "use --device cpu")
    timeout_s = timeout_from_env() if timeout_s is None else timeout_s
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started {local_world_size} processes on this machine but it has "
                             f"{torch.cuda.device_count()} GPUs; use --nproc_per_node={torch.cuda.device_count()}"
                             " (one process per GPU) or --device cpu")
        torch.cuda.set_device(local_rank)
    # The processes on one machine share its cores: each takes an equal part so that together they do not
    # oversubscribe them (N processes x all cores each thrash), yet do not sit on 1 thread each either, which
    # is what torchrun's default OMP_NUM_THREADS=1 would leave on a CPU-only run.
    # Process-wide, so it is given back when the group is left (shutdown): a library caller's process that
    # trains again without a group must not stay on 1 thread.
    _threads_before.append(torch.get_num_threads())
    torch.set_num_threads(threads_per_process(_cores(), local_world_size))
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store = _restart_store(timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=int(os.environ["RANK"]),
                                    world_size=env_world_size())
    except BaseException:
        torch.set_num_threads(_threads_before.pop())
        raise
    return current()


def _restart_store(timeout: datetime.timedelta):
    """torchrun's agent store seen through a prefix of this restart attempt; None when torchrun shares none.

    torchrun (c10d rendezvous) keeps one TCP store for all attempts of a run and starts the workers of a
    restart (``--max-restarts``) on it, but the workers' process group writes its keys (each rank's gloo
    address) under the same names every attempt, so a restarted rank may read a dead rank's address from the
    attempt before: "connectFullMesh failed ... Connection refused", or a hang. A prefix per attempt
    (TORCHELASTIC_RESTART_COUNT) gives every attempt its own names.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env_world_size(),
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"cnnlab/attempt-{attempt}", store)


# The thread count before init_from_env changed it (at most one entry: one group per process at a time).
_threads_before: list[int] = []


def wrap_model(model: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """The module to call in the training step: the model itself, or its DDP wrapper under torchrun."""
    if ctx.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    # DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts identical (they are
    # also built from the same seed, so this broadcast changes nothing unless a rank's RNG drifted).
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a no-op for one process)."""
    if ctx.world_size == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` for one process."""
    if ctx.world_size == 1:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each forward, but each rank then updates them with its own batch, so after
    the last step they differ; syncing at the end of an epoch makes validation and resume see rank 0's.
    """
    if ctx.world_size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def shutdown(clean: bool = True) -> None:
    """Leave the process group if one was joined: all ranks together after a clean run.

    Together, because rank 0 still works (final evaluation, files, the report) after the others are done:
    with a barrier first, no rank tears its side of the gloo connections down while a peer may still use them,
    and a rank that fails at the very end is reported by the others. The console entry point then leaves
    without interpreter teardown (:func:`cnnlab.cli.main.run` says why).

    Args:
        clean: the run ended without an error on this rank, so wait for the others first. After an error we
            leave at once: the peers then fail fast in their next collective instead of waiting for us.

    Raises:
        DistributedRunFailed: a clean rank found that another one failed or timed out at the last barrier.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    except RuntimeError as exc:
        raise run_failed(exc, None, then="run or resume again (this process had finished its "
                                   "own work)") from exc
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # after a peer died, teardown may fail; there is nothing left to save
            pass
        if _threads_before:
            torch.set_num_threads(_threads_before.pop())
