"""The ``cnnlab`` command line: ``main(argv=None) -> int``, one small function per subcommand.

User mistakes (bad numbers, unknown models, missing files, corrupt data: a :class:`~cnnlab.errors.UserError`)
print one line on stderr and return 2; a diverging run returns 3; a distributed run whose other process died
or timed out returns 4; nothing a user can cause ends in a traceback. Anything else is a bug and is shown as
one: a line saying so, the traceback, exit code 1 (``cnnlab --debug ...`` lets it propagate instead).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from cnnlab.errors import ConfigError, UserError

__all__ = ["main", "run", "build_parser"]

def _int_at_least(minimum: int, what: str):
    """An argparse type for integers >= ``minimum``; ``what`` names them in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, such as 0.1, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,28,28, got {text!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive sizes N,C,H,W, got {text!r}")
    return dims


# ---- parser --------------------------------------------------------------------------------------

def _add_train(sub) -> None:
    from cnnlab.recipes import OPTIMIZERS, RECIPES, SCHEDULES

    p = sub.add_parser("train", help="train a model on Fashion-MNIST (no options: the seed's LeNet recipe)",
                       description="Train a model on Fashion-MNIST. With no options: the seed's LeNet "
                       "(sigmoid, xavier init, SGD lr 0.1, batch 128, 10 epochs). Options left unset take the "
                       "model's recipe defaults. Under torchrun, --batch-size is the global batch, split "
                       "evenly across processes.")
    p.add_argument("--model", default="lenet", help="registered model name (see `cnnlab models`)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a named recipe: 'fast' is the best time to accuracy")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, help="global batch size (all processes together)")
    p.add_argument("--lr", type=_finite_float, help="(peak) learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd, momentum (SGD+Nesterov 0.9), adam, adamw")
    p.add_argument("--momentum", type=_finite_float)
    p.add_argument("--weight-decay", type=_finite_float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--label-smoothing", type=_finite_float)
    p.add_argument("--resize", type=_positive_int, help="input side in pixels (28 is native)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and horizontal flip, batched")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (tens of seconds to compile; pays on long runs)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--data-dir", help="folder holding the four Fashion-MNIST IDX files")
    p.add_argument("--num-train", type=_positive_int, help="train on the first N training images only")
    p.add_argument("--num-val", type=_positive_int, help="validate on the first N test images only")
    p.add_argument("--val-split", type=_fraction, metavar="F", help="validate on a seeded, stratified share F of "
                   "the training images (e.g. 0.1) instead of the test set, which is then scored once, at the end")
    p.add_argument("--images", metavar="DIR", help="train on your own image folder instead of Fashion-MNIST: "
                   "DIR/<class>/<image> (or DIR/train/<class>/..., DIR/test/<class>/...), as torchvision's "
                   "ImageFolder; without test/ or val/, --val-split (default 0.1) holds out a share")
    p.add_argument("--channels", type=int, choices=(1, 3), help="with --images: 1 (grey) or 3 (colour); default "
                   "1 if every image is grey, else 3")
    p.add_argument("--skip-bad", action="store_true", help="with --images: leave unreadable files out (counted) "
                   "instead of stopping with their list")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard/ (needs the "
                   "'tensorboard' extra); view with `tensorboard --logdir runs/`")
    p.add_argument("--out", help="the run folder itself (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue this run folder with its saved settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true", help="write report.html into the run folder at the end")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line on stderr, pointing at ``--help``, and exit code 2.

    argparse's own error prints the whole usage block first; subcommand parsers are of this class too
    (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description="Convolutional networks from their "
                                     "operators up (d2l.ai chapters 7-8), trained on Fashion-MNIST.")
    parser.add_argument("--debug", action="store_true", help="let unexpected errors propagate (for debugging "
                        "cnnlab itself)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)

    p = sub.add_parser("evaluate", help="test accuracy, per-class table and confusion matrix of a run")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="confusion-matrix PNG (default: <run>/confusion.png)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("predict", help="classify image files or test images with a trained model")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--test-index", type=_nonneg_int, nargs="+", default=[], metavar="N")
    p.add_argument("--grid", help="write the images with true/predicted labels to this PNG")
    p.add_argument("--data-dir")
    p.add_argument("--top", type=_positive_int, default=3)

    p = sub.add_parser("data", help="Fashion-MNIST: info, show, download")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("info", help="where the data is, counts, per-class counts, checksums")
    d.add_argument("--data-dir")
    d = dsub.add_parser("show", help="write a labelled grid of images")
    d.add_argument("--split", choices=("train", "test"), default="train")
    d.add_argument("--n", type=_positive_int, default=18)
    d.add_argument("--out", default="fashion-mnist.png")
    d.add_argument("--data-dir")
    d = dsub.add_parser("export-folder", help="write Fashion-MNIST as an image folder of PNGs (DIR/<split>/"
                        "<class>/NNNNN.png), the layout `cnnlab train --images` reads")
    d.add_argument("dir", metavar="DIR")
    d.add_argument("--split", choices=("train", "test"), default="train")
    d.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images of the split")
    d.add_argument("--data-dir")
    d = dsub.add_parser("download", help="fetch the four files from the official mirror, verified")
    d.add_argument("--data-dir", "--dir", dest="dir", help="destination (default ~/.cache/cnnlab/fashion-mnist, "
                   "or $CNNLAB_CACHE/fashion-mnist)")
    d.add_argument("--mirror", metavar="URL", help="another mirror: the URL (http://, https:// or file://) of the "
                   "folder holding train-images-idx3-ubyte.gz and the other archives")
    d.add_argument("--any-archive", action="store_true", help="accept archives that were recompressed (e.g. "
                   "Debian's): only the MD5 of the data inside is checked, not the archive's")

    p = sub.add_parser("export", help="write a trained model as ONNX, checked against PyTorch by onnxruntime "
                       "(needs the 'export' extra)")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("--out", help="ONNX file to write (default: <run>/model.onnx)")
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default: torch's exporter's)")
    p.add_argument("--data-dir", help="where the test images for the check are (default: the run's)")

    p = sub.add_parser("summary", help="per-layer output shapes, parameters and FLOPs of a model")
    p.add_argument("model")
    p.add_argument("--input", type=_shape, default=None, metavar="N,C,H,W",
                   help="input shape (default 1,1,S,S with the model's recipe size)")

    sub.add_parser("models", help="list the registered models")

    p = sub.add_parser("demo", help="the book's small experiments")
    demo_sub = p.add_subparsers(dest="demo_command", required=True, metavar="DEMO")
    e = demo_sub.add_parser("edge", help="d2l §7.2: learn the edge kernel [1, -1] back from its output")
    e.add_argument("--plot", help="also write X, the learned kernel and Y side by side to this PNG")

    p = sub.add_parser("viz", help="what a trained model learned: kernels, feature maps, mistakes (PNG)")
    viz_sub = p.add_subparsers(dest="viz_command", required=True, metavar="FIGURE")
    v = viz_sub.add_parser("kernels", help="a grid of one conv layer's kernels on a zero-centred colour scale")
    v.add_argument("run", metavar="RUN|CKPT")
    v.add_argument("--layer", metavar="NAME", help="a conv layer's name from model.named_modules() "
                   "(default: the first conv); a wrong name lists the conv layers")
    v.add_argument("--out", help="PNG to write (default: <run>/kernels.png)")
    v = viz_sub.add_parser("features", help="one test image and the feature maps after each conv stage")
    v.add_argument("run", metavar="RUN|CKPT")
    v.add_argument("--test-index", type=_nonneg_int, default=0, metavar="N",
                   help="which test image (default 0)")
    v.add_argument("--out", help="PNG to write (default: <run>/features-N.png)")
    v.add_argument("--data-dir")
    v = viz_sub.add_parser("mistakes", help="the most confident wrong predictions on the test set")
    v.add_argument("run", metavar="RUN|CKPT")
    v.add_argument("--n", type=_positive_int, default=24, help="how many to show (default 24)")
    v.add_argument("--out", help="PNG to write (default: <run>/mistakes.png)")
    v.add_argument("--data-dir")
    v.add_argument("--device", default="auto")

    p = sub.add_parser("report", help="one self-contained HTML page about a run (settings, curves, metrics, "
                       "figures)")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("--out", help="HTML file to write (default: <run>/report.html)")
    p.add_argument("--test-index", type=_nonneg_int, default=0, metavar="N",
                   help="the test image whose feature maps are shown (default 0)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")

    from cnnlab.bench import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="training speed: the book's pipeline, a plain loop and "
                                       "cnnlab's Trainer, side by side, against the CPU's matmul FLOP/s"))
    return parser


