"""Time to accuracy: test accuracy against wall-clock seconds of the whole ``cnnlab train`` command, per recipe.

    python benchmarks/time_to_accuracy.py                      # seed, lenet-relu, fast, fast-long
    python benchmarks/time_to_accuracy.py --recipes fast fast-long --seeds 3
    python benchmarks/time_to_accuracy.py --resnet18-small     # also --model resnet18-small (slow)
    python benchmarks/time_to_accuracy.py --quick              # a one-minute smoke test, numbers meaningless

Each run is ``cnnlab train --recipe R --seed S --out DIR --no-progress`` in a fresh process (``--model M``
for the models without a named recipe), timed from start to exit, so Python's start, imports, data loading
and the final test pass all count. Each epoch's ``val_acc`` in the run's ``metrics.jsonl`` is the accuracy on
the 10k test split (what ``cnnlab train`` validates on); an epoch's time is the running sum of the per-epoch
``seconds`` (or the ``elapsed`` column where the trainer writes one) plus the command's time outside the
epochs (start-up and the final pass), all of it counted before the first epoch, so each point is an upper
bound on when that accuracy was reached. The last point of a line is the command's exit and the "test
accuracy" line it printed.

The figure (default benchmarks/results/time_to_accuracy.png) has one line per recipe (the seed with the
median final accuracy); the table lists every run with the CPU, torch version and load averages. Times mean
little on a busy machine: run it on a quiet one (load average well under the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.bench import cpu_name, load_average

# What each line of the figure runs: a named recipe, or a model with its own defaults.
TARGETS = {
    "seed": ["--recipe", "seed"],
    "lenet-relu": ["--model", "lenet-relu"],
    "fast": ["--recipe", "fast"],
    "fast-long": ["--recipe", "fast-long"],
    "resnet18-small": ["--model", "resnet18-small"],
}
DEFAULT = ("seed", "lenet-relu", "fast", "fast-long")
MULTI_SEED = ("fast", "fast-long")  # the recipes whose goals are stated over 3 seeds
GOALS = {"fast": (0.930, 300.0), "fast-long": (0.940, 900.0)}  # (test accuracy, wall seconds), issue #18
QUICK = ["--epochs", "1", "--num-train", "2000", "--num-val", "1000"]
RESULTS = Path(__file__).parent / "results"


def run_one(name: str, seed: int, extra: list[str], keep: Path | None) -> dict:
    """One timed ``cnnlab train`` command: wall seconds, final test accuracy and per-epoch points."""
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep / f"{name}-seed{seed}") if keep else Path(tmp) / "run"
        command = [sys.executable, "-m", "cnnlab", "train", *TARGETS[name], "--seed", str(seed), "--out",
                   str(out), "--no-progress", *extra]
        load_before = load_average()
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"`{' '.join(command)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    matches = re.findall(r"^test accuracy ([0-9.]+)", proc.stdout, flags=re.MULTILINE)
    if not matches:
        raise SystemExit(f"no 'test accuracy' line in the output of `{' '.join(command)}`:\n{proc.stdout}")
    if rows and "elapsed" in rows[0]:
        elapsed = [float(r["elapsed"]) for r in rows]
    else:
        elapsed, total = [], 0.0
        for r in rows:
            total += float(r["seconds"])
            elapsed.append(total)
    outside = max(0.0, wall - (elapsed[-1] if elapsed else 0.0))
    return {"recipe": name, "seed": seed, "test_acc": float(matches[-1]), "wall_s": wall,
            "epochs": len(rows), "outside_epochs_s": outside,
            "points": [(outside + t, float(r["val_acc"])) for t, r in zip(elapsed, rows, strict=True)],
            "load_before": load_before, "load_after": load_average(), "command": " ".join(command)}


def plot(results: list[dict], path: Path, title: str, zoom: bool = True) -> None:
    from matplotlib.figure import Figure  # as cnnlab.visual.plotting: no pyplot, no display needed

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = sorted((r for r in results if r["recipe"] == name), key=lambda r: r["test_acc"])
        run = runs[len(runs) // 2]  # the median seed
        xs = [0.0, *(x for x, _ in run["points"]), run["wall_s"]]
        ys = [0.1, *(y for _, y in run["points"]), run["test_acc"]]  # 0.1: chance, before any training
        label = f"{name} ({run['test_acc']:.4f} in {run['wall_s']:.0f} s" + (
            f", median of {len(runs)} seeds)" if len(runs) > 1 else ")")
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    for name, (acc, seconds) in GOALS.items():
        if any(r["recipe"] == name for r in results):
            ax.plot([seconds], [acc], marker="*", markersize=12, linestyle="none", color="gray")
            ax.annotate(f"{name} goal", (seconds, acc), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("wall-clock seconds of the whole command")
    ax.set_ylabel("test accuracy (10k test images)")
    if zoom:  # the region the recipes compete in; epoch-1 points of slow starters fall below it
        ax.set_ylim(0.7, 0.96)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", choices=sorted(TARGETS), default=list(DEFAULT))
    p.add_argument("--resnet18-small", action="store_true", help="add --model resnet18-small (long)")
    p.add_argument("--seeds", type=int, help=f"seeds per line (default 3 for {', '.join(MULTI_SEED)}, 1 for others)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: adds {' '.join(QUICK)}, one seed each")
    p.add_argument("--plot", type=Path, default=RESULTS / "time_to_accuracy.png")
    p.add_argument("--json", type=Path, default=None, help="also write every run as JSON here "
                   "(default: next to the plot, same name .json)")
    p.add_argument("--keep-runs", type=Path, help="keep the run folders under this folder")
    p.add_argument("extra", nargs="*", help="after --: more cnnlab train options for every run")
    args = p.parse_args(argv)
    names = list(args.recipes) + (["resnet18-small"] if args.resnet18_small and "resnet18-small" not in
                                  args.recipes else [])
    extra = (QUICK if args.quick else []) + list(args.extra)
    cpu, version = cpu_name(), torch.__version__
    print(f"{cpu}; {os.cpu_count()} CPUs; torch {version}; load average {load_average()} at start"
          + ("; QUICK mode, the numbers mean nothing" if args.quick else ""), flush=True)
    results = []
    for name in names:
        seeds = args.seeds if args.seeds is not None else (3 if name in MULTI_SEED and not args.quick else 1)
        for seed in range(seeds):
            r = run_one(name, seed, extra, args.keep_runs)
            results.append(r)
            print(f"{name:<15} seed {seed}  test acc {r['test_acc']:.4f}  {r['wall_s']:7.1f} s wall "
                  f"({r['epochs']} epochs, {r['outside_epochs_s']:.1f} s outside them)  load "
                  f"{r['load_before']} -> {r['load_after']}", flush=True)
    print("\n| recipe | seed | test acc | wall s | CPU | torch | load average before -> after |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['seed']} | {r['test_acc']:.4f} | {r['wall_s']:.1f} | {cpu} | {version} | "
              f"{r['load_before']} -> {r['load_after']} |")
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = [r for r in results if r["recipe"] == name]
        accs, walls = [r["test_acc"] for r in runs], [r["wall_s"] for r in runs]
        line = (f"{name}: mean test acc {statistics.mean(accs):.4f} (min {min(accs):.4f}), "
                f"wall {statistics.mean(walls):.1f} s (max {max(walls):.1f} s) over {len(runs)} seed(s)")
        if name in GOALS and not args.quick:
            acc, seconds = GOALS[name]
            ok = statistics.mean(accs) >= acc and min(accs) >= acc - 0.003 and max(walls) <= seconds
            line += f"; goal >= {acc} (no seed below {acc - 0.003:.3f}) in <= {seconds:.0f} s: " + (
                "met" if ok else "MISSED")
        print(line)
    title = f"{cpu}, {os.cpu_count()} CPUs, torch {version}" + (" (QUICK: meaningless)" if args.quick else "")
    plot(results, args.plot, title, zoom=not args.quick)
    json_path = args.json or args.plot.with_suffix(".json")
    json_path.write_text(json.dumps({"cpu": cpu, "torch": version, "quick": args.quick, "extra": extra,
                                     "runs": results}, indent=1) + "\n")
    print(f"figure: {args.plot}; runs: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
