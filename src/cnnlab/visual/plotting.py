"""Figures for the book's examples, drawn headless (no display needed, no global backend switched).

In a Jupyter notebook the book's helpers (``plot``, ``show_images``) are shown inline (see :mod:`cnnlab.visual.board`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.visual.board import inline_figures

# The most kernel tiles one figure draws (cnnlab viz kernels, TensorBoard's kernel images): beyond it, a tile per
# output channel.
MAX_KERNEL_TILES = 256


def show_images(images, num_rows: int, num_cols: int, titles=None, scale: float = 1.5,
                path: str | os.PathLike | None = None):
    """Draw a grid of images with optional titles (d2l §4.2 ``show_images``).

    The figure is built with ``matplotlib.figure.Figure`` rather than pyplot, so it renders without a display
    and without switching the caller's backend; in a Jupyter notebook it is shown inline when it is the
    cell's value (``d2l.show_images(...)`` or ``data.visualize(batch)`` as the last line, as in the book).

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

    inline_figures()
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
        _save(fig, path, dpi=None)
    return fig


def plot(X, Y=None, xlabel=None, ylabel=None, legend=(), xlim=None, ylim=None, xscale="linear", yscale="linear",
         fmts=("-", "m--", "g-.", "r:"), figsize=(3.5, 2.5), axes=None):
    """Plot one or more curves (d2l §2.4 ``plot``), with the book's arguments.

    ``X`` and ``Y`` are a 1-D sequence (or tensor) each, or lists of them; with ``Y`` None, ``X`` holds the
    y-values. Drawn on a new ``Figure`` of ``figsize`` inches (or on ``axes``), without pyplot; in a Jupyter
    notebook the figure is shown inline when it is the cell's value, as the book's calls are.

    Returns:
        The ``matplotlib.figure.Figure`` drawn on.
    """

    def has_one_axis(X):  # a tensor or list of numbers, not a list of curves
        return (hasattr(X, "ndim") and X.ndim == 1) or (isinstance(X, list) and not hasattr(X[0], "__len__"))

    def values(v):
        return v.detach().cpu().numpy() if hasattr(v, "detach") else v

    if has_one_axis(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif has_one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    if axes is None:
        inline_figures()
        axes = _figure(figsize=figsize).subplots()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts, strict=False):
        if len(x):
            axes.plot(values(x), values(y), fmt)
        else:
            axes.plot(values(y), fmt)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()
    return axes.figure


def _figure(**kwargs):
    from matplotlib.figure import Figure  # imported here: importing cnnlab must not load matplotlib

    return Figure(**kwargs)


