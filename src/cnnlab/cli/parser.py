"""The ``cnnlab`` command line's arguments: the parser, its subcommands' options and their value types.

Every value is checked here, as argparse parses it, so that a bad one is a one-line error naming the option
(:class:`_Parser`), before any work starts. The commands themselves are in :mod:`cnnlab.cli.main`.
"""

from __future__ import annotations

import argparse

from cnnlab.data.batching import CROP_PADDING

__all__ = ["build_parser"]


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


def _lr(text: str) -> float | str:
    # A number is checked as the other settings are (validate_config: "--lr must be a positive ...").
    return text if text == "auto" else _finite_float(text)


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


def _duration(text: str) -> float:
    from cnnlab.errors import ConfigError
    from cnnlab.recipes.budget import parse_duration

    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---- parser --------------------------------------------------------------------------------------

def _add_speed(p) -> None:
    """How ``cnnlab train`` runs, not what it learns: device, threads, precision, memory layout, compiling."""
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (tens of seconds to compile; pays on long runs)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=_positive_int, help="intra-op CPU threads (default: torch's, one per core; "
                   "under --budget on a CPU the faster of that and half of it, timed at the start)")


def _add_images(p) -> None:
    """``cnnlab train``'s options for your own image folder."""
    p.add_argument("--images", metavar="DIR", help="train on your own image folder instead of Fashion-MNIST: "
                   "DIR/<class>/<image> (or DIR/train/<class>/..., DIR/test/<class>/...), as torchvision's "
                   "ImageFolder; without test/ or val/, --val-split (default 0.1) holds out a share")
    p.add_argument("--channels", type=int, choices=(1, 3), help="with --images: 1 (grey) or 3 (colour); default "
                   "1 if every image is grey, else 3")
    p.add_argument("--skip-bad", action="store_true", help="with --images: leave unreadable files out (counted) "
                   "instead of stopping with their list")
    p.add_argument("--pixel-blend", action=argparse.BooleanOptionalAction, default=None, help="with --images: "
                   "after training, average the net's probabilities with a linear classifier's on the pixels, with "
                   "the share that lowers the validation loss (the automatic recipe's default; --no-pixel-blend: the "
                   "net alone)")
    p.add_argument("--white-balance", action=argparse.BooleanOptionalAction, default=None, help="with --images: "
                   "remove each colour image's cast inside the model (default in the automatic recipe: where the "
                   "training images' cast does not tell their class)")


