"""Test helper: count the bytes cnnlab.data.idx reads from disk and from gzip streams (no clock involved)."""

import builtins
import gzip

from cnnlab.data import idx


class _CountingFile:
    """A binary file that adds the size of everything read from it to ``counts[key]``."""

    def __init__(self, f, counts: dict, key: str):
        self._f, self._counts, self._key = f, counts, key

    def read(self, *args):
        data = self._f.read(*args)
        self._counts[self._key] += len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._counts[self._key] += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def count_idx_reads(monkeypatch) -> dict:
    """Make ``cnnlab.data.idx`` count its reads: ``{"file": bytes read from disk, "gzip": bytes decompressed}``."""
    counts = {"file": 0, "gzip": 0}

    def counting_open(path, mode="r", *args, **kwargs):
        return _CountingFile(builtins.open(path, mode, *args, **kwargs), counts, "file")

    class CountingGzipFile(gzip.GzipFile):
        def read(self, size=-1):
            data = super().read(size)
            counts["gzip"] += len(data)
            return data

    monkeypatch.setattr(idx, "open", counting_open, raising=False)
    monkeypatch.setattr(idx.gzip, "GzipFile", CountingGzipFile)
    return counts