def _save(fig, path, dpi: float | None = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a viewer never sees a half-written PNG
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_curves(history: list[dict], path) -> Path:
    """Training curves as d2l's ProgressBoard draws them: train loss, val loss and val accuracy by epoch."""
    from matplotlib.ticker import MaxNLocator

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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers, even for one
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
                # White on the saturated ends of the colour map, black on the pale middle.
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if abs(v) > limit / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def _array(x):
    import numpy as np

    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    # A colour (H, W, 3) uint8 picture stays uint8: matplotlib reads 0..255 for integers, 0..1 for floats.
    return a if a.ndim == 3 and a.dtype == np.uint8 else a.astype(float)


def _draw_tiles(ax, arrays, ncols: int, cmap: str, vmin: float, vmax: float, titles=None, ncols_total=None):
    """Draw equally sized 2-D arrays as a grid of framed tiles inside one axes; returns the last image.

    One axes with many images renders in a fraction of the time of one axes per tile (a 512-channel layer
    has hundreds of tiles). Tile ``k`` sits at row ``k // ncols``, column ``k % ncols``; a tile is
    ``h x w`` data units with a gap of a sixth of a tile between tiles.
    """
    from matplotlib.patches import Rectangle

    h, w = arrays[0].shape if arrays else (1, 1)
    gap = max(h, w) / 6
    nrows = max(1, -(-len(arrays) // ncols))
    image = None
    for k, a in enumerate(arrays):
        r, c = divmod(k, ncols)
        x0, y0 = c * (w + gap), r * (h + gap + (gap if titles else 0))
        image = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                          extent=(x0, x0 + w, y0 + h, y0))
        ax.add_patch(Rectangle((x0, y0), w, h, fill=False, linewidth=0.6, edgecolor="0.2"))
        if titles is not None:
            ax.text(x0 + w / 2, y0 - gap * 0.15, titles[k], ha="center", va="bottom", fontsize=6.5)
    top = -(gap * 1.2 if titles else gap / 2)
    ax.set_xlim(-gap / 2, (ncols_total or ncols) * (w + gap) - gap / 2)
    ax.set_ylim(nrows * (h + gap + (gap if titles else 0)) - gap / 2, top)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image, (h, w, gap)


def plot_kernels(tiles, path, title: str, ncols: int, tile_titles=None, row_labels=None,
                 col_labels=None) -> Path:
    """Conv kernels as tiles on one diverging colour scale centred on zero (red > 0 > blue, white = 0).

    Every tile shares the same symmetric limits ``(-m, m)``, ``m`` the largest ``|weight|`` shown, so
    colours compare across tiles and white is exactly zero.

    Args:
        tiles: 2-D kernels of one size (tensors or arrays), drawn row by row, ``ncols`` per row.
        path: where the PNG goes.
        title: the figure title (say which layer and what a tile is).
        ncols: tiles per row.
        tile_titles: a short title per tile, or None.
        row_labels: a label left of each row, or None.
        col_labels: a label above each column, or None.
    """
    import numpy as np

    arrays = [_array(t) for t in tiles]
    nrows = max(1, -(-len(arrays) // ncols))
    limit = max((float(np.abs(a).max()) for a in arrays), default=0.0) or 1.0
    inch = max(0.3, min(1.1, 9.5 / ncols, 9.0 / nrows))  # tiles shrink to keep within a laptop screen
    fig = _figure(figsize=(ncols * inch + 1.8, nrows * inch * (1.25 if tile_titles else 1.0) + 0.9),
                  layout="constrained")
    ax = fig.subplots()
    image, (h, w, gap) = _draw_tiles(ax, arrays, ncols, "RdBu_r", -limit, limit, titles=tile_titles)
    if row_labels is not None:
        ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(row_labels))], row_labels, fontsize=7)
        ax.tick_params(axis="y", length=0)
    if col_labels is not None:
        ax.xaxis.tick_top()
        ax.set_xticks([c * (w + gap) + w / 2 for c in range(len(col_labels))], col_labels, fontsize=7,
                      rotation=90 if len(col_labels) > 20 else 0)
        ax.tick_params(axis="x", length=0)
    ax.set_title(title, fontsize=10)
    if image is not None:
        bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, shrink=0.9)
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
        max_channels: tiles per row.
    """
    ncols = max(1, min(max_channels, max((len(maps) for _, maps, _ in stages), default=1)))
    inch = max(0.45, min(1.0, 10.0 / ncols))
    ratios = [1.8] + [1.0] * len(stages)  # the input a little larger than a feature map
    fig = _figure(figsize=(ncols * inch + 0.6, sum(ratios) * inch * 1.2 + 0.3 * len(ratios) + 0.3),
                  layout="constrained")
    axes = fig.subplots(len(ratios), 1, squeeze=False, height_ratios=ratios)[:, 0]
    axes[0].imshow(_array(image), cmap="gray")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title(image_title, fontsize=9)
    for ax, (label, maps, channels) in zip(axes[1:], stages, strict=True):
        arrays = [_array(m) for m in maps][:ncols]
        lo = min((float(a.min()) for a in arrays), default=0.0)
        hi = max((float(a.max()) for a in arrays), default=1.0)
        _draw_tiles(ax, arrays, ncols, "viridis", lo, hi if hi > lo else lo + 1,
                    titles=[f"ch {c}" for c in channels[:ncols]], ncols_total=ncols)
        ax.set_title(f"{label}   (colour: {lo:.2g} dark to {hi:.2g} bright)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_mistakes(images, titles, path, title: str, ncols: int = 8, heatmaps=None) -> Path:
    """A grid of images with a caption each (the most confident wrong predictions), heat maps over them if given.

    Args:
        images: 2-D images (uint8 or float) drawn in grey, or ``(H, W, 3)`` colour ones.
        titles: one caption per image, e.g. ``"true: coat\\npred: shirt 0.97"``.
        path: where the PNG goes.
        title: the figure title.
        ncols: images per row.
        heatmaps: one ``(H, W)`` map per image (e.g. Grad-CAM), drawn over it (see :func:`plot_overlays`).
    """
    return plot_overlays(images, heatmaps, titles, path, title, ncols=ncols, empty="no mistakes")


def plot_overlays(images, heatmaps, titles, path, title: str, ncols: int = 8, show_input: bool = False,
                  empty: str = "no images") -> Path:
    """A grid of pictures, each with its heat map drawn over it (an explanation of one prediction).

    Each map is scaled to its own range (``inferno``, half transparent), since an explanation ranks pixels
    within one image, not across images.

    Args:
        images: 2-D images (uint8 or float) drawn in grey, or ``(H, W, 3)`` colour ones.
        heatmaps: one ``(H, W)`` map per image, or None for plain pictures.
        titles: one caption per image.
        show_input: draw the plain picture beside each overlay (one explanation per file).
    """
    n = len(images)
    per = 2 if show_input and heatmaps is not None else 1
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    inch = max(0.9, min(1.35 if per == 1 else 2.2, 10.0 / ncols))
    fig = _figure(figsize=(ncols * per * inch, nrows * (inch + 0.45) + 0.4))
    axes = fig.subplots(nrows, ncols * per, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        row, col = divmod(k, ncols)
        picture = _array(images[k])
        grey = "gray" if picture.ndim == 2 else None
        if per == 2:
            axes[row, 2 * col].imshow(picture, cmap=grey)
        ax = axes[row, per * col + per - 1]
        ax.imshow(picture, cmap=grey)
        if heatmaps is not None:
            heat = _array(heatmaps[k])
            ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=float(heat.min()), vmax=float(heat.max()) or None,
                      extent=(-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
        ax.set_title(titles[k], fontsize=7, pad=2)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_find(lrs, losses, smoothed, suggestion: float, path, minimum: float | None = None,
                 peak: float | None = None) -> Path:
    """The learning-rate range test as fastai draws it: loss against a log-scaled rate, the choice marked (and
    ``peak``, the automatic recipe's rate, where given)."""
    fig = _figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(lrs, losses, color="0.75", lw=1, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(suggestion, color="tab:green", ls="--", label=f"suggested lr {suggestion:.2g}")
    if minimum is not None:
        ax.axvline(minimum, color="tab:red", ls=":", label=f"minimum {minimum:.2g}")
    if peak is not None:
        ax.axvline(peak, color="tab:orange", ls="-.", label=f"automatic recipe's peak {peak:.2g}")
    finite = [v for v in smoothed if v == v and v != float("inf")]
    if finite:  # the explosion at the end would flatten the interesting part
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 2.5 * finite[0]) * 1.05)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="Learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
