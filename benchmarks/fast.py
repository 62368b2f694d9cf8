"""Time to accuracy: the whole ``cnnlab train --recipe fast`` command, wall clock, and its test accuracy.

    python benchmarks/fast.py [--runs 1] [--seed 0] [-- extra cnnlab train options]

Runs the command in a fresh process (so Python's start, imports and data loading count), on the full 60,000
training and 10,000 test images, and prints its wall time and final test accuracy against the goal (>= 0.92
in <= 5 minutes on a 2-core CPU), with the load average before and after: on a busy machine the times mean
little. Options after ``--`` go to ``cnnlab train`` (e.g. ``-- --epochs 4`` to search quickly).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

GOAL_ACCURACY, GOAL_SECONDS = 0.92, 300.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_run(seed: int, extra: list[str]) -> tuple[float, float, str]:
    """Wall seconds and test accuracy of one ``cnnlab train --recipe fast`` run, and its output."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "cnnlab", "train", "--recipe", "fast", "--seed", str(seed),
                   "--no-progress", "--out", os.path.join(out, "run"), *extra]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({proc.returncode}):\n{proc.stderr}")
    match = re.search(r"test accuracy ([0-9.]+)", proc.stdout)
    if match is None:
        raise SystemExit(f"no test accuracy in the output of `{' '.join(command)}`:\n{proc.stdout}")
    return seconds, float(match.group(1)), proc.stdout


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed + 1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="do not echo the per-epoch lines")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    print(f"cnnlab train --recipe fast {' '.join(extra)}".rstrip() + f"; {os.cpu_count()} CPUs; load average "
          f"{load_average()} at start", flush=True)
    results = []
    for run in range(args.runs):
        seconds, accuracy, output = one_run(args.seed + run, extra)
        if not args.quiet:
            print("\n".join(line for line in output.splitlines() if line.startswith("epoch")))
        verdict = "meets" if accuracy >= GOAL_ACCURACY and seconds <= GOAL_SECONDS else "misses"
        print(f"seed {args.seed + run}: {seconds:.1f} s wall, test accuracy {accuracy:.4f} ({verdict} the goal of "
              f">= {GOAL_ACCURACY} in <= {GOAL_SECONDS:.0f} s); load average {load_average()}", flush=True)
        results.append((seconds, accuracy))
    if args.runs > 1:
        print(f"median of {args.runs}: {statistics.median(s for s, _ in results):.1f} s, test accuracy "
              f"{statistics.median(a for _, a in results):.4f} (min {min(a for _, a in results):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
