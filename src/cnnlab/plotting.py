"""Figures for the book's examples, drawn headless (no display needed, no global backend switched)."""

from __future__ import annotations

import os
from pathlib import Path


def show_images(images, num_rows: int, num_cols: int, titles=None, scale: float = 1.5,
                path: str | os.PathLike | None = None):
    """Draw a grid of images with optional titles (d2l §4.2 ``show_images``).

    The figure is built with ``matplotlib.figure.Figure`` rather than pyplot, so it renders without a display
    and without switching the caller's backend (a notebook keeps its inline plots); it is still displayed
    when it is the last value of a notebook cell.

    Args:
        images: a tensor ``(N, H, W)`` or ``(N, 1, H, W)``, or a sequence of 2-D (or ``(H, W, 3)``) arrays.
        num_rows: rows of the grid.
        num_cols: columns of the grid; images beyond ``num_rows * num_cols`` are left out.
        titles: one title per image, or None.
        scale: inches per grid cell.
        path: if given, the PNG is saved there.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure  # imported here: importing cnnlab must not load matplotlib

    fig = Figure(figsize=(num_cols * scale, num_rows * scale))
    axes = fig.subplots(num_rows, num_cols, squeeze=False).flatten()
    for i, (ax, img) in enumerate(zip(axes, images, strict=False)):
        if hasattr(img, "detach"):  # a torch tensor; matplotlib wants numpy
            img = img.detach().cpu().numpy()
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]  # a single channel first: draw it as a 2-D image
        ax.imshow(img)
        ax.axis("off")
        if titles is not None and i < len(titles):
            ax.set_title(titles[i])
    for ax in axes[len(images):]:
        ax.axis("off")  # empty cells of an unfilled grid
    if path is not None:
        fig.savefig(path, format="png", bbox_inches="tight")
    return fig


def _figure(**kwargs):
    from matplotlib.figure import Figure  # imported here: importing cnnlab must not load matplotlib

    return Figure(**kwargs)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)  # a viewer never sees a half-written PNG
    return path


def plot_curves(history: list[dict], path) -> Path:
    """Training curves as d2l's ProgressBoard draws them: train loss, val loss and val accuracy by epoch."""
    epochs = [row["epoch"] for row in history]
    fig = _figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label="train loss")
    ax_loss.plot(epochs, [row["val_loss"] for row in history], "s--", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [row["val_acc"] for row in history], "o-", color="tab:green", label="val acc")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(confusion, class_names, path, title: str = "Confusion matrix") -> Path:
    """Confusion matrix with counts in the cells: rows are the true classes, columns the predictions."""
    counts = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    n = len(class_names)
    fig = _figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    top = max(max(row) for row in counts) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=7,
                    color="white" if counts[i][j] > top / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def plot_edge_demo(X, kernel, Y, path) -> Path:
    """d2l §7.2's experiment in one figure: the image, the learned kernel and its edge map."""
    fig = _figure(figsize=(10, 3))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [8, 3, 7]})
    panels = [(X, "input X (6x8)", "gray"), (kernel, "learned kernel", "RdBu_r"), (Y, "Y = corr2d(X, K)", "RdBu_r")]
    for ax, (values, title, cmap) in zip(axes, panels, strict=True):
        values = values.detach().cpu().numpy()
        limit = float(abs(values).max()) or 1.0
        vmin = 0 if cmap == "gray" else -limit
        ax.imshow(values, cmap=cmap, vmin=vmin, vmax=limit)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        if values.size <= 4:
            for (i, j), v in zip(((i, j) for i in range(values.shape[0]) for j in range(values.shape[1])),
                                 values.flatten().tolist(), strict=True):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def _tile_inches(ncols: int, widest: float = 9.5, largest: float = 1.1, smallest: float = 0.45) -> float:
    # Tiles shrink as columns grow so the figure stays within a laptop screen's width.
    return max(smallest, min(largest, widest / max(ncols, 1)))


