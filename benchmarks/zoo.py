"""The model zoo in one table: parameters, FLOPs, and CPU training speed of cnnlab's Trainer against a plain loop.

    python benchmarks/zoo.py [--models NAME ...] [--steps 2] [--rounds 3] [--batch-size N] [--json PATH]
                             [--accuracy [--budget-minutes 20]]

For every registered model (or those named), at its recipe's input size and batch size
(``cnnlab.recipes.model_defaults``):

* parameters, and FLOPs per image: forward (as ``cnnlab summary`` counts them) and forward + backward
  (``cnnlab.bench.training_flops_per_image``), both from ``torch.utils.flop_counter``;
* training images/s of (a) cnnlab's ``Trainer`` with the model's recipe (channels_last, bf16 autocast where
  the CPU has it, batched uint8 loader, augmentation if the recipe asks) and (b) the plain PyTorch loop of
  ``cnnlab.bench`` (float tensors in memory, fp32, ``loss.item()`` every step, no augmentation). Both
  start from the same weights with the same optimizer and batch, train ``--steps`` batches per epoch (more
  for the smallest models: enough for ``--min-gflop`` of training work, at most 40 batches, so that a LeNet's
  epoch is not all per-epoch overhead), and
  alternate epoch by epoch after one untimed warm-up epoch each; the figure is the median over
  ``--rounds`` epochs, and the ratio is cnnlab's over the plain loop's.

The short epochs keep the whole table to minutes on two cores; their figures are the steady-state speed
of the training step, not a full epoch's (no per-epoch validation is counted: each epoch validates on one
small batch, outside the timed training pass).

With ``--accuracy``, every model whose full recipe is estimated to train within ``--budget-minutes`` on this
machine (its epochs x 60,000 images at the cnnlab rate just measured) is then trained as ``cnnlab train
--model NAME`` would (its recipe, all 60,000 training images, on the CPU), and the table gains its test
accuracy on the 10,000 test images in fp32: of the last epoch's weights (``last.pt``), and of ``best.pt``,
the epoch with the best per-epoch validation accuracy. Validation is the test set there, as in the book, so
the best-epoch figure is chosen on the test set; the last-epoch figure is not. The others show their
estimate instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

from cnnlab.bench import PlainLoop, cpu_name, load_average, training_flops_per_image
from cnnlab.inference.loaded import evaluate_checkpoint
from cnnlab.models import list_models
from cnnlab.nn.summary import layer_stats
from cnnlab.recipes import (
    TrainConfig,
    build_data,
    build_model,
    build_trainer,
    make_optimizer,
    resolve_config,
    run_training,
)

MAX_STEPS = 40


def measure(name: str, steps: int, rounds: int, batch_size: int | None, seed: int = 0,
            min_gflop: float = 20.0) -> dict:
    """One model's row: sizes, FLOPs, and the median training images/s of both pipelines."""
    config = resolve_config(TrainConfig(model=name, batch_size=batch_size, device="cpu", seed=seed, progress=False))
    config = replace(config, num_val=min(config.batch_size, 256))
    torch.manual_seed(seed)
    reference = build_model(config, build_data(replace(config, num_train=config.batch_size)))
    size = config.image_size
    forward = sum(s.flops for s in layer_stats(reference, (1, 1, size, size)))
    train_flops = training_flops_per_image(reference, (1, size, size), batch=2)
    steps = max(steps, min(MAX_STEPS, math.ceil(min_gflop * 1e9 / (train_flops * config.batch_size))))
    config = replace(config, num_train=steps * config.batch_size)
    data = build_data(config)

    plain_model = copy.deepcopy(reference)
    plain_opt = make_optimizer(config)(plain_model.parameters())
    plain = PlainLoop(data, config.batch_size, seed)
    # cnnlab's Trainer runs as `cnnlab train` does (deterministic kernels, set only inside its fit); the plain
    # loop under torch's defaults.
    trainer = build_trainer(replace(config, epochs=rounds + 1), "cpu", log=None)
    model = copy.deepcopy(reference)
    rates: dict[str, list[float]] = {"cnnlab": [], "plain": []}
    for round_ in range(rounds + 1):  # round 0 warms both up (allocator, oneDNN primitives)
        order = ("cnnlab", "plain") if round_ % 2 == 0 else ("plain", "cnnlab")
        for pipeline in order:
            if pipeline == "cnnlab":
                ips = trainer.fit(model, data, epochs=1)[-1]["images_per_s"]
            else:
                ips = plain.epoch(plain_model, plain_opt, None)["images_per_s"]
            if round_:
                rates[pipeline].append(ips)
    cnnlab_ips, plain_ips = statistics.median(rates["cnnlab"]), statistics.median(rates["plain"])
    return {
        "model": name, "input": size, "batch_size": config.batch_size, "epochs": config.epochs, "steps": steps,
        "bf16": config.bf16, "channels_last": config.channels_last,
        "params": sum(p.numel() for p in reference.parameters()), "forward_flops": forward,
        "train_flops": train_flops, "cnnlab_images_per_s": cnnlab_ips, "plain_images_per_s": plain_ips,
        "ratio": cnnlab_ips / plain_ips, "rates": rates,
    }


