"""Decoding an image folder: Fashion-MNIST's 60,000 training images as PNG files, cold and from the cache.

    python benchmarks/imagefolder.py [--dir DIR] [--limit N] [--repeats 3]

The images are exported once (:func:`cnnlab.data.imagefolder.export_folder`) into ``--dir`` (kept) or a temporary
folder (removed). Three figures, in images per second, each the median of ``--repeats`` runs:

- the baseline: a bare Pillow loop (``Image.open(path).convert("L")`` into a NumPy array, no checks), the
  floor any per-file decoder pays;
- cold: :func:`cnnlab.data.imagedecode.decode_folder` without its cache: listing, header checks, checked decoding
  into one ``uint8`` tensor;
- cached: the same call when its cache file exists (listing and stat of every file, then one ``torch.load``).

"Cold" means cnnlab's cache is empty; the files themselves sit in the OS page cache after the export, so disk
reads are not timed. The cache goes to a temporary ``$CNNLAB_CACHE``, never the user's. The load average is
printed with the figures: on a machine busy with other work every figure drops.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds  # noqa: E402
from cnnlab.bench import cpu_name, load_average  # noqa: E402
from cnnlab.data.imagedecode import decode_folder  # noqa: E402
from cnnlab.data.imagefolder import export_folder  # noqa: E402


def bare_pillow(paths: list[str]) -> np.ndarray:
    """The baseline: each file opened and converted by Pillow, nothing checked, into one array."""
    from PIL import Image

    out = np.empty((len(paths), 28, 28), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            out[i] = np.asarray(img.convert("L"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="export into (and keep) this folder; it may "
                        "already hold the export from an earlier run")
    parser.add_argument("--limit", type=int, default=60_000, help="training images to export")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnnlab-imagefolder-") as tmp:
        os.environ["CNNLAB_CACHE"] = str(Path(tmp) / "cache")
        root = args.dir if args.dir is not None else Path(tmp) / "fashion"
        print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, load average "
              f"{load_average()}")
        if not (root / "train").exists():
            start = time.perf_counter()
            export_folder(root, "train", limit=args.limit)
            took = time.perf_counter() - start
            print(f"exported {args.limit:,} PNG files to {root}/train in {took:.1f} s ({args.limit / took:,.0f}/s)")
        paths = sorted(str(p) for p in (root / "train").rglob("*.png"))
        n = len(paths)

        def cold():
            return decode_folder(root, cache=False, progress=False, log=None)

        def cached():
            decoded = decode_folder(root, progress=False, log=None)
            assert decoded.from_cache
            return decoded

        decode_folder(root, progress=False, log=None)  # writes the cache file
        first = cold().splits["train"][0]
        assert first.shape == (n, 1, 28, 28)
        results = {}
        for name, fn in (("bare Pillow loop (baseline)", lambda: bare_pillow(paths)), ("cnnlab cold (no cache)", cold),
                         ("cnnlab cached", cached)):
            seconds = median_seconds(fn, repeats=args.repeats, warmup=0 if name != "cnnlab cached" else 1)
            results[name] = n / seconds
        base = results["bare Pillow loop (baseline)"]
        print(f"{n:,} images of 28x28 (PNG, grey), median of {args.repeats}:")
        for name, rate in results.items():
            print(f"  {name:<28} {rate:>12,.0f} images/s  {rate / base:6.2f}x the baseline")
        print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