def plot_kernels(tiles, path, title: str, ncols: int, tile_titles=None, row_labels=None,
                 col_labels=None) -> Path:
    """Conv kernels as tiles on one diverging colour scale centred on zero (red > 0 > blue).

    Every tile shares the same symmetric limits ``(-m, m)``, ``m`` the largest ``|weight|`` shown, so
    colours compare across tiles and white is exactly zero.

    Args:
        tiles: 2-D kernels (tensors or arrays), drawn row by row, ``ncols`` per row.
        path: where the PNG goes.
        title: the figure title (say which layer and what a tile is).
        ncols: tiles per row.
        tile_titles: a short title per tile, or None.
        row_labels: a label left of each row, or None.
        col_labels: a label above each column of the top row, or None.
    """
    import numpy as np

    arrays = [np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=float) for t in tiles]
    nrows = max(1, -(-len(arrays) // ncols))
    limit = max((float(np.abs(a).max()) for a in arrays), default=0.0) or 1.0
    inch = min(_tile_inches(ncols), 9.0 / nrows)  # at most about 9.5 x 9 inches of tiles
    fig = _figure(figsize=(ncols * inch + 1.6, nrows * inch + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(arrays):
            ax.axis("off")  # empty cells of an unfilled last row
            continue
        image = ax.imshow(arrays[k], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        if tile_titles is not None:
            ax.set_title(tile_titles[k], fontsize=7, pad=2)
    if row_labels is not None:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    if col_labels is not None:
        for c, label in enumerate(col_labels[:ncols]):
            axes[0, c].set_title(label, fontsize=7, pad=2)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, shrink=0.9)
        bar.set_label("weight (0 = white)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_feature_maps(image, image_title: str, stages, path, title: str, max_channels: int = 16) -> Path:
    """An input image and, one row per stage, the feature maps it produces after that stage.

    Args:
        image: the input as a 2-D array (drawn in grey).
        image_title: caption of the input (size, true and predicted class).
        stages: ``(label, maps, channels)`` per stage: a row label, the maps to draw ``(K, H, W)`` and the
            channel index of each; each row has its own colour scale, from its smallest to largest value.
        path: where the PNG goes.
        title: the figure title.
        max_channels: tiles per row (rows with fewer maps leave the rest empty).
    """
    import numpy as np

    ncols = max(1, min(max_channels, max((len(maps) for _, maps, _ in stages), default=1)))
    inch = _tile_inches(ncols, widest=10.0, largest=1.0, smallest=0.55)
    heights = [1.3] + [1.0] * len(stages)  # the input row a little larger
    fig = _figure(figsize=(ncols * inch + 0.4, sum(heights) * inch + 0.45 * (len(stages) + 1) + 0.5),
                  layout="constrained")
    rows = fig.subfigures(len(stages) + 1, 1, height_ratios=heights)
    ax = rows[0].subplots(1, 1)
    ax.imshow(np.asarray(image.detach().cpu() if hasattr(image, "detach") else image), cmap="gray")
    ax.set_xticks([])
    ax.set_yticks([])
    rows[0].suptitle(image_title, fontsize=9)
    for row, (label, maps, channels) in zip(rows[1:], stages, strict=True):
        maps = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=float)
        lo, hi = (float(maps.min()), float(maps.max())) if maps.size else (0.0, 1.0)
        axes = row.subplots(1, ncols, squeeze=False)[0]
        for k, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(maps):
                ax.axis("off")
                continue
            ax.imshow(maps[k], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_title(f"ch {channels[k]}", fontsize=6, pad=1)
        row.suptitle(f"{label}   (colour: {lo:.2g} to {hi:.2g})", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_mistakes(images, titles, path, title: str, ncols: int = 8) -> Path:
    """A grid of greyscale images with a caption each (the most confident wrong predictions).

    Args:
        images: 2-D images (uint8 or float), drawn in grey.
        titles: one caption per image, e.g. ``"true: coat\\npred: shirt 0.97"``.
        path: where the PNG goes.
        title: the figure title.
        ncols: images per row.
    """
    import numpy as np

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    inch = _tile_inches(ncols, widest=10.0, largest=1.35, smallest=0.9)
    fig = _figure(figsize=(ncols * inch, nrows * (inch + 0.45) + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = images[k]
            ax.imshow(np.asarray(img.detach().cpu() if hasattr(img, "detach") else img), cmap="gray")
            ax.set_title(titles[k], fontsize=7, pad=2)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=12)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
