"""Training speed: the book's pipeline, a plain PyTorch loop and cnnlab's Trainer, side by side.

    python benchmarks/train.py [--model lenet] [--epochs 3] [--image-size N] [--max-steps N] [--json PATH]
    python benchmarks/train.py --techniques [--model lenet] [--steps 150] [--only NAME ...]
    python benchmarks/train.py --profile [--model lenet] [--steps 50]

The first form is ``cnnlab bench`` (see :mod:`cnnlab.bench`). ``--techniques`` times cnnlab's Trainer with
one setting changed at a time against its current recipe (training images/s over ``--steps`` steps and
validation images/s, each the median of three epochs after a warm-up epoch, variants interleaved round by
round so that a change in the machine's load hits them alike). ``--profile`` prints torch.profiler's table
of the Trainer's training steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

from cnnlab.bench import add_arguments, load_average, run
from cnnlab.training.runtime import eval_batch_size


def _optimizer(config, kind: str):
    """SGD as the recipe configures it, with its kernels chosen: 'loop', 'foreach' or 'fused'."""
    kwargs = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
    momentum = dict(momentum=config.momentum, nesterov=True) if config.optimizer == "momentum" else {}

    def build(params):
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay, **momentum, **kwargs)

    return build


# name -> what it changes; each is applied alone on top of the model's recipe.
TECHNIQUES = {
    "recipe": {},
    "channels_last on": dict(channels_last=True),
    "channels_last off": dict(channels_last=False),
    "bf16 autocast on": dict(bf16=True),
    "bf16 autocast off": dict(bf16=False),
    "1 thread": dict(threads=1),
    "oneDNN off": dict(mkldnn=False),
    "not deterministic": dict(deterministic=False),
    "SGD for-loop": dict(optimizer="loop"),
    "SGD fused": dict(optimizer="fused"),
    "torch.compile": dict(compile=True),
    "val batch 1024": dict(val_batch_size=1024),
    "channels_last + bf16": dict(channels_last=True, bf16=True),
    "channels_last + compile": dict(channels_last=True, compile=True),
    "cl + bf16 + compile": dict(channels_last=True, bf16=True, compile=True),
}


class _Variant:
    """One technique's Trainer, kept across rounds so each round times one more epoch of it."""

    def __init__(self, name: str, change: dict, config, steps: int, num_val: int, rounds: int):
        from cnnlab.data.fashion_mnist import FashionMNIST
        from cnnlab.recipes import build_model, make_optimizer, make_scheduler
        from cnnlab.training import Display, Optimization, Speed, Trainer

        self.name, self.change = name, change
        config = replace(config, **{k: change[k] for k in ("channels_last", "bf16") if k in change})
        self.data = FashionMNIST(batch_size=config.batch_size, resize=config.image_size, normalize=config.normalize,
                                 augment=config.augment, seed=config.seed,
                                 num_train=min(60_000, steps * config.batch_size), num_val=num_val,
                                 val_batch_size=change.get("val_batch_size", eval_batch_size("cpu")))
        torch.manual_seed(config.seed)
        self.model = build_model(config, self.data)
        optimizer = _optimizer(config, change["optimizer"]) if "optimizer" in change else make_optimizer(config)
        # Deterministic kernels as `cnnlab train` runs (seeded, on the CPU) unless the variant turns them off;
        # the Trainer sets them only inside its fit.
        speed = Speed(autocast_dtype=torch.bfloat16 if config.bf16 else None, channels_last=config.channels_last,
                      compile=change.get("compile", False), deterministic=change.get("deterministic"))
        self.trainer = Trainer(max_epochs=rounds + 1, device="cpu", seed=config.seed,
                               optimization=Optimization(optimizer, make_scheduler(config)), speed=speed,
                               display=Display(progress=False, log=None))
        self.rows: list[dict] = []
        self.first_seconds = None

    @contextlib.contextmanager
    def settings(self):
        """The variant's thread count and oneDNN switch, put back afterwards."""
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.change.get("threads", threads))
            with torch.backends.mkldnn.flags(enabled=self.change.get("mkldnn", True)):
                yield
        finally:
            torch.set_num_threads(threads)

    def epoch(self) -> None:
        with self.settings():
            start = time.perf_counter()
            row = self.trainer.fit(self.model, self.data, epochs=1)[-1]
            if self.first_seconds is None:
                self.first_seconds = time.perf_counter() - start
                return
        n_val = len(self.data.val_labels)
        train_s = len(self.data.train_labels) / row["images_per_s"]
        self.rows.append({**row, "val_images_per_s": n_val / max(row["seconds"] - train_s, 1e-9)})


def techniques(args) -> int:
    from cnnlab.recipes import TrainConfig, resolve_config

    config = resolve_config(TrainConfig(model=args.model, image_size=args.image_size, device="cpu", progress=False))
    names = args.only or list(TECHNIQUES)
    unknown = sorted(set(names) - set(TECHNIQUES))
    if unknown:
        raise SystemExit(f"unknown technique(s) {unknown}; known: {', '.join(TECHNIQUES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"load average {load_average()} at start")
    print(f"{args.model} recipe: channels_last={config.channels_last}, bf16={config.bf16}, "
          f"{config.optimizer} (foreach), batch {config.batch_size}, {config.image_size}x{config.image_size}; "
          f"{args.steps} steps per epoch, validation on {args.num_val:,} images in batches of "
          f"{eval_batch_size('cpu')}")
    variants = [_Variant(name, TECHNIQUES[name], config, args.steps, args.num_val, args.rounds) for name in names]
    for _ in range(args.rounds + 1):  # the first round is the warm-up (and compile) epoch
        for variant in variants:
            variant.epoch()
    base = statistics.median(r["images_per_s"] for r in variants[0].rows)
    print(f"{'technique':<28}{'train img/s':>12}{'vs ' + names[0]:>12}{'val img/s':>11}{'1st epoch s':>12}"
          f"{'loss':>8}")
    for v in variants:
        ips = statistics.median(r["images_per_s"] for r in v.rows)
        vps = statistics.median(r["val_images_per_s"] for r in v.rows)
        print(f"{v.name:<28}{ips:>12,.0f}{ips / base:>11.2f}x{vps:>11,.0f}{v.first_seconds:>12.2f}"
              f"{v.rows[-1]['train_loss']:>8.4f}")
    print(f"load average {load_average()} at end")
    return 0


def profile(args) -> int:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from cnnlab.recipes import TrainConfig, resolve_config

    config = resolve_config(TrainConfig(model=args.model, image_size=args.image_size, device="cpu", progress=False))
    print(f"load average {load_average()}; {args.model}, {torch.get_num_threads()} threads")
    variant = _Variant("recipe", {}, config, args.steps, 1024, rounds=1)
    variant.epoch()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.epoch()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"load average {load_average()} at end")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--techniques", action="store_true", help="time each technique alone (see above)")
    parser.add_argument("--profile", action="store_true", help="profile cnnlab's training steps")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"techniques to time: {', '.join(TECHNIQUES)}")
    parser.add_argument("--steps", type=int, default=150, help="steps per epoch for --techniques/--profile")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per technique")
    parser.add_argument("--rows", type=int, default=25, help="rows of the profile table")
    args = parser.parse_args(argv)
    if args.techniques or args.profile:
        args.num_val = args.num_val or 2048
        return techniques(args) if args.techniques else profile(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
