"""Model weights as safetensors: the ecosystem's format for sharing weights, which cannot run code by design.

:func:`save_safetensors` writes a model's ``state_dict`` with string metadata: ``model_name``, ``model_kwargs``
(JSON), ``data_settings`` (JSON, what the run's data module needs to rebuild the test split), and the keys it shares
with the ONNX export's ``metadata_props``, checked and encoded by :mod:`cnnlab.inference.metadata`: ``class_names``
(JSON), ``input_size`` (JSON ``[H, W]``), ``channels``, ``mean`` and ``std`` (JSON, one per channel),
``cnnlab_version``. :func:`read_safetensors` reads one back as a checkpoint-like dict that
:func:`~cnnlab.inference.loaded.load_trained` turns into a :class:`~cnnlab.inference.loaded.LoadedModel`.

The file is hostile until checked, and checked before the safetensors library sees it: the 8-byte header length
against the file size and a 16 MiB cap, the JSON header's shape, every tensor's byte range (in the file,
contiguous, no overlap, as long as its dtype and shape say), the model name against the registry, its kwargs
against cnnlab's limits, and every dtype and shape against the model rebuilt on the meta device (no memory).
Only then are the tensors read. Each failure is one :class:`~cnnlab.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from torch import nn

from cnnlab.atomic import atomic_write
from cnnlab.errors import CheckpointError
from cnnlab.inference.metadata import input_metadata

__all__ = ["MAX_HEADER_BYTES", "is_safetensors", "read_safetensors", "save_safetensors"]

MAX_HEADER_BYTES = 16 << 20  # a cnnlab model's header is a few KiB; 16 MiB is generous and still small
# safetensors' dtype names -> torch dtypes and their sizes (the ones a state dict of ours can hold).
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix), as the commands that take a run accept one."""
    return Path(path).suffix == ".safetensors"


def save_safetensors(model: nn.Module, path: str | os.PathLike, *, class_names, image_shape, mean, std,
                     data_settings: dict | None = None) -> Path:
    """Write ``model``'s weights and the metadata to use it (see the module doc) to ``path``, atomically.

    Args:
        model: a registered model (it carries ``model_name`` and ``model_kwargs``).
        class_names: the name of each logit.
        image_shape: ``(C, H, W)`` of the model's input.
        mean, std: per-channel normalization (``(pixel / 255 - mean) / std``).
        data_settings: the checkpoint's ``data_settings`` (plain values), kept so the test split can be rebuilt.
    """
    from safetensors.torch import save

    shared = input_metadata(class_names, image_shape, mean, std)  # checked before anything is written
    name, kwargs = getattr(model, "model_name", None), getattr(model, "model_kwargs", None)
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise ValueError("model was not built by cnnlab.models.create_model, so it cannot be rebuilt from a file")
    metadata = {"model_name": name, "model_kwargs": json.dumps(kwargs), **shared,
                "data_settings": json.dumps(data_settings or {})}
    # clone: a state dict may share storage between entries, which safetensors refuses to write
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(save(tensors, metadata=metadata))
    return path


def read_safetensors(path: str | os.PathLike) -> dict:
    """Read and check a safetensors file written by :func:`save_safetensors`; never unpickles anything.

    Returns:
        A checkpoint-like dict: ``model_name``, ``model_kwargs``, ``model_state`` (the tensors),
        ``data_settings`` (with ``classes``, ``channels``, ``image_size``, ``mean``, ``std`` from the metadata),
        ``format`` ``"safetensors"``, ``metadata`` (the strings as stored).

    Raises:
        CheckpointError: any of the checks in the module doc fails.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"safetensors file {path} does not exist")
    header, data_size = _read_header(path)
    metadata = header.pop("__metadata__", None)
    entries = _check_entries(path, header, data_size)
    name, kwargs, settings = _parse_metadata(path, metadata)
    _check_against_model(path, name, kwargs, entries)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:  # checked above; this is a file changed under us
        raise CheckpointError(f"safetensors file {path} cannot be read: {exc}") from None
    return {"model_name": name, "model_kwargs": kwargs, "model_state": tensors, "data_settings": settings,
            "format": "safetensors", "metadata": dict(metadata)}


def _read_header(path: Path) -> tuple[dict, int]:
    """The JSON header (checked against the file size before it is read) and the size of the data after it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: {size} bytes, shorter than the 8-byte header "
                                  "length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise CheckpointError(f"{path} is truncated or not a safetensors file: its header claims {length:,} "
                                  f"bytes, but the file holds {size - 8:,} after the length")
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(f"refusing {path}: its header is {length:,} bytes, more than the "
                                  f"{MAX_HEADER_BYTES:,} any model needs; the file is not a cnnlab model")
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: its header is a JSON "
                              f"{type(header).__name__}, not an object")
    return header, size - 8 - length


