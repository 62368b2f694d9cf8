"""Optional dependencies (pip extras): import one, or say in one line which extra installs it.

``pip install cnnlab`` brings torch, numpy, tqdm and matplotlib; ONNX export and TensorBoard logging need more,
declared as extras in pyproject.toml (``cnnlab[export]``, ``cnnlab[tensorboard]``). Code that needs one calls
:func:`require` when the feature is used, never at import time, so ``import cnnlab`` works without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cnnlab.errors import MissingExtra

__all__ = ["require"]


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` naming the pip extra that provides it.

    Args:
        module: the module to import, e.g. ``"onnxruntime"``.
        extra: the cnnlab extra that installs it, e.g. ``"export"``.
        feature: what needs it, for the message (``"ONNX export"``); defaults to the module's name.

    Returns:
        The imported module.

    Raises:
        MissingExtra: the import failed, e.g. "ONNX export needs the 'export' extra (onnxruntime is not
            installed): pip install 'cnnlab[export]'".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # A module that is installed but broken (a missing shared library) is an ImportError too; its own first
        # line then says why, instead of a misleading "not installed".
        missing = isinstance(exc, ModuleNotFoundError) and exc.name in (module, module.split(".")[0])
        why = f"{module} is not installed" if missing else f"importing {module} failed: {_first_line(exc)}"
        raise MissingExtra(f"{feature or module} needs the '{extra}' extra ({why}): "
                           f"pip install 'cnnlab[{extra}]'") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
