"""Your own images: ``cnnlab train --images DIR`` (the whole command, wall time) against an RBF SVM and the linear
baseline on the raw pixels, on every set of the generated collection (``tests/image_sets.py``; issue 23).

The SVM is scikit-learn's ``SVC(gamma="scale")`` on pixels scaled to [0, 1], its C chosen from 1, 10, 100 by
3-fold cross-validation on the training images only; the linear baseline is cnnlab's own (the command prints
it). Writes a Markdown table to stdout and ``benchmarks/results/own_images.json``, with the CPU, torch, the
threads and the load average before and after each command.

    python benchmarks/own_images.py [--sets digits-8 photos-32] [--work /tmp/own-images]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from image_sets import SETS, load_set, write_set  # noqa: E402


def svm_accuracy(name: str) -> tuple[float, float, int]:
    """(test accuracy, seconds, chosen C) of the RBF SVM on set ``name``'s raw pixels."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    train_x, train_y, test_x, test_y, _ = load_set(name)
    start = time.perf_counter()
    X, Xt = train_x.reshape(len(train_x), -1) / 255, test_x.reshape(len(test_x), -1) / 255
    search = GridSearchCV(SVC(gamma="scale"), {"C": [1, 10, 100]}, cv=3).fit(X, train_y)
    return float(search.score(Xt, test_y)), time.perf_counter() - start, search.best_params_["C"]


def run_cnnlab(folder: Path, out: Path) -> dict:
    """``cnnlab train --images folder`` as a user runs it: its wall time and the figures of its last lines."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--images", str(folder), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"cnnlab train failed on {folder}:\n{text[-2000:]}")
    acc = float(re.search(r"^test accuracy ([0-9.]+)", text, re.M).group(1))
    base = float(re.search(r"^linear baseline on the raw pixels: test accuracy ([0-9.]+)", text, re.M).group(1))
    plan = re.search(r"^automatic recipe: (.*)$", text, re.M).group(1)
    return {"cnn": acc, "linear": base, "seconds": seconds, "plan": plan, "load_before": load_before,
            "load_after": os.getloadavg()[0], "warning": "warning:" in text}


def main(argv=None) -> int:
    import torch

    from cnnlab.bench import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--work", default="/tmp/own-images", help="where the sets and runs are written")
    parser.add_argument("--json", default=str(HERE / "results" / "own_images.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    rows = []
    print("| set | train / test images | `cnnlab train --images DIR` | s (whole command) | RBF SVM | "
          "linear (cnnlab) | CNN - SVM | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        folder = write_set(name, work / name)
        train_x, _, test_x, _, _ = load_set(name)
        svm, svm_s, c = svm_accuracy(name)
        run = run_cnnlab(folder, work / f"run-{name}")
        row = {"set": name, "train": len(train_x), "test": len(test_x), "svm": svm, "svm_seconds": svm_s,
               "svm_C": c, **run}
        rows.append(row)
        print(f"| {name} | {row['train']:,} / {row['test']:,} | {run['cnn']:.3f} | {run['seconds']:.0f} | "
              f"{svm:.3f} | {run['linear']:.3f} | {run['cnn'] - svm:+.3f} | {run['load_before']:.1f} / "
              f"{run['load_after']:.1f} |", flush=True)
    result = {"cpu": cpu_name(), "torch": torch.__version__, "cores": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']}, torch {result['torch']}, {result['cores']} cores, OMP_NUM_THREADS="
          f"{result['omp_num_threads']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
