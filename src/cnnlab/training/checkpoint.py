"""Checkpoints: atomic writes, safe loads, and the model rebuilt from its registry name.

A checkpoint is a plain dict of tensors and plain values (state dicts, the model's registry name and
constructor kwargs, the run's settings, the epoch, the metrics so far). It is loaded with
``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and containers of
plain values, so a crafted file cannot run code; its zip container is checked first, so a file re-zipped into a
decompression bomb is refused before anything inflates. It is written through :func:`cnnlab.atomic.atomic_write`
(temporary file, fsync, rename): a crash at any moment leaves either the old or the new checkpoint, never a
partial one.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from cnnlab.atomic import atomic_write
from cnnlab.errors import CheckpointError, RunFolderError

__all__ = ["CHECKPOINT_VERSION", "MAX_INPUT_SIDE", "RENAMED_SETTINGS", "save_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "model_from_checkpoint", "check_model_kwargs", "current_names"]

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("version", "model_state")
# Bounds on what a checkpoint may ask the model builder for, far beyond any real cnnlab model (training
# allows --image-size up to 512) yet small enough that a crafted file cannot exhaust memory.
MAX_INPUT_SIDE = 1024
MAX_IN_CHANNELS = 16
MAX_CLASSES = 100_000
# What torch.load(weights_only=True) raises on a damaged or crafted file, beyond UnpicklingError: the types
# seen when fuzzing a checkpoint's data.pkl (tests/training/test_checkpoint.py keeps a seeded sample of that fuzzing).
# The try around it holds torch.load alone, so none of these can come from a bug in cnnlab.
_UNREADABLE = (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError, TypeError,
               AttributeError, AssertionError, OverflowError, struct.error)
# Settings renamed since run folders and checkpoints were first written, old name -> today's. Every reader of
# stored settings (RunFolder.read_config, load_checkpoint, read_safetensors) passes them through current_names,
# so an old file loads as if written today. `resize` became `image_size` (issue 24: one name for the side(s)
# the model sees).
RENAMED_SETTINGS = {"resize": "image_size"}


def current_names(settings: dict) -> dict:
    """``settings`` (a run's config, or its data module's settings) with each renamed key under today's name."""
    return {RENAMED_SETTINGS.get(key, key): value for key, value in settings.items()}


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`cnnlab.atomic.atomic_write`: temp file, fsync, rename).

    Temporary files that killed writers left next to ``path`` are removed once the new file is in place.

    Raises:
        CheckpointError: the folder is missing, unwritable or full; any earlier file at ``path`` is intact.
    """
    path = Path(path)
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {reason}; free some space or choose another --out folder "
            "(the previous checkpoint, if any, is intact)"
        ) from None
    return path


def resolve_checkpoint(run_or_file: str | os.PathLike, prefer: str = "best") -> Path:
    """Map a run folder to its checkpoint (``best.pt``, else ``last.pt``); a file is returned as is."""
    path = Path(run_or_file)
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / name).is_file():
                return path / name
        raise RunFolderError(f"run folder {path} holds no checkpoint (best.pt or last.pt); train into it first")
    if not path.exists():
        raise RunFolderError(f"no such run folder or checkpoint: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a cnnlab checkpoint safely with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, or holding objects other than tensors
            and plain values (a file crafted to run code when unpickled is refused here, before any of it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); use another checkpoint or train again")
    _check_container(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols mean nothing to a user
            # mmap: tensors stay in the file's pages until used, so the size check below runs before any
            # tensor is copied into memory (MAP_PRIVATE: writes to them never reach the file).
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        # torch's text advises weights_only=False, the one thing never to do with an untrusted file;
        # keep only its reason.
        reason = next((line.split("error:", 1)[1].strip() for line in str(exc).splitlines()
                       if "WeightsUnpickler error:" in line), "")
        if "Unsupported global" in reason or "Unsupported class" in reason:
            culprit = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+?)\.? ", reason + " ")
            what = f"a reference to {culprit.group(1)}" if culprit else "an object"
            raise CheckpointError(
                f"refusing to load {path}: it holds {what}, not only tensors and plain values, and "
                "unpickling it could run code; only load checkpoints written by cnnlab from sources you trust"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({reason or 'unreadable pickle'}); "
            "use another checkpoint (last.pt or best.pt) or train again"
        ) from None
    except _UNREADABLE as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({type(exc).__name__}); "
            "use another checkpoint (last.pt or best.pt) or train again"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is a torch file but not a cnnlab checkpoint (no model_state/version)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['version']}, this cnnlab reads {CHECKPOINT_VERSION}"
        )
    _check_tensor_bytes(path, state)
    for key in ("config", "data_settings"):
        if isinstance(state.get(key), dict):
            state[key] = current_names(state[key])
    return state


def _check_container(path: Path) -> None:
    """Refuse a checkpoint whose zip container could make ``torch.load`` allocate more than the file holds.

    ``torch.save`` writes an uncompressed (stored) zip, but ``torch.load`` also inflates deflated entries: a
    file re-zipped with deflate can hold a 1 GiB tensor in 1.4 MiB. Only the zip's directory is read here.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint (not a complete zip "
                              f"archive: {exc}); use another checkpoint (last.pt or best.pt) or train again") \
            from None
    compressed = [entry for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        inflated = sum(entry.file_size for entry in compressed)
        raise CheckpointError(
            f"refusing to load {path}: {len(compressed)} of its entries are compressed, which torch.save never "
            f"does, and would inflate to {inflated / 2**20:,.1f} MiB; the file was altered, so use a checkpoint "
            "written by cnnlab")
    for entry in entries:
        if entry.file_size != entry.compress_size or entry.header_offset + entry.compress_size > size:
            raise CheckpointError(f"refusing to load {path}: its zip directory promises {entry.file_size:,} "
                                  f"bytes for {entry.filename!r}, more than the {size:,}-byte file holds; "
                                  "the file is truncated or altered")


def _check_tensor_bytes(path: Path, state: dict) -> None:
    """Refuse tensors far beyond what the model named in the checkpoint can need (checked before use)."""
    name, kwargs = state.get("model_name"), state.get("model_kwargs")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        return  # model_from_checkpoint refuses such a file with its own message
    from cnnlab.models import list_models

    if name not in list_models():
        return
    check_model_kwargs(name, kwargs)
    held = _tensor_bytes(state)
    # Model weights, plus an optimizer state of at most two tensors per weight (Adam), plus small extras
    # (RNG state, metrics); 4x and 1 MiB leave room for all of that and nothing like a bomb.
    allowed = 4 * _model_bytes(name, kwargs) + (1 << 20)
    if held > allowed:
        raise CheckpointError(f"refusing to load {path}: it holds {held / 2**20:,.1f} MiB of tensors, but model "
                              f"{name!r} needs at most {allowed / 2**20:,.1f} MiB with its optimizer state; the "
                              "file was altered, so use a checkpoint written by cnnlab")


def _tensor_bytes(value) -> int:
    """Bytes of every distinct storage under ``value`` (dicts, lists, tuples of tensors and plain values)."""
    seen: dict[int, int] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(seen.values())


def _model_bytes(name: str, kwargs: dict) -> int:
    # On the meta device: shapes and dtypes only, no memory and no real dry forward, so the check costs
    # nothing next to the model that model_from_checkpoint builds for real afterwards.
    with torch.device("meta"):
        model = _build(name, kwargs)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _build(name: str, kwargs: dict):
    """The registered model ``name`` built from a checkpoint's stored kwargs.

    A builder refuses arguments it cannot use with TypeError or ValueError (the registry's unknown-argument
    check, ``prepare_model``'s too-small image): from a checkpoint that is the file's fault, one line. Any other
    exception is a bug in the builder and propagates as one (a traceback, exit code 1), not as "file corrupt".
    """
    from cnnlab.models import create_model

    try:
        return create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint's model {name!r} cannot be built from its stored settings "
                              f"({type(exc).__name__}: {exc}); the file is corrupt or not cnnlab's") from None


