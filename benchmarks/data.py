"""One pass over Fashion-MNIST's 60,000 training images: cnnlab's BatchLoader against a per-image Dataset.

    python benchmarks/data.py [--repeats 3] [--sizes 28 96] [--workers 0 2] [--threads N]

The baseline is the idiomatic map-style ``torch.utils.data.Dataset`` whose ``__getitem__`` turns one uint8
image into a float tensor in [0, 1] (and resizes it alone with ``F.interpolate(antialias=True)`` when
asked), fed through ``DataLoader(shuffle=True, batch_size=128)`` with each ``--workers`` count; the ratio is
against the best of them. Both sides start from the same decoded uint8 tensors, so only batching is timed.
The load average is printed with the figures: on a machine busy with other work, every multi-threaded torch
op waits for a scheduler slice, which hurts batched ops far more than tiny per-image ones (try --threads 1).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds  # noqa: E402
from cnnlab.data.fashion_mnist import FashionMNIST  # noqa: E402


class PerImageDataset(Dataset):
    """The usual map-style dataset: one image converted (and resized) per ``__getitem__`` call."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].to(torch.float32).div(255).unsqueeze(0)  # (1, 28, 28), as ToTensor()
        if x.shape[-1] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        return x, self.labels[i]


def one_pass(loader, limit: int | None = None) -> None:
    for _batch in itertools.islice(loader, limit):
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case (median reported)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 96], help="output sizes (square)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers to try")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, batch {args.batch_size}, median of {args.repeats}")
    columns = "".join(f"{f'per-image, {w} workers':>24}" for w in args.workers)
    print(f"{'size':<8}{'cnnlab':>10}{columns}{'ratio to best':>15}")
    for size in args.sizes:
        data = FashionMNIST(batch_size=args.batch_size, resize=size)
        ours = data.train_dataloader()
        ours_s = median_seconds(lambda ours=ours: one_pass(ours), repeats=args.repeats, warmup=1)
        dataset = PerImageDataset(data.train_images, data.train_labels, size)
        baselines = []
        for workers in args.workers:
            loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers)
            one_pass(loader, limit=20)  # warm-up: first calls and the worker start-up path
            baselines.append(median_seconds(lambda loader=loader: one_pass(loader), repeats=args.repeats,
                                            warmup=0))
        cells = "".join(f"{f'{seconds:.2f}s':>24}" for seconds in baselines)
        print(f"{f'{size}x{size}':<8}{f'{ours_s:.3f}s':>10}{cells}{f'{min(baselines) / ours_s:.1f}x':>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