def _check_entries(path: Path, header: dict, data_size: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Every tensor's dtype and shape, after checking that the byte ranges tile the data exactly."""
    entries, ranges = {}, []
    for key, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(entry.get("shape"), list)
              and all(_is_count(s) for s in entry["shape"]) and isinstance(entry.get("data_offsets"), list)
              and len(entry["data_offsets"]) == 2 and all(_is_count(o) for o in entry["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{path} is not a valid safetensors file: tensor {key!r:.80} has no valid dtype, "
                                  f"shape and data_offsets ({entry!r:.200})")
        dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if not begin <= end <= data_size:
            raise CheckpointError(f"{path} is corrupt: tensor {key!r:.80} lies at bytes {begin:,}..{end:,}, "
                                  f"outside the file's {data_size:,} bytes of data")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path} is corrupt: tensor {key!r:.80} ({entry['dtype']} {list(shape)}) needs "
                                  f"{math.prod(shape) * dtype.itemsize:,} bytes, its offsets give {end - begin:,}")
        entries[key] = (dtype, shape)
        ranges.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(ranges):
        if begin != position:
            what = "overlaps the one before it" if begin < position else f"leaves a gap at byte {position:,}"
            raise CheckpointError(f"{path} is corrupt: tensor {key!r:.80} at bytes {begin:,}..{end:,} {what}")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path} is corrupt: its tensors cover {position:,} of the {data_size:,} data bytes")
    return entries


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_metadata(path: Path, metadata) -> tuple[str, dict, dict]:
    """The model name and kwargs and the data settings from the string metadata, checked."""
    from cnnlab.models import list_models
    from cnnlab.training.checkpoint import check_model_kwargs, current_names

    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has no string metadata (__metadata__), so it is not a cnnlab model file; "
                              "write one with `cnnlab export RUN --format safetensors`")
    name = metadata.get("model_name")
    if name not in list_models():
        raise CheckpointError(f"{path} names the model {name!r:.80}, which is not registered; known models: "
                              f"{', '.join(list_models())}")
    fields = {}
    for key in ("model_kwargs", "class_names", "input_size", "mean", "std", "data_settings"):
        try:
            fields[key] = json.loads(metadata.get(key, ""))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}'s metadata {key!r} is not JSON ({metadata.get(key)!r:.80}); the file "
                                  "is corrupt or not cnnlab's") from None
    kwargs, names, size = fields["model_kwargs"], fields["class_names"], fields["input_size"]
    channels = metadata.get("channels", "")
    shapes_ok = (isinstance(kwargs, dict) and isinstance(names, list) and all(isinstance(n, str) for n in names)
                 and isinstance(size, list) and len(size) == 2 and all(_is_count(s) for s in size)
                 and channels.isdigit() and isinstance(fields["data_settings"], dict))
    if not shapes_ok:
        raise CheckpointError(f"{path}'s metadata is malformed (model_kwargs a JSON object, class_names a list of "
                              "strings, input_size [H, W], channels a number expected); the file is not cnnlab's")
    check_model_kwargs(name, kwargs)
    settings = {**current_names(fields["data_settings"]), "classes": names, "channels": int(channels),
                "image_size": size, "mean": fields["mean"], "std": fields["std"]}
    return name, kwargs, settings


def _check_against_model(path: Path, name: str, kwargs: dict, entries: dict) -> None:
    """Refuse tensors whose names, dtypes or shapes differ from the named model's (built on the meta device)."""
    from cnnlab.models import create_model

    try:
        with torch.device("meta"):  # shapes and dtypes only: no memory, no real dry forward
            expected = create_model(name, **kwargs).state_dict()
    except Exception as exc:  # noqa: BLE001 - whatever crafted kwargs provoke, one clear sentence
        raise CheckpointError(f"{path}: model {name!r} cannot be built from its stored kwargs "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    missing, unexpected = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}'s tensors do not fit model {name!r}: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    for key, value in expected.items():
        dtype, shape = entries[key]
        if dtype != value.dtype or shape != tuple(value.shape):
            raise CheckpointError(f"{path}'s tensor {key!r} is {_NAMES.get(dtype)} {list(shape)}, but model "
                                  f"{name!r} has {_NAMES.get(value.dtype, value.dtype)} {list(value.shape)} there")