def model_from_checkpoint(state: dict):
    """Rebuild the model through the registry from the name and kwargs stored with it, then load its weights.

    The kwargs are checked first: building runs a dry forward pass, so a crafted ``image_size`` or
    ``in_channels`` could otherwise ask for terabytes before a single weight is compared.
    """
    name, kwargs = state.get("model_name"), state.get("model_kwargs") or {}
    if not name or not isinstance(name, str):
        raise CheckpointError("checkpoint does not name a registered model, so it cannot be rebuilt")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"checkpoint's model_kwargs is a {type(kwargs).__name__}, not a dict; "
                              "the file is corrupt or not cnnlab's")
    check_model_kwargs(name, kwargs)
    model = _build(name, kwargs)
    try:
        model.load_state_dict(state["model_state"])
    except (RuntimeError, TypeError) as exc:  # missing, unexpected or misshapen weights; not a dict at all
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint's weights do not fit model {name!r}: {first_line}") from None
    return model


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """Refuse stored model kwargs that would make building the model huge (checked before any dry forward)."""

    def count(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    size = kwargs.get("image_size", 28)
    sides = (size, size) if not isinstance(size, (list, tuple)) else tuple(size)
    lr = kwargs.get("lr", 0.1)
    problems = [
        (count(kwargs.get("in_channels", 1), 1, MAX_IN_CHANNELS), f"in_channels 1 to {MAX_IN_CHANNELS}"),
        (count(kwargs.get("num_classes", 10), 1, MAX_CLASSES), f"num_classes 1 to {MAX_CLASSES:,}"),
        (len(sides) == 2 and all(count(s, 1, MAX_INPUT_SIDE) for s in sides),
         f"image_size 1 to {MAX_INPUT_SIDE} pixels a side"),
        (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr), "lr a finite number"),
    ]
    for ok, rule in problems:
        if not ok:
            raise CheckpointError(f"checkpoint's model_kwargs for {name!r} are out of range ({rule} expected, "
                                  f"got {kwargs!r:.200}); the file is corrupt or not cnnlab's")