def recipe_accuracy(name: str, seed: int = 0) -> dict:
    """Train ``name`` on its full recipe on the CPU (as ``cnnlab train --model NAME``); its test accuracies."""
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as out:
        summary = run_training(resolve_config(TrainConfig(model=name, device="cpu", seed=seed, out=out,
                                                          progress=False)))
        _, last = evaluate_checkpoint(f"{out}/last.pt", summary["config"].data_dir, "cpu")
    return {"recipe_seconds": summary["seconds"],
            "test_accuracy_last": last.accuracy, "test_accuracy_best": summary["test_accuracy"]}


def estimated_minutes(row: dict, train_images: int = 60_000) -> float:
    """The recipe's training time at the measured cnnlab rate (per-epoch validation not counted)."""
    return row["epochs"] * train_images / row["cnnlab_images_per_s"] / 60


def format_rows(rows: list[dict]) -> str:
    header = (f"{'model':<18}{'input':>6}{'params':>13}{'fwd MFLOP':>11}{'train MFLOP':>13}"
              f"{'cnnlab img/s':>14}{'plain img/s':>13}{'cnnlab/plain':>14}{'cnnlab GFLOP/s':>16}")
    with_accuracy = any("estimated_minutes" in r for r in rows)
    if with_accuracy:
        header += f"{'recipe':>22}{'test acc last':>15}{'test acc best':>15}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<18}{r['input']:>6}{r['params']:>13,}{r['forward_flops'] / 1e6:>11,.1f}"
            f"{r['train_flops'] / 1e6:>13,.1f}{r['cnnlab_images_per_s']:>14,.1f}{r['plain_images_per_s']:>13,.1f}"
            f"{r['ratio']:>13.2f}x{r['cnnlab_images_per_s'] * r['train_flops'] / 1e9:>16.1f}"
            + (_accuracy_cells(r) if with_accuracy else "")
        )
    return "\n".join(lines)


def _accuracy_cells(r: dict) -> str:
    if r.get("test_accuracy_last") is None:
        return f"{'est. ' + format(r['estimated_minutes'], ',.0f') + ' min, not run':>22}{'-':>15}{'-':>15}"
    recipe = f"{r['epochs']} ep, {r['recipe_seconds'] / 60:.1f} min"
    return f"{recipe:>22}{r['test_accuracy_last']:>15.4f}{r['test_accuracy_best']:>15.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", metavar="NAME", help="registered models (default: all)")
    parser.add_argument("--steps", type=int, default=2, help="training batches per timed epoch")
    parser.add_argument("--min-gflop", type=float, default=20.0,
                        help="training work per timed epoch; small models get more batches (at most 40)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per pipeline (median reported)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: each recipe's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--accuracy", action="store_true",
                        help="also train each model's full recipe whose estimate fits --budget-minutes")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="largest estimated recipe training time to run with --accuracy (default 20)")
    args = parser.parse_args(argv)
    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    started, start = load_average(), time.perf_counter()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {started} at start", flush=True)
    print(f"{args.steps} training batches per epoch (up to {MAX_STEPS} for {args.min_gflop:g} GFLOP), median of "
          f"{args.rounds} epochs after a warm-up epoch, "
          "cnnlab and plain alternated", flush=True)
    rows = []
    for name in names:
        t = time.perf_counter()
        rows.append(measure(name, args.steps, args.rounds, args.batch_size, min_gflop=args.min_gflop))
        r = rows[-1]
        print(f"  {name}: {r['cnnlab_images_per_s']:,.1f} vs {r['plain_images_per_s']:,.1f} images/s, "
              f"{r['steps']} batches per epoch "
              f"({time.perf_counter() - t:.0f} s; load {load_average()})", flush=True)
    if args.accuracy:
        for r in rows:
            r["estimated_minutes"] = estimated_minutes(r)
            if r["estimated_minutes"] > args.budget_minutes:
                continue
            r.update(recipe_accuracy(r["model"]))
            print(f"  {r['model']}: test accuracy {r['test_accuracy_last']:.4f} (last epoch), "
                  f"{r['test_accuracy_best']:.4f} (best epoch) after {r['epochs']} epochs in "
                  f"{r['recipe_seconds']:.0f} s (estimate {r['estimated_minutes'] * 60:.0f} s; load "
                  f"{load_average()})", flush=True)
    ended = load_average()
    print()
    print(format_rows(rows))
    fp32 = [r["model"] for r in rows if not r["bf16"]]
    print(f"\nbatch: each recipe's ({', '.join(sorted({str(r['batch_size']) for r in rows}))}); bf16 autocast in "
          f"cnnlab: {'off for ' + ', '.join(fp32) if fp32 else 'on'}"
          f"{'' if len(fp32) in (0, len(rows)) else ', on for the others'}; load average {started} at start, {ended} "
          f"at end; {time.perf_counter() - start:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average_start": started, "load_average_end": ended, "rows": rows}, f, indent=2)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
