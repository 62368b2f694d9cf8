"""Tune training recipes honestly: train on 54k training images, score a held-out 6k validation split.

    python benchmarks/tune_recipes.py --recipe fast --epochs 8 --name fast-e8
    python benchmarks/tune_recipes.py --recipe fast --model fastnet --widths 32,64,128 --epochs 8

The validation split is carved from the 60,000 *training* images: per class, a seeded (``--split-seed``,
default 0) random 10% (600 of each class's 6,000, so 6,000 in all;
:func:`cnnlab.data.batching.stratified_split`) go to validation, the rest (54,000) to training. The test set is
never scored here; choose settings on these numbers, then score the test set once with
``cnnlab train --recipe R`` (which trains on all 60k).

Every option left unset takes the recipe's value (``--recipe``), then the model's defaults, as
``cnnlab train`` does (:func:`cnnlab.recipes.resolve_config`). The run uses ``--threads`` threads (default 1:
other jobs share the machine, and accuracy per epoch does not depend on the thread count). Each epoch prints
validation accuracy (also with horizontal-flip averaging when ``--tta-flip``), images/s and the load average;
the whole run is appended as one JSON line to ``--results`` (default benchmarks/results/tuning.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cnnlab import __version__ as cnnlab_version
from cnnlab.bench import cpu_name, load_average
from cnnlab.data.batching import stratified_split
from cnnlab.recipes import TrainConfig, build_data, build_model, make_optimizer, make_scheduler, resolve_config
from cnnlab.training import Display, Optimization, Speed, Trainer
from cnnlab.training.runtime import pick_device

RESULTS = Path(__file__).parent / "results" / "tuning.jsonl"


def split_data(data, fraction: float, seed: int, num_train: int | None = None):
    """Replace ``data``'s validation set (the test split) by a stratified split of its training images.

    The split is :func:`cnnlab.data.batching.stratified_split`'s (``cnnlab train --val-split``'s), seeded by
    ``seed`` alone, so that runs with different training seeds are scored on the same validation images.
    """
    images, labels = data.train_images, data.train_labels
    train_idx, val_idx = stratified_split(labels, fraction, seed)
    if num_train is not None:  # a quick smoke run: a prefix of the (file-ordered) training part
        train_idx = train_idx[:num_train]
    data.val_images, data.val_labels = images[val_idx].clone(), labels[val_idx].clone()
    data.train_images, data.train_labels = images[train_idx].clone(), labels[train_idx].clone()
    return data


@torch.inference_mode()
def flip_tta_accuracy(model, loader, device, autocast_dtype) -> float:
    """Accuracy of the mean of the logits on the images and on their mirror images."""
    model.eval()
    correct = count = 0
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type,
                                                                                                   enabled=False)
    for X, y in loader:
        with ctx:
            logits = model(X).float() + model(X.flip(-1)).float()
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    model.train()
    return correct / count


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=None, help="the recipe to start from (cnnlab.recipes.RECIPES)")
    p.add_argument("--model")
    p.add_argument("--widths", help="fastnet only: comma-separated widths, e.g. 32,64,128 (a harness-only knob)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=0, help="training seed (init, order, augmentation)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--num-train", type=int, help="train on only this many of the 54k (smoke tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tta-flip", action="store_true", help="also score validation with flip averaging")
    p.add_argument("--name", help="a label for the results log")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="print the results log as a markdown table and exit")
    return p.parse_args(argv)


def table(path: Path) -> str:
    """The results log as markdown: one row per run, final validation accuracy and speed."""
    lines = ["| run | model | widths | epochs | val acc | flip-avg | val acc per epoch | img/s (median) | "
             "s / epoch | threads | load average (first, last epoch) |", "|" + "---|" * 11]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        c, rows = r["config"], r["epochs"]
        flip = f"{r['val_acc_flip']:.4f}" if r.get("val_acc_flip") is not None else "-"
        per_epoch = " ".join(f"{row['val_acc']:.4f}" for row in rows)
        seconds = sorted(row["seconds"] for row in rows)[len(rows) // 2]
        lines.append(f"| {r['name']} | {c['model']} | {r['widths'] or 'default'} | {c['epochs']} | "
                     f"{r['val_acc']:.4f} | {flip} | {per_epoch} | {r['train_images_per_s_median']:,.0f} | "
                     f"{seconds:.1f} | {r['threads']} | {rows[0]['load_average']}; {rows[-1]['load_average']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.table:
        print(table(args.results))
        return 0
    torch.set_num_threads(args.threads)
    fields = ("model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
              "label_smoothing", "augment", "bf16", "channels_last")
    given = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    config = resolve_config(TrainConfig(seed=args.seed, progress=False, **given), args.recipe)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    data = split_data(build_data(config), args.val_fraction, args.split_seed, args.num_train)
    if args.widths:
        from cnnlab.models import create_model

        widths = tuple(int(w) for w in args.widths.split(","))
        model = create_model(config.model, num_classes=10, in_channels=1, image_size=config.image_size, lr=config.lr,
                             widths=widths)
        model.label_smoothing = config.label_smoothing
    else:
        model = build_model(config, data)
    params = sum(p.numel() for p in model.parameters())
    name = args.name or f"{args.recipe or config.model}-e{config.epochs}"
    print(f"{name}: {config.model}{' ' + args.widths if args.widths else ''} ({params:,} parameters), "
          f"{len(data.train_labels):,} train / {len(data.val_labels):,} val (split seed {args.split_seed}), "
          f"{args.threads} thread(s), bf16 {config.bf16}; load average {load_average()}", flush=True)
    rows = []

    def on_epoch_end(trainer, row):
        row = dict(row, load_average=load_average())
        if args.tta_flip:
            start = time.perf_counter()
            row["val_acc_flip"] = flip_tta_accuracy(trainer.model, trainer.val_loader, device,
                                                    trainer.speed.autocast_dtype)
            row["flip_seconds"] = time.perf_counter() - start
        rows.append(row)
        flip = f"  flip-avg {row['val_acc_flip']:.4f}" if args.tta_flip else ""
        print(f"  epoch {row['epoch']:>2}/{config.epochs}  val acc {row['val_acc']:.4f}{flip}  train loss "
              f"{row['train_loss']:.4f}  {row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s  "
              f"load {row['load_average']}", flush=True)

    trainer = Trainer(max_epochs=config.epochs, device=device, run_dir=None, seed=config.seed,
                      optimization=Optimization(make_optimizer(config), make_scheduler(config)),
                      speed=Speed(autocast_dtype=torch.bfloat16 if config.bf16 else None,
                                  channels_last=config.channels_last, compile=config.compile),
                      display=Display(progress=False, log=None, board=None), on_epoch_end=on_epoch_end)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    final = rows[-1]
    record = {
        "name": name, "recipe": args.recipe, "widths": args.widths, "config": config.to_dict(),
        "parameters": params, "split": f"stratified {args.val_fraction:.0%} of train, split seed {args.split_seed}",
        "num_train": len(data.train_labels), "num_val": len(data.val_labels), "threads": args.threads,
        "val_acc": final["val_acc"], "val_acc_flip": final.get("val_acc_flip"),
        "train_images_per_s_median": sorted(r["images_per_s"] for r in rows)[len(rows) // 2],
        "seconds": seconds, "epochs": rows, "cpu": cpu_name(), "torch": torch.__version__,
        "cnnlab": cnnlab_version, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"{name}: final val acc {final['val_acc']:.4f}"
          + (f" (flip-avg {final['val_acc_flip']:.4f})" if args.tta_flip else "")
          + f"; {seconds:.1f} s at {args.threads} thread(s); load average {load_average()}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