def _add_train(sub) -> None:
    from cnnlab.recipes import OPTIMIZERS, RECIPES, SCHEDULES

    p = sub.add_parser("train", help="train a model on Fashion-MNIST (no options: the seed's LeNet recipe)",
                       description="Train a model on Fashion-MNIST. With no options: the seed's LeNet "
                       "(sigmoid, xavier init, SGD lr 0.1, batch 128, 10 epochs). Options left unset take the "
                       "model's recipe defaults. Under torchrun, --batch-size is the global batch, split "
                       "evenly across processes.")
    p.add_argument("--model", help="registered model name (see `cnnlab models`); default lenet, or with --images "
                   "and no --recipe the automatic recipe (a BatchNorm net sized to the images)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a named recipe: 'fast' is the best time to accuracy")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--budget", type=_duration, metavar="DURATION", help="the whole command (data, training, "
                   "validation, the final test pass) ends within this time, e.g. 90s, 5m, 1h: as many steps as "
                   "fit, the learning rate decaying to zero with the clock; overrides --epochs")
    p.add_argument("--steps", type=_positive_int, metavar="N", help="train exactly N optimizer steps, the "
                   "schedule laid out over them; overrides --epochs")
    p.add_argument("--replay", metavar="RUN", help="train again exactly as the --budget run RUN did (its "
                   "settings, its number of steps and its learning rate at each step), without the clock")
    p.add_argument("--batch-size", type=_positive_int, help="global batch size (all processes together)")
    p.add_argument("--lr", type=_lr, help="(peak) learning rate, or 'auto': the learning-rate range test's choice "
                   "(`cnnlab lr-find`)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd, momentum (SGD+Nesterov 0.9), adam, adamw")
    p.add_argument("--momentum", type=_finite_float)
    p.add_argument("--weight-decay", type=_finite_float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--label-smoothing", type=_finite_float)
    # --resize: d2l's word (FashionMNIST(resize=...)), in the docs and users' habits, kept as the same option.
    p.add_argument("--image-size", "--resize", type=_positive_int, help="side in pixels the model sees (also --resize)")
    p.add_argument("--augment", nargs="?", const="crop+flip", choices=("crop", "flip", "crop+flip"),
                   help="random crop and horizontal flip, batched; 'crop' alone for classes a mirror image would "
                   "change; 'flip' lets the automatic recipe mirror images (it crops only by default)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="no augmentation")
    p.add_argument("--cutout", type=_finite_float, metavar="F", help="with augmentation, also Cutout: a square of "
                   "the share F of the image side set to the mean (the automatic recipe: 0.25; 0: none)")
    p.add_argument("--shift-tta", nargs="?", const=CROP_PADDING, type=_nonneg_int, metavar="PIXELS",
                   help="with crops: after training, score each image as the mean of the net's predictions over "
                   f"its shifts by up to PIXELS each way (default {CROP_PADDING}, the crops'; fastnet-auto; the "
                   "automatic recipe's wherever it crops, as many as fit its clock)")
    p.add_argument("--no-shift-tta", dest="shift_tta", action="store_const", const=0, help="score each image once")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    _add_speed(p)
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--data-dir", help="folder holding the four Fashion-MNIST IDX files")
    p.add_argument("--num-train", type=_positive_int, help="train on the first N training images only")
    p.add_argument("--num-val", type=_positive_int, help="validate on the first N test images only")
    p.add_argument("--val-split", type=_fraction, metavar="F", help="validate on a seeded, stratified share F of "
                   "the training images (e.g. 0.1) instead of the test set, which is then scored once, at the end")
    _add_images(p)
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard/ (needs the "
                   "'tensorboard' extra); view with `tensorboard --logdir runs/`")
    p.add_argument("--out", help="the run folder itself (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue this run folder with its saved settings; 'auto': "
                   "continue the run in --out if its last.pt has these settings, else start it (as torchrun's "
                   "restarts always do)")
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

    from cnnlab.recipes import OPTIMIZERS

    p = sub.add_parser("lr-find", help="the learning-rate range test (fastai's lr_find): loss against an "
                       "exponentially growing lr, a suggested lr and its plot")
    p.add_argument("--images", metavar="DIR", help="your image folder (default: Fashion-MNIST)")
    p.add_argument("--model", help="default: the automatic recipe's net with --images, else lenet")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--steps", type=_positive_int, help="steps of the test (default: the automatic recipe's own, "
                   "60, with --images and no --model, so that it finds the run's rate; else 100)")
    p.add_argument("--data-dir")
    p.add_argument("--num-train", type=_positive_int)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--out", default="lr-find.png", help="the plot (default lr-find.png)")

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

    p = sub.add_parser("explain", help="why a model made its predictions: a heat map over each image (Grad-CAM, "
                       "Integrated Gradients, Occlusion or Saliency; needs the 'explain' extra)")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--test-index", type=_nonneg_int, nargs="+", default=[], metavar="N")
    p.add_argument("--method", choices=("gradcam", "ig", "occlusion", "saliency"), default="gradcam")
    p.add_argument("--target", type=_nonneg_int, metavar="CLASS", help="explain this class index instead of the "
                   "predicted one")
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: <run>/explain)")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")

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
                       "(needs the 'export' extra), or its weights as safetensors")
    p.add_argument("run", metavar="RUN|CKPT")
    p.add_argument("--format", choices=("onnx", "safetensors"), default="onnx",
                   help="onnx (default): a graph any ONNX runtime runs; safetensors: the weights and metadata, "
                   "which predict/evaluate/explain/report and cnnlab.load_model take in place of a run")
    p.add_argument("--out", help="file to write (default: <run>/model.onnx or <run>/model.safetensors)")
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
