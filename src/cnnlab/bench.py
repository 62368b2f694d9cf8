"""Training speed side by side: the book's pipeline, a plain PyTorch loop and cnnlab's Trainer (``cnnlab bench``).

    cnnlab bench [--model lenet] [--epochs 3] [--image-size N] [--max-steps N] [--json results.json]

All three train the same model from the same initial weights with the same optimizer, schedule and batch
size, one epoch each in turn (book, plain, cnnlab, book, plain, ...), so a change in the machine's load hits
all of them alike:

* **book**: d2l 1.0.3's ``Trainer`` and ``FashionMNIST`` (d2l §3.4, §4.2): a map-style ``Dataset`` that
  turns one uint8 image at a time into a float tensor (``ToTensor``; resized alone when asked), a
  ``DataLoader(shuffle=True, num_workers=4)``, ``loss.item()`` every step (d2l's ``plot`` reads every loss),
  and a validation pass over the test set with the training batch size and a ``.item()`` per batch. The
  plotting itself is left out. (torchvision's PIL path costs more per image than this, so the baseline is,
  if anything, flattered.)
* **plain**: the loop most PyTorch code has: the split converted to float once and kept in memory, batches
  indexed from a ``randperm``, ``loss.item()`` every step, validation under ``no_grad`` (no augmentation).
* **cnnlab**: :func:`cnnlab.recipes.run_training`, exactly what ``cnnlab train`` runs with the model's recipe.

An epoch's time is its training pass plus its validation pass; the table shows medians over epochs, the
images per second of the training pass, the final test accuracy, and the training FLOP/s against this
machine's fp32 matmul FLOP/s measured in the same run. The FLOPs per training image are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward pass.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.fashion_mnist import MEAN, STD
from cnnlab.errors import ConfigError
from cnnlab.training.evaluation import evaluate

__all__ = ["BookDataset", "add_arguments", "compare", "main", "matmul_flops", "training_flops_per_image"]

_PAD = 2  # random-crop padding, as cnnlab's loader


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: timings mean little when they exceed the core count."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_flops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5,
                 device: torch.device | str = "cpu") -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matmul (``2 n^3`` FLOPs), the median of ``repeats`` after a warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def training_flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int], batch: int = 8) -> float:
    """FLOPs of one forward and backward pass per image, as ``FlopCounterMode`` counts them (on a copy)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).cpu().train()
    X = torch.rand(batch, *image_shape)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        model.loss(model(X), y).backward()
    return counter.get_total_flops() / batch


class BookDataset(Dataset):
    """d2l's data path: one uint8 image per ``__getitem__`` turned into a float tensor, as ``ToTensor`` does.

    Resized alone with ``F.interpolate(antialias=True)`` (as ``transforms.Resize``) when ``image_size`` differs from
    28, standardized when ``normalize``, and randomly cropped and flipped when ``augment``.

    Shape:
        Item ``i``: ``(1, image_size, image_size)`` float32 and a 0-dim int64 label.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int = 28, normalize: bool = False,
                 augment: bool = False):
        self.images, self.labels = images, labels
        self.image_size, self.normalize, self.augment = image_size, normalize, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.augment:
            dy, dx = torch.randint(0, 2 * _PAD + 1, (2,)).tolist()
            x = F.pad(x, (_PAD, _PAD, _PAD, _PAD))[dy:dy + 28, dx:dx + 28]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = x.to(torch.float32).div(255).unsqueeze(0)  # (1, 28, 28) in [0, 1], as ToTensor()
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        if self.normalize:
            x = (x - MEAN) / STD
        return x, self.labels[i]


def _book_epoch(model, optimizer, scheduler, train_loader, val_loader) -> dict:
    """One epoch of d2l's ``Trainer.fit_epoch``: a host sync on every training and validation step."""
    model.train()
    start = time.perf_counter()
    seen = 0
    for X, y in train_loader:
        loss = model.loss(model(X), y)
        loss.item()  # d2l's Module.plot reads every training loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen += len(y)
    train_s = time.perf_counter() - start
    model.eval()
    correct = count = 0
    with torch.no_grad():
        for X, y in val_loader:
            Y_hat = model(X)
            model.loss(Y_hat, y).item()  # plotted validation loss
            correct += int(model.accuracy(Y_hat, y, averaged=False).sum().item())
            count += len(y)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_seconds": train_s, "images_per_s": seen / train_s,
            "val_acc": correct / count}


