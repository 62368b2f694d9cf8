"""Draw docs/zoo_speed.png from benchmarks/results/zoo.json: each model's training images/s, cnnlab against a plain
fp32 loop, on the machine that `python benchmarks/zoo.py --json ...` ran on (named in the title).

Usage: ``python scripts/plot_zoo.py`` (matplotlib only; reads the JSON, measures nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def draw(results: Path, out: Path) -> None:
    run = json.loads(results.read_text())
    rows = sorted(run["rows"], key=lambda row: row["cnnlab_images_per_s"])
    names = [f"{row['model']} ({row['input']}px)" for row in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.barh([i + 0.2 for i in y], [row["cnnlab_images_per_s"] for row in rows], height=0.4, label="cnnlab Trainer")
    ax.barh([i - 0.2 for i in y], [row["plain_images_per_s"] for row in rows], height=0.4, label="plain fp32 loop")
    for i, row in zip(y, rows, strict=True):
        ax.text(row["cnnlab_images_per_s"] * 1.08, i + 0.2, f"{row['ratio']:.2f}x", va="center", fontsize=7)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training images/s (log scale; median of 3 timed epochs)")
    ax.set_title(f"The model zoo on {run['cpu']}, {run['threads']} threads, torch {run['torch']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    draw(ROOT / "benchmarks" / "results" / "zoo.json", ROOT / "docs" / "zoo_speed.png")
    print(f"wrote {ROOT / 'docs' / 'zoo_speed.png'}")
