"""A collection of small real and synthetic image sets as ``DIR/{train,test}/<class>/*.png`` folders (issue 23).

Generated, never shipped: scikit-learn's digits, patches cut from the photographs and textures that
scikit-image ships (nothing is downloaded), synthetic shapes, and Fashion-MNIST subsets resized, coloured or
imbalanced. ``tests/`` and ``benchmarks/own_images.py`` both build their folders with :func:`write_set`.
Train and test patches of one picture come from disjoint halves of it (top / bottom), so no test patch
overlaps a training patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SETS", "write_set"]


def _digits(rng):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255 / 16)).round().astype(np.uint8)  # 8x8, 17 grey levels
    labels = bunch.target
    order = rng.permutation(len(labels))
    cut = int(0.8 * len(labels))  # 1,437 train / 360 test, as the first set
    names = [str(d) for d in range(10)]
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]], names


def _patches(pictures, size, per_class, rng, split_rows):
    """Random ``size`` crops of each picture; the train crops from its top part, the test crops from below."""
    xs, ys = [], []
    for label, picture in enumerate(pictures):
        h = picture.shape[0]
        lo, hi = (0, int(h * 0.6) - size) if split_rows == "train" else (int(h * 0.6), h - size)
        for _ in range(per_class):
            r = rng.integers(lo, hi + 1)
            c = rng.integers(0, picture.shape[1] - size + 1)
            xs.append(picture[r:r + size, c:c + size])
            ys.append(label)
    return np.stack(xs), np.array(ys)


def _picture_set(pictures, names, size, train_per_class, test_per_class):
    def build(rng):
        train = _patches(pictures(), size, train_per_class, rng, "train")
        test = _patches(pictures(), size, test_per_class, rng, "test")
        return (*train, *test, names)

    return build


def _textures():
    import skimage.data as sd

    return [sd.brick(), sd.grass(), sd.gravel()]


def _photos():
    import skimage.data as sd

    return [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket()]


def _shapes(rng, n, size=25):
    """Noisy filled discs (class 0) and squares (class 1) of random size and place, grey, ``size`` px."""
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for i in range(n):
        label = i % 2
        r = rng.uniform(4, 8)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if label == 0 else \
            ((abs(yy - cy) <= r * 0.85) & (abs(xx - cx) <= r * 0.85))
        image = 40 + 150 * mask + rng.normal(0, 30, (size, size))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        labels.append(label)
    return np.stack(images), np.array(labels)


def _shapes_set(rng):
    return (*_shapes(rng, 160), *_shapes(rng, 80), ["disc", "square"])


def _fashion(size, train, test, colour=False, imbalanced=False, classes=10):
    def build(rng):
        from PIL import Image

        from cnnlab.data.fashion_mnist import load_fashion_mnist
        from cnnlab.data.imagefolder import FASHION_FOLDERS

        def take(is_train, count):
            images, labels = load_fashion_mnist(None, train=is_train)
            images, labels = images.numpy(), labels.numpy()
            keep = np.flatnonzero(labels < classes)
            if imbalanced and is_train:  # class k keeps a share falling from 1 to 0.2
                share = 1 - 0.8 * labels[keep] / max(1, classes - 1)
                keep = keep[rng.random(len(keep)) < share]
            keep = rng.permutation(keep)[:count]
            out = [np.asarray(Image.fromarray(images[i]).resize((size, size), Image.BILINEAR)) for i in keep]
            out = np.stack(out)
            if colour:  # each image a random tint: the class does not tell the colour
                tint = rng.uniform(0.3, 1.0, (len(out), 1, 1, 3))
                out = (out[..., None] * tint).astype(np.uint8)
            return out, labels[keep]

        return (*take(True, train), *take(False, test), list(FASHION_FOLDERS[:classes]))

    return build


# name -> builder(rng) returning (train_images, train_labels, test_images, test_labels, class_names); images
# are uint8 (N, H, W) grey or (N, H, W, 3) colour.
SETS = {
    "digits-8": _digits,
    "shapes-25": _shapes_set,
    "textures-32": _picture_set(_textures, ["brick", "grass", "gravel"], 32, 300, 100),
    "photos-32": _picture_set(_photos, ["astronaut", "chelsea", "coffee", "rocket"], 32, 300, 100),
    "fashion-8-imbalanced": _fashion(8, 2000, 500, imbalanced=True),
    "fashion-16": _fashion(16, 1000, 500),
    "fashion-64-colour": _fashion(64, 600, 300, colour=True, classes=5),
    "fashion-28-200": _fashion(28, 200, 300),
}


def load_set(name: str, seed: int = 0):
    """The arrays of set ``name`` (see :data:`SETS`), drawn with ``seed``."""
    return SETS[name](np.random.default_rng(seed))


def write_set(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write set ``name`` as ``out_dir/{train,test}/<class>/<i>.png`` (once: an existing folder is kept)."""
    from PIL import Image

    out = Path(out_dir)
    if (out / "test").is_dir():
        return out
    train_x, train_y, test_x, test_y, names = load_set(name, seed)
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        for name_ in names:
            (out / split / name_).mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            Image.fromarray(x).save(out / split / names[y] / f"{i:05d}.png")
    return out



def short_run(name: str, tmp_path: Path, capsys, steps: int, lr: float, *options: str, out: str = "run"):
    """``cnnlab train --images`` on set ``name`` (written under ``tmp_path``) with the automatic recipe cut to
    ``steps`` steps at ``lr`` on one thread (no range test, no thread timing), into ``tmp_path / out``; it must
    exit 0. Returns the folder, the run folder and what the command printed."""
    from cnnlab.cli.main import main

    folder, run = str(write_set(name, tmp_path / name)), tmp_path / out
    status = main(["train", "--images", folder, "--steps", str(steps), "--lr", str(lr), "--threads", "1", "--out",
                   str(run), "--no-progress", *options])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    return folder, run, printed.out
