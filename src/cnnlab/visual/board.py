"""The book's live training figure in Jupyter: d2l's ``ProgressBoard`` (d2l §3.2.2, §B "utils").

In a notebook, ``Trainer.fit`` draws what d2l's does while it trains: ``train_loss`` (two averaged points per
epoch), ``val_loss`` and ``val_acc`` (one point per epoch) against epochs, in one figure that is updated in
place. Outside a running IPython kernel (scripts, the CLI, tests) nothing is drawn or displayed and IPython
is never imported.

The figure is a ``matplotlib.figure.Figure`` rendered to PNG and shown through ``IPython.display`` with a
display id, so each redraw replaces the previous image instead of clearing the cell (d2l clears the output,
which would also wipe the progress bar and the per-epoch log lines). During training, redraws are
throttled: at most four points per epoch (d2l's two train-loss points, val loss and val accuracy), at most
one redraw a second, plus the last one, so drawing never slows training noticeably.
"""

from __future__ import annotations

import collections
import io
import sys
import time

__all__ = ["ProgressBoard", "TrainingBoard", "epoch_bar", "in_notebook", "inline_figures", "live_board", "show_figure"]


def in_notebook() -> bool:
    """Whether this code runs inside a Jupyter (IPython) kernel.

    Looks only at modules already imported: a kernel has imported IPython, a script has not, so this never
    pays for importing IPython.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def inline_figures() -> None:
    """In a notebook, show a ``matplotlib.figure.Figure`` left as a cell's value as an inline PNG.

    ``%matplotlib inline`` does this for figures once pyplot is imported; cnnlab draws without pyplot, so it
    registers the same formatter with the running kernel (idempotent; nothing happens outside a kernel).
    """
    if not in_notebook():
        return
    from IPython import get_ipython
    from matplotlib.figure import Figure

    get_ipython().display_formatter.formatters["image/png"].for_type(Figure, _png)


def show_figure(fig, handle=None):
    """Display ``fig`` as a PNG in the notebook, or replace the image of ``handle``; returns the handle.

    Outside a notebook it does nothing and returns None.
    """
    if not in_notebook():
        return None
    from IPython.display import Image, display

    image = Image(data=_png(fig), format="png")
    if handle is None:
        return display(image, display_id=True)
    handle.update(image)
    return handle


Point = collections.namedtuple("Point", ["x", "y"])


class ProgressBoard:
    """Plot data points in animation (d2l §3.2.2 ``ProgressBoard``): ``draw(x, y, label, every_n)``.

    d2l's arguments and behaviour: every ``every_n`` points of a label are averaged into one point of its
    line, and the figure is redrawn when a line grows (with ``min_interval`` > 0, at most once per that many
    seconds; :meth:`flush` then draws the final picture). With ``display=False`` or outside a notebook it
    only records the lines (``board.data[label]`` is a list of ``Point(x, y)``).

    Args:
        xlabel, ylabel, xlim, ylim, xscale, yscale: as matplotlib's axes take them.
        ls, colors: line styles and colours, one per label in order of appearance.
        fig, axes: a figure and axes to draw on; None makes one of ``figsize`` inches.
        display: draw at all.
        min_interval: least seconds between two redraws; 0 redraws at every new point, as d2l does.
        clock: the seconds the throttle reads (``time.monotonic``; tests give a fake one).
    """

    def __init__(self, xlabel=None, ylabel=None, xlim=None, ylim=None, xscale="linear", yscale="linear",
                 ls=("-", "--", "-.", ":"), colors=("C0", "C1", "C2", "C3"), fig=None, axes=None,
                 figsize=(3.5, 2.5), display=True, min_interval=0.0, clock=time.monotonic):
        self.xlabel, self.ylabel, self.xlim, self.ylim = xlabel, ylabel, xlim, ylim
        self.xscale, self.yscale, self.ls, self.colors = xscale, yscale, tuple(ls), tuple(colors)
        self.fig, self.axes, self.figsize, self.display = fig, axes, figsize, display
        self.min_interval, self.clock = min_interval, clock
        self.raw_points: dict[str, list[Point]] = collections.OrderedDict()
        self.data: dict[str, list[Point]] = collections.OrderedDict()
        self.redraws = 0
        self._handle = None
        self._last = float("-inf")
        self._pending = False

    def draw(self, x, y, label, every_n=1):
        """Add the point ``(x, y)`` to the line ``label``; every ``every_n`` points become one, their mean."""
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        points.append(Point(x, float(y)))
        if len(points) != every_n:
            return
        line.append(Point(sum(p.x for p in points) / every_n, sum(p.y for p in points) / every_n))
        points.clear()
        self._pending = True
        if self.clock() - self._last >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        """Redraw now if a line grew since the last redraw (and there is a notebook to show it in)."""
        if not (self._pending and self.display and in_notebook()):
            return
        if self.fig is None:
            from matplotlib.figure import Figure  # only in a notebook: importing cnnlab loads no matplotlib

            self.fig = Figure(figsize=self.figsize)
        axes = self.axes if self.axes is not None else (self.fig.axes[0] if self.fig.axes else self.fig.subplots())
        axes.cla()
        for (label, line), ls, color in zip(self.data.items(), self.ls * 4, self.colors * 4, strict=False):
            # A line of one point (after one epoch) draws nothing, so it gets a marker.
            axes.plot([p.x for p in line], [p.y for p in line], linestyle=ls, color=color, label=label,
                      marker="o" if len(line) == 1 else None)
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or "x")
        axes.set_ylabel(self.ylabel)
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        axes.legend()
        self._handle = show_figure(self.fig, self._handle)
        self.redraws += 1
        self._pending = False
        self._last = self.clock()


class TrainingBoard:
    """The figure ``d2l.Trainer.fit`` shows in the book, fed by cnnlab's :class:`~cnnlab.training.trainer.Trainer`.

    The trainer calls :meth:`step` with each batch's loss tensor, :meth:`epoch` with each epoch's metrics
    row and :meth:`close` at the end. Like d2l's ``Module.plot`` (``plot_train_per_epoch=2``,
    ``plot_valid_per_epoch=1``), ``train_loss`` is averaged over half an epoch of batches and plotted at the
    mean of their fractional epochs; ``val_loss`` and ``val_acc`` are plotted at the epoch's end. The losses
    are summed on the device and read twice per epoch, so the board adds no host sync per step.

    Args:
        max_epochs: the x-axis runs from 0 to this.
        num_batches: batches per training epoch.
        board: a :class:`ProgressBoard` to draw on; None makes d2l's default one, redrawn at most once a
            second (a redraw renders a PNG, tens of milliseconds) and once more at the end.
        plot_train_per_epoch: train_loss points per epoch (d2l's default, 2).
        start_epoch: the epoch training starts at (a resumed run).
    """

    def __init__(self, max_epochs: int, num_batches: int, board: ProgressBoard | None = None,
                 plot_train_per_epoch: int = 2, start_epoch: int = 0):
        self.board = board if board is not None else ProgressBoard(xlabel="epoch", xlim=[0, max_epochs],
                                                                   min_interval=1.0)
        self.num_batches = max(1, num_batches)
        self.every_n = max(1, self.num_batches // plot_train_per_epoch)
        self.max_epochs = max_epochs
        self.batch_idx = start_epoch * self.num_batches  # a resumed run continues the x-axis
        self._sum = None
        self._count = 0
        self._x = 0.0

    def step(self, loss) -> None:
        """Count one training batch whose mean loss is the 0-dim tensor ``loss``."""
        self.batch_idx += 1
        self._sum = loss.detach() if self._sum is None else self._sum + loss.detach()
        self._count += 1
        self._x += self.batch_idx / self.num_batches
        if self._count == self.every_n:
            # One point that is the mean of every_n of d2l's points: ProgressBoard(every_n=1) draws it as is.
            self.board.draw(self._x / self._count, float(self._sum) / self._count, "train_loss")
            self._sum, self._count, self._x = None, 0, 0.0

    def epoch(self, row: dict) -> None:
        """Plot an epoch's ``val_loss`` and ``val_acc`` at x = its number, as d2l does."""
        self.board.draw(row["epoch"], row["val_loss"], "val_loss")
        self.board.draw(row["epoch"], row["val_acc"], "val_acc")

    def close(self) -> None:
        """Draw the final picture."""
        self.board.flush()


def live_board(board, max_epochs: int, num_batches: int, start_epoch: int = 0):
    """What ``Trainer(display=Display(board=...))`` trains with: ``'auto'`` is a :class:`TrainingBoard` in a
    notebook and None elsewhere; None is none; anything else (a TrainingBoard, or an object with ``step``,
    ``epoch`` and ``close``) is used as given."""
    if isinstance(board, str):
        if board != "auto":
            raise ValueError(f"board must be 'auto', None or a board object, got {board!r}")
        return TrainingBoard(max_epochs, num_batches, start_epoch=start_epoch) if in_notebook() else None
    return board


def epoch_bar(total: int, desc: str):
    """A tqdm bar for one epoch of ``total`` batches.

    ``disable=None``: no bar when stderr is not a terminal (CI logs, files), where ``\r`` updates are noise; in a
    notebook (never a terminal) tqdm.auto's widget bar is shown.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=False if in_notebook() else None, unit="batch",
                dynamic_ncols=True)