# ---- commands ------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    import dataclasses

    from cnnlab.recipes import TrainConfig, resolve_config, run_training

    if args.resume:
        summary = run_training(None, resume=args.resume)
    else:
        # Every TrainConfig field has an option of the same name (``progress`` is ``--no-progress``).
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
        summary = run_training(resolve_config(TrainConfig(**given, progress=not args.no_progress), args.recipe))
    if summary["test_accuracy"] is None:  # a non-zero rank under torchrun
        return 0
    if summary["finished_already"]:
        print(f"run {summary['run_dir']} had already finished all {summary['config'].epochs} epochs; "
              "nothing to do")
    print(f"test accuracy {summary['test_accuracy']:.4f} on {summary['test_count']:,} images "
          f"({Path(summary['checkpoint']).name}, fp32); total time {summary['seconds']:.1f} s; files in "
          f"{summary['run_dir']}/ (metrics.csv, curves.png, last.pt, best.pt)")
    if args.report:
        from cnnlab.report import write_report

        print(f"report: {write_report(summary['run_dir'])}")
    return 0


def cmd_evaluate(args) -> int:
    from cnnlab.evaluation import evaluate_checkpoint
    from cnnlab.plotting import plot_confusion
    from cnnlab.runtime import pick_device

    loaded, result = evaluate_checkpoint(args.run, args.data_dir, pick_device(args.device))
    print(f"checkpoint {loaded.checkpoint}")
    print(f"test accuracy {result.accuracy:.4f} ({result.count:,} images), test loss {result.loss:.4f}")
    print(f"{'class':<12} {'accuracy':>8} {'images':>7}")
    names = loaded.class_names
    width = max(12, *(len(name) for name in names))
    for name, acc, n in zip(names, result.per_class_accuracy.tolist(), result.confusion.sum(1).tolist(),
                            strict=True):
        print(f"{name:<{width}} {acc:>8.4f} {n:>7,}")
    run_dir = loaded.checkpoint.parent
    out = Path(args.out) if args.out else run_dir / "confusion.png"
    plot_confusion(result.confusion, names, out, title=f"Confusion matrix (accuracy {result.accuracy:.4f})")
    print(f"confusion matrix: {out}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from cnnlab.inference import load_trained, top_k

    if not args.images and not args.test_index:
        raise ConfigError("give IMAGE files and/or --test-index N...")
    loaded = load_trained(args.run)
    class_names = loaded.class_names
    names, images, truths = [], [], []
    for path in args.images:
        images.append(loaded.read_image(path))
        names.append(str(path))
        truths.append(None)
    if args.test_index:
        test_images, test_labels = loaded.test_split(args.data_dir)
        for index in args.test_index:
            if index >= len(test_images):
                raise ConfigError(f"--test-index {index} is out of range: the test set has {len(test_images)} "
                                  f"images (0..{len(test_images) - 1})")
            images.append(test_images[index])
            names.append(f"test[{index}]")
            truths.append(int(test_labels[index]))
    probs, classes = top_k(loaded, torch.stack(images), k=args.top)
    for name, truth, p_row, c_row in zip(names, truths, probs.tolist(), classes.tolist(), strict=True):
        ranked = ", ".join(f"{class_names[c]} {p:.3f}" for p, c in zip(p_row, c_row, strict=True))
        label = f" (true: {class_names[truth]})" if truth is not None else ""
        print(f"{name}{label}: {ranked}")
    if args.grid:
        from cnnlab.plotting import show_images

        titles = [(f"{class_names[t]}\n" if t is not None else "") + class_names[c[0]]
                  for t, c in zip(truths, classes.tolist(), strict=True)]
        cols = min(8, len(images))
        pictures = torch.stack(images).float() / 255
        # (N, H, W) grey, or (N, C, H, W): grey squeezed, colour channels last, as matplotlib draws them
        pictures = pictures.squeeze(1) if pictures.ndim == 4 and pictures.shape[1] == 1 else (
            pictures.permute(0, 2, 3, 1) if pictures.ndim == 4 else pictures)
        show_images(pictures, (len(images) + cols - 1) // cols, cols, titles=titles, path=args.grid)
        print(f"grid: {args.grid}")
    return 0


def cmd_export(args) -> int:
    from cnnlab.export import export_onnx
    from cnnlab.extras import require
    from cnnlab.inference import load_trained

    require("onnxruntime", "export", "ONNX export")  # before any work: a missing extra is one line
    loaded = load_trained(args.run)
    # The check's inputs: the first 1,000 test images, batched by the run's own input path.
    check_images = next(iter(loaded.test_loader(args.data_dir, batch_size=1000)))[0]
    mean, std = loaded.normalization() or (0.0, 1.0)
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "model.onnx"
    result = export_onnx(loaded.model, out, image_shape=(loaded.channels, *loaded.image_size),
                         class_names=list(loaded.class_names), mean=mean, std=std, opset=args.opset,
                         check_images=check_images, model_name=loaded.state.get("model_name"))
    print(f"wrote {result.path} ({result.size_bytes:,} bytes, opset {result.opset}); checked with onnxruntime on "
          f"{result.num_checked:,} test images: max |logit difference| {result.max_abs_diff:.2e}, same top-1 "
          f"class on {result.top1_agreement:.2%}")
    return 0


def cmd_data(args) -> int:
    from cnnlab import data as data_mod

    if args.data_command == "export-folder":
        from cnnlab.imagefolder import export_folder

        out = export_folder(args.dir, split=args.split, limit=args.limit, root=args.data_dir)
        print(f"wrote Fashion-MNIST's {args.split} split as PNG class folders in {out}")
        return 0
    if args.data_command == "download":
        dest = data_mod.download(args.dir, base_url=args.mirror or data_mod.MIRROR_URL,
                                 check_archive=not args.any_archive)
        print(f"Fashion-MNIST ready in {dest}")
        return 0
    if args.data_command == "info":
        print(data_mod.describe(args.data_dir))
        return 0
    images, labels = data_mod.load_fashion_mnist(args.data_dir, train=args.split == "train")
    n = min(args.n, len(images))
    cols = min(9, n)
    from cnnlab.plotting import show_images

    show_images(images[:n].float() / 255, (n + cols - 1) // cols, cols,
                titles=data_mod.text_labels(labels[:n]), path=args.out)
    print(f"wrote {n} {args.split} images to {args.out}")
    return 0


def cmd_summary(args) -> int:
    from cnnlab.models import create_model, list_models
    from cnnlab.recipes import model_defaults
    from cnnlab.summary import model_summary

    if args.model not in list_models():
        raise ConfigError(f"unknown model {args.model!r}; known models: {', '.join(list_models())}")
    shape = args.input or (1, 1, *(2 * (model_defaults(args.model)["resize"],)))
    model = create_model(args.model, in_channels=shape[1], image_size=(shape[2], shape[3]))
    print(model_summary(model, shape))
    return 0


def cmd_models(args) -> int:
    from cnnlab.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_demo(args) -> int:
    from cnnlab.demo import edge_image, learn_edge_kernel

    kernel, _ = learn_edge_kernel()
    print(f"learned kernel: {kernel}")
    if args.plot:
        from cnnlab.ops import corr2d
        from cnnlab.plotting import plot_edge_demo

        X = edge_image()
        plot_edge_demo(X, kernel, corr2d(X, kernel), args.plot)
        print(f"figure: {args.plot}")
    return 0


def cmd_viz(args) -> int:
    from cnnlab import viz
    from cnnlab.inference import load_trained

    if args.viz_command == "kernels":
        loaded = load_trained(args.run)
        out = Path(args.out) if args.out else loaded.checkpoint.parent / "kernels.png"
        fig = viz.plot_layer_kernels(loaded.model, out, layer=args.layer)
        print(f"{fig.tiles} kernels of {fig.layer} (weight {'x'.join(map(str, fig.weight_shape))}): {out}")
        return 0
    if args.viz_command == "features":
        loaded = load_trained(args.run)
        images, labels = loaded.test_split(args.data_dir)
        out = Path(args.out) if args.out else loaded.checkpoint.parent / f"features-{args.test_index}.png"
        fig = viz.plot_test_features(loaded, images, labels, args.test_index, out)
        stages = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in fig.stages)
        names = loaded.class_names
        print(f"test[{fig.index}] (true: {names[fig.true_class]}): predicted "
              f"{names[fig.predicted_class]} {fig.probability:.3f}; stages {stages}: {out}")
        return 0
    from cnnlab.runtime import pick_device

    loaded = load_trained(args.run, pick_device(args.device))
    images, labels = loaded.test_split(args.data_dir)
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "mistakes.png"
    fig = viz.plot_test_mistakes(loaded, images, labels, out, n=args.n)
    print(f"{len(fig.indices)} most confident of {fig.wrong:,} mistakes on {fig.total:,} test images: {out}")
    return 0


def cmd_report(args) -> int:
    from cnnlab.report import write_report

    out = write_report(args.run, args.out, args.data_dir, test_index=args.test_index, device=args.device)
    print(f"report: {out}")
    return 0


def cmd_bench(args) -> int:
    from cnnlab.bench import run

    return run(args)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
            "data": cmd_data,
            "summary": cmd_summary, "models": cmd_models, "demo": cmd_demo, "viz": cmd_viz,
            "report": cmd_report, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    """Run the ``cnnlab`` command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    from cnnlab import distributed

    try:
        code = COMMANDS[args.command](args)
        distributed.shutdown(clean=True)  # under torchrun: every rank leaves together (see shutdown)
        return code
    except UserError as exc:
        print(f"cnnlab: {'' if exc.exit_code == 3 else 'error: '}{exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`cnnlab evaluate RUN | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("cnnlab: interrupted; the last finished epoch is saved in last.pt (resume with --resume RUN)",
              file=sys.stderr)
        return 130
    except Exception:
        if args.debug:
            raise
        # Not a mistake of the user's: a bug in cnnlab or a library under it. Say so and show where.
        print("cnnlab: internal error, a bug in cnnlab or a library it uses (please report it with the "
              "traceback below; `cnnlab --debug ...` re-raises it)", file=sys.stderr)
        traceback.print_exc()
        return 1
    finally:
        distributed.shutdown(clean=False)  # after an error; a no-op once the group is left


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``cnnlab`` program (console script, ``python -m cnnlab``, torchrun): :func:`main`, then exit.

    A torchrun rank exits with ``os._exit`` once its output is flushed, skipping Python's interpreter teardown.
    Why: gloo's worker threads may still be releasing their last collective's work when the interpreter
    finalizes; that work holds Python state, and a thread that asks for the GIL during finalization is ended
    by Python through a C++ destructor, which aborts the process ("terminate called without an active
    exception", SIGABRT; seen in a core dump of exactly that: the main thread in ``Py_FinalizeEx``, a
    ``ProcessGroupGloo::runLoop`` thread in ``take_gil``), and torchrun then kills the other ranks. By then
    every file is written, fsynced and closed and the process group is left (:func:`cnnlab.distributed.shutdown`),
    so nothing is lost by not tearing down.
    """
    from cnnlab.distributed import launched_by_torchrun

    launched = launched_by_torchrun()
    code = main(argv)
    if launched:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