class PlainLoop:
    """The usual hand-written loop over float tensors held in memory (converted once, before timing)."""

    def __init__(self, data, batch_size: int, seed: int):
        normalize = (MEAN, STD) if data.normalize else None
        self.X, self.y = _to_float(data.train_images, data.image_size, normalize), data.train_labels
        self.X_val, self.y_val = _to_float(data.val_images, data.image_size, normalize), data.val_labels
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self, model, optimizer, scheduler) -> dict:
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.y), generator=self.generator)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            loss = model.loss(model(self.X[idx]), self.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss.item()  # the running loss most loops print
        train_s = time.perf_counter() - start
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.y_val), self.batch_size):
                Y_hat = model(self.X_val[i:i + self.batch_size])
                correct += int((Y_hat.argmax(1) == self.y_val[i:i + self.batch_size]).sum())
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "train_seconds": train_s, "images_per_s": len(self.y) / train_s,
                "val_acc": correct / len(self.y_val)}


def _to_float(images: torch.Tensor, size: tuple[int, int], normalize) -> torch.Tensor:
    out = []
    for chunk in images.split(4096):
        x = chunk.unsqueeze(1).float().div(255)  # (M, 1, 28, 28)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if normalize is not None:
            x = (x - normalize[0]) / normalize[1]
        out.append(x)
    return torch.cat(out)


