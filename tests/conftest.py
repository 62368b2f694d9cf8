"""Shared fixtures: the real Fashion-MNIST files (Debian's package, installed by `make test`)."""

import pytest

from cnnlab.data.files import find_data_dir
from cnnlab.errors import DataError


@pytest.fixture(scope="session")
def data_dir():
    try:
        return find_data_dir()
    except DataError as exc:
        pytest.fail(f"the real Fashion-MNIST files are needed (run `make test`, which installs them): {exc}")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The checksum memo goes to a per-session folder, never the user's ~/.cache.
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
