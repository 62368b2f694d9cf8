"""Draw docs/layers.svg: cnnlab's packages as layers, with the imports the code really makes between them.

Usage: ``python scripts/draw_layers.py`` (matplotlib only). The layer order and the import reader are those of
tests/test_layout.py, which enforces them; every import of every module (function-level ones included) is read
with ``ast``, and an arrow A -> B is drawn where A imports B and B is not already reached through another arrow
(the transitive reduction), so the picture stays readable and still says exactly what can reach what.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "cnnlab"  # the same ids every time, so the file only changes with the graph
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_layout import LAYERS, cnnlab_imports, modules, unit  # noqa: E402

LABELS = {"__init__": "cnnlab (flat API)", "__main__": "__main__"}


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """The unit-level import edges (unit -> units it imports) and each unit's modules."""
    edges: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[str]] = defaultdict(list)
    for module, path in modules():
        source = unit(module)
        if module.count(".") == 2:
            members[source].append(module.rsplit(".", 1)[1])
        for target, _ in cnnlab_imports(module, path):
            if unit(target) != source:
                edges[source].add(unit(target))
    return edges, members


def transitive_reduction(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop A -> C wherever A reaches C through another of its targets (the graph is acyclic: imports point down)."""
    def reach(node, seen):
        for nxt in edges.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    return {a: {c for c in targets if not any(c in reach(b, {b}) for b in targets if b != c)}
            for a, targets in edges.items()}


WIDTH, HEIGHT = 4.2, 0.62  # of a box; the layers are 1 apart


def _positions() -> dict[str, tuple[float, float]]:
    position = {}
    for rank, layer in enumerate(LAYERS):
        names = sorted(layer)
        for i, name in enumerate(names):
            step = WIDTH / len(names) if len(names) > 1 else 0
            position[name] = ((i - (len(names) - 1) / 2) * step * 1.05, rank * 1.0)
    return position


def _arrow(ax, points) -> None:
    """A polyline through ``points`` whose last segment ends in an arrow head."""
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, color="#777", linewidth=0.8, solid_joinstyle="round")
    ax.annotate("", xy=points[-1], xytext=points[-2],
                arrowprops={"arrowstyle": "-|>", "color": "#777", "linewidth": 0.8, "mutation_scale": 8})


def draw(out: Path) -> None:
    edges, members = import_graph()
    reduced = transitive_reduction(edges)
    position = _positions()
    fig, ax = plt.subplots(figsize=(9, 9.5))
    for name, (x, y) in position.items():
        width = WIDTH if len(next(layer for layer in LAYERS if name in layer)) == 1 else WIDTH / 4
        text = f"{name}/" if name in members else LABELS.get(name, name)
        if members.get(name):
            text += "\n" + ", ".join(sorted(members[name]))
        ax.add_patch(FancyBboxPatch((x - width / 2, y - HEIGHT / 2), width, HEIGHT, boxstyle="round,pad=0.02",
                                    facecolor="#e8f0fe" if name in members else "#f3f3f3", edgecolor="#555"))
        ax.text(x, y, text, ha="center", va="center", fontsize=7 if "\n" in text else 8.5)
    # Arrows between neighbouring layers go straight down; longer ones run in lanes beside the stack, one lane
    # each, alternately right and left, so that no arrow crosses a box.
    lanes = {"right": 0, "left": 0}
    long_edges = []
    for a, targets in sorted(reduced.items(), key=lambda item: -position[item[0]][1]):
        for b in sorted(targets, key=lambda t: -position[t][1]):
            (xa, ya), (xb, yb) = position[a], position[b]
            if ya == yb:  # within the foundation's row: side by side
                half = WIDTH / 8 * (1 if xb > xa else -1)
                _arrow(ax, [(xa + half, ya), (xb - half, yb)])
            elif ya - yb <= 1 and abs(xa - xb) < WIDTH / 2:
                _arrow(ax, [(xb if abs(xa) > abs(xb) else xa, ya - HEIGHT / 2), (xb, yb + HEIGHT / 2)])
            elif ya - yb <= 1:
                _arrow(ax, [(xa * 0.5 + xb * 0.5, ya - HEIGHT / 2), (xb, yb + HEIGHT / 2)])
            else:
                long_edges.append((a, b))
    for a, b in long_edges:
        (xa, ya), (xb, yb) = position[a], position[b]
        side = "right" if lanes["right"] <= lanes["left"] else "left"
        sign = 1 if side == "right" else -1
        lanes[side] += 1
        lane = sign * (WIDTH / 2 + 0.18 * lanes[side])
        start = (sign * WIDTH / 2, ya + 0.12 * sign * (lanes[side] % 3 - 1) / 3)
        if yb > 0.5:
            _arrow(ax, [start, (lane, start[1]), (lane, yb), (sign * WIDTH / 2, yb)])
        else:  # into the foundation's row from above
            _arrow(ax, [start, (lane, start[1]), (lane, yb + 0.55), (xb, yb + 0.55), (xb, yb + HEIGHT / 2)])
    ax.set_xlim(-WIDTH / 2 - 2.2, WIDTH / 2 + 2.2)
    ax.set_ylim(-0.5, len(LAYERS) - 0.5)
    ax.axis("off")
    ax.set_title("cnnlab's layers, lowest first: an arrow is an import (transitive ones left out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(ROOT / "docs" / "layers.svg")
    print(f"wrote {ROOT / 'docs' / 'layers.svg'}")