def compare(model: str = "lenet", epochs: int = 3, image_size: int | None = None, max_steps: int | None = None,
            num_val: int | None = None, seed: int = 0, book_workers: int = 4, plain: bool = True,
            data_dir: str | None = None, log=print) -> dict:
    """Train ``model`` by the book's pipeline, a plain loop and cnnlab's Trainer, one epoch of each in turn.

    Args:
        model: a registered model name; its recipe (``cnnlab.recipes``) sets optimizer, schedule and sizes.
        epochs: epochs of each pipeline.
        image_size: input side in pixels (default: the recipe's).
        max_steps: train on the first ``max_steps * batch_size`` images only (for big models).
        num_val: validate on the first ``num_val`` test images (default all, or 2,048 with ``max_steps``).
        seed: seed of the initial weights (the same for all three) and of cnnlab's run.
        book_workers: ``num_workers`` of the book's DataLoaders (d2l uses 4).
        plain: also time the plain loop.
        data_dir: folder holding the Fashion-MNIST files.
        log: where progress lines go (None for silence).

    Returns:
        A dict of settings, machine figures and, per pipeline, its per-epoch rows and medians.
    """
    from cnnlab import recipes

    say = log or (lambda _: None)
    config = recipes.resolve_config(recipes.TrainConfig(model=model, epochs=epochs, image_size=image_size, seed=seed,
                                                        device="cpu", data_dir=data_dir, progress=False))
    if max_steps is not None:
        config = replace(config, num_train=max_steps * config.batch_size)
        num_val = num_val or 2048
    config = replace(config, num_val=num_val)
    started = load_average()
    fp32 = matmul_flops()
    bf16 = matmul_flops(dtype=torch.bfloat16)
    data = recipes.build_data(config)
    torch.manual_seed(config.seed)
    reference = recipes.build_model(config, data)
    flops = training_flops_per_image(reference, (1, *data.image_size))
    rows: dict[str, list[dict]] = {"book": [], "plain": [], "cnnlab": []}
    steps_per_epoch = -(-len(data.train_labels) // config.batch_size)

    def competitor():
        model_ = copy.deepcopy(reference)
        optimizer = recipes.make_optimizer(config)(model_.parameters())
        scheduler_factory = recipes.make_scheduler(config)
        scheduler = scheduler_factory(optimizer, steps_per_epoch, epochs) if scheduler_factory else None
        return model_, optimizer, scheduler

    book = competitor()
    book_data = BookDataset(data.train_images, data.train_labels, data.image_size[0], config.normalize,
                            config.augment)
    book_val = BookDataset(data.val_images, data.val_labels, data.image_size[0], config.normalize)
    book_train_loader = DataLoader(book_data, config.batch_size, shuffle=True, num_workers=book_workers)
    book_val_loader = DataLoader(book_val, config.batch_size, shuffle=False, num_workers=book_workers)
    plain_run = competitor() if plain else None
    plain_loop = PlainLoop(data, config.batch_size, seed) if plain else None

    # One epoch of each pipeline in turn, so that a change in the machine's load hits them alike. cnnlab's
    # Trainer sets torch's flags (deterministic kernels, as `cnnlab train` runs) only inside its fit; the
    # others run under torch's defaults, as the book's code does.
    with tempfile.TemporaryDirectory() as out:
        net = copy.deepcopy(reference)  # the same initial weights as the others
        trainer = recipes.build_trainer(config, "cpu", out, log=None)
        for epoch in range(epochs):
            row = trainer.fit(net, data, epochs=1)[-1]
            rows["cnnlab"].append({**row, "train_seconds": len(data.train_labels) / row["images_per_s"]})
            rows["book"].append(_book_epoch(*book, book_train_loader, book_val_loader))
            if plain_loop is not None:
                rows["plain"].append(plain_loop.epoch(*plain_run))
            say(f"epoch {epoch + 1}/{epochs}: " + "  ".join(
                f"{name} {r[-1]['seconds']:.2f} s ({r[-1]['val_acc']:.4f})" for name, r in rows.items() if r))
        test_accuracy = evaluate(net, data.val_dataloader()).accuracy
    ended = load_average()
    result = {
        "model": model, "config": config.to_dict(), "epochs": epochs, "images_per_epoch": len(data.train_labels),
        "val_images": len(data.val_labels), "flops_per_image": flops, "matmul_fp32_flops": fp32,
        "matmul_bf16_flops": bf16, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_name(), "cpus": os.cpu_count(), "load_average_start": started, "load_average_end": ended,
        "cnnlab_test_accuracy": test_accuracy, "pipelines": {},
    }
    for name, epochs_rows in rows.items():
        if not epochs_rows:
            continue
        seconds = statistics.median(r["seconds"] for r in epochs_rows)
        ips = statistics.median(r["images_per_s"] for r in epochs_rows)
        result["pipelines"][name] = {
            "epochs": epochs_rows, "seconds": seconds, "first_epoch_seconds": epochs_rows[0]["seconds"],
            "images_per_s": ips, "val_acc": epochs_rows[-1]["val_acc"], "train_flops": ips * flops,
        }
    return result


def format_result(result: dict) -> str:
    """The comparison as a text table, with the machine and load averages it was measured under."""
    config = result["config"]
    p = result["pipelines"]
    lines = [
        f"{result['model']} at {config['image_size']}x{config['image_size']}, batch {config['batch_size']}, "
        f"{config['optimizer']} lr {config['lr']}, {config['schedule']} schedule, {result['epochs']} epochs of "
        f"{result['images_per_epoch']:,} images (validation on {result['val_images']:,}), seed {config['seed']}",
        f"torch {result['torch']}, {result['threads']} threads, {result['cpus']} CPUs ({result['cpu']}); "
        f"load average {result['load_average_start']} at start, {result['load_average_end']} at end",
        f"matmul 2048x2048: fp32 {result['matmul_fp32_flops'] / 1e9:.0f} GFLOP/s, bf16 "
        f"{result['matmul_bf16_flops'] / 1e9:.0f} GFLOP/s (median of 5); training FLOPs per image "
        f"(FlopCounterMode, forward+backward): {result['flops_per_image'] / 1e6:.2f} MFLOP",
        "",
        f"{'pipeline':<10}{'epoch s':>9}{'1st epoch':>11}{'train s':>9}{'images/s':>10}{'test acc':>10}"
        f"{'GFLOP/s':>9}{'of fp32 mm':>12}{'speed-up':>10}",
    ]
    base = p["book"]["seconds"]
    for name, r in p.items():
        train_s = statistics.median(e["train_seconds"] for e in r["epochs"])
        lines.append(
            f"{name:<10}{r['seconds']:>9.2f}{r['first_epoch_seconds']:>11.2f}{train_s:>9.2f}"
            f"{r['images_per_s']:>10,.0f}{r['val_acc']:>10.4f}{r['train_flops'] / 1e9:>9.1f}"
            f"{r['train_flops'] / result['matmul_fp32_flops']:>12.1%}{base / r['seconds']:>9.2f}x"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``cnnlab bench`` (and ``benchmarks/train.py``)."""
    parser.add_argument("--model", default="lenet", help="registered model name (its recipe sets the rest)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each pipeline (median reported)")
    # --resize: the older name, still accepted (as by `cnnlab train`).
    parser.add_argument("--image-size", "--resize", dest="image_size", type=int,
                        help="input side in pixels (default: the recipe's)")
    parser.add_argument("--max-steps", type=int, help="steps per epoch: train on max_steps * batch images")
    parser.add_argument("--num-val", type=int, help="validation images (default all; 2,048 with --max-steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--book-workers", type=int, default=4, help="num_workers of the book's DataLoader")
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain loop")
    parser.add_argument("--data-dir", help="folder holding the four Fashion-MNIST IDX files")
    parser.add_argument("--json", help="also write the figures, with their settings, to this JSON file")
    return parser


def run(args) -> int:
    """Run the comparison the parsed ``args`` describe and print its table."""
    for name in ("epochs", "max_steps", "num_val", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    print(f"load average {load_average()}; timing {args.model} (book pipeline, plain loop, cnnlab) ...",
          flush=True)
    result = compare(args.model, args.epochs, args.image_size, args.max_steps, args.num_val, args.seed,
                     args.book_workers, not args.no_plain, args.data_dir,
                     log=lambda line: print(line, flush=True))
    print()
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"figures written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="cnnlab bench", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))
