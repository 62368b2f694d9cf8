"""pyproject.toml declares every package that cnnlab's source imports (a fresh ``pip install .`` must run it)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself depends on there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Imported only where the package is already loaded: cnnlab.visual.board imports IPython inside a running
# Jupyter kernel (which brings it), never otherwise.
PRESENT_WHEN_USED = {"IPython"}


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "cnnlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"cnnlab"} - PRESENT_WHEN_USED


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared_in_pyproject():
    owners = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        distributions = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not distributions & declared:
            missing[module] = sorted(distributions)
    assert not missing, f"imported by src/cnnlab but not declared in pyproject.toml: {missing}"
    assert "pillow" in declared and "torch" in declared  # the parse found the lists
