"""The ``cnnlab`` command line: ``main(argv=None) -> int``, one small function per subcommand.

User mistakes (bad numbers, unknown models, missing files, corrupt data: a :class:`~cnnlab.errors.UserError`)
print one line on stderr and return 2; a diverging run returns 3; a distributed run whose other process died
or timed out returns 4; nothing a user can cause ends in a traceback. Anything else is a bug and is shown as
one: a line saying so, the traceback, exit code 1 (``cnnlab --debug ...`` lets it propagate instead).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from cnnlab.cli.parser import build_parser
from cnnlab.cli.train import cmd_lr_find, cmd_train
from cnnlab.errors import ConfigError, UserError

__all__ = ["main", "run"]

# ---- commands ------------------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from cnnlab.inference.loaded import evaluate_checkpoint
    from cnnlab.training.runtime import pick_device
    from cnnlab.visual.plotting import plot_confusion

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

    from cnnlab.inference.loaded import load_trained, top_k

    loaded = load_trained(args.run)
    class_names = loaded.class_names
    names, images, truths = _gather_images(loaded, args)
    probs, classes = top_k(loaded, torch.stack(images), k=args.top)
    for name, truth, p_row, c_row in zip(names, truths, probs.tolist(), classes.tolist(), strict=True):
        ranked = ", ".join(f"{class_names[c]} {p:.3f}" for p, c in zip(p_row, c_row, strict=True))
        label = f" (true: {class_names[truth]})" if truth is not None else ""
        print(f"{name}{label}: {ranked}")
    if args.grid:
        from cnnlab.visual.plotting import show_images

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


def _gather_images(loaded, args) -> tuple[list[str], list, list]:
    """The IMAGE files and --test-index images of predict and explain: names, uint8 images, true classes."""
    from cnnlab.inference.loaded import check_test_index

    if not args.images and not args.test_index:
        raise ConfigError("give IMAGE files and/or --test-index N...")
    names, images, truths = [], [], []
    for path in args.images:
        images.append(loaded.read_image(path))
        names.append(str(path))
        truths.append(None)
    if args.test_index:
        test_images, test_labels = loaded.test_split(args.data_dir)
        for index in args.test_index:
            check_test_index(index, len(test_images))
            images.append(test_images[index])
            names.append(f"test[{index}]")
            truths.append(int(test_labels[index]))
    return names, images, truths


def cmd_explain(args) -> int:
    import re

    import torch

    from cnnlab.analysis.explain import explain_images, plot_explanations
    from cnnlab.extras import require
    from cnnlab.inference.loaded import load_trained
    from cnnlab.training.runtime import pick_device

    require("captum", "explain", "cnnlab explain")  # before any work: a missing extra is one line
    loaded = load_trained(args.run, pick_device(args.device))
    names, images, truths = _gather_images(loaded, args)
    batch = torch.stack(images)
    explanations = explain_images(loaded, batch, args.method, args.target, truths)
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "explain"
    classes = loaded.class_names
    for k, (name, e) in enumerate(zip(names, explanations, strict=True)):
        # A file name from the image's own name, reduced to safe characters (an IMAGE path is user text).
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem if k < len(args.images) else name)[:60]
        path = plot_explanations(loaded, batch[k:k + 1], [e], [name], out / f"{k:02d}-{stem}-{args.method}.png",
                                 args.method, show_input=True)
        target = "" if e.target == e.predicted else f", explaining {classes[e.target]}"
        print(f"{name}: predicted {classes[e.predicted]} {e.probability:.3f}{target}: {path}")
    if len(explanations) > 1:
        grid = plot_explanations(loaded, batch, explanations, names, out / f"grid-{args.method}.png", args.method)
        print(f"grid: {grid}")
    return 0


def cmd_export(args) -> int:
    from cnnlab.extras import require
    from cnnlab.inference.export import export_onnx
    from cnnlab.inference.loaded import load_trained

    if args.format == "safetensors":
        return _export_safetensors(args)
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


def _export_safetensors(args) -> int:
    from cnnlab.inference.loaded import load_trained
    from cnnlab.inference.safetensors_io import save_safetensors

    loaded = load_trained(args.run)
    mean, std = loaded.normalization() or (0.0, 1.0)
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "model.safetensors"
    path = save_safetensors(loaded.model, out, class_names=list(loaded.class_names),
                            image_shape=(loaded.channels, *loaded.image_size), mean=mean, std=std,
                            data_settings=loaded.data)
    print(f"wrote {path} ({path.stat().st_size:,} bytes): the weights of {loaded.state.get('model_name')} and "
          "their metadata; predict, evaluate, explain and report take it in place of the run")
    return 0


def cmd_data(args) -> int:
    from cnnlab.data import fashion_mnist as data_mod

    if args.data_command == "export-folder":
        from cnnlab.data.imagefolder import export_folder

        out = export_folder(args.dir, split=args.split, limit=args.limit, root=args.data_dir)
        print(f"wrote Fashion-MNIST's {args.split} split as PNG class folders in {out}")
        return 0
    if args.data_command == "download":
        from cnnlab.data.download import download
        from cnnlab.data.files import MIRROR_URL

        dest = download(args.dir, base_url=args.mirror or MIRROR_URL, check_archive=not args.any_archive)
        print(f"Fashion-MNIST ready in {dest}")
        return 0
    if args.data_command == "info":
        print(data_mod.describe(args.data_dir))
        return 0
    images, labels = data_mod.load_fashion_mnist(args.data_dir, train=args.split == "train")
    n = min(args.n, len(images))
    cols = min(9, n)
    from cnnlab.visual.plotting import show_images

    show_images(images[:n].float() / 255, (n + cols - 1) // cols, cols,
                titles=data_mod.text_labels(labels[:n]), path=args.out)
    print(f"wrote {n} {args.split} images to {args.out}")
    return 0


def cmd_summary(args) -> int:
    from cnnlab.models import create_model
    from cnnlab.nn.summary import model_summary
    from cnnlab.recipes import model_defaults

    shape = args.input or (1, 1, *(2 * (model_defaults(args.model)["image_size"],)))
    model = create_model(args.model, in_channels=shape[1], image_size=(shape[2], shape[3]))
    print(model_summary(model, shape))
    return 0


def cmd_models(args) -> int:
    from cnnlab.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_demo(args) -> int:
    from cnnlab.cli.demo import edge_image, learn_edge_kernel

    kernel, _ = learn_edge_kernel()
    print(f"learned kernel: {kernel}")
    if args.plot:
        from cnnlab.nn.ops import corr2d
        from cnnlab.visual.plotting import plot_edge_demo

        X = edge_image()
        plot_edge_demo(X, kernel, corr2d(X, kernel), args.plot)
        print(f"figure: {args.plot}")
    return 0


def cmd_viz(args) -> int:
    from cnnlab.analysis import figures as viz
    from cnnlab.inference.loaded import load_trained

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
    from cnnlab.training.runtime import pick_device

    loaded = load_trained(args.run, pick_device(args.device))
    images, labels = loaded.test_split(args.data_dir)
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "mistakes.png"
    fig = viz.plot_test_mistakes(loaded, images, labels, out, n=args.n)
    print(f"{len(fig.indices)} most confident of {fig.wrong:,} mistakes on {fig.total:,} test images: {out}")
    return 0


def cmd_report(args) -> int:
    from cnnlab.analysis.report import write_report

    out = write_report(args.run, args.out, args.data_dir, test_index=args.test_index, device=args.device)
    print(f"report: {out}")
    return 0


def cmd_bench(args) -> int:
    from cnnlab.bench import run

    return run(args)


COMMANDS = {"train": cmd_train, "lr-find": cmd_lr_find, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "explain": cmd_explain, "export": cmd_export, "data": cmd_data,
            "summary": cmd_summary, "models": cmd_models, "demo": cmd_demo, "viz": cmd_viz,
            "report": cmd_report, "bench": cmd_bench}


def _what_is_saved(run_dir) -> str:
    """The rest of the line Ctrl-C prints: what the interrupted run's folder holds and how to continue it."""
    from cnnlab.training.runfolder import RunFolder

    if run_dir is None:
        return ""
    last = RunFolder(run_dir).last  # the run folder knows its files' names
    if last.is_file():
        return f"; the last finished epoch is saved in {last} (resume with --resume {run_dir})"
    return (f" before the first epoch was saved; {run_dir} holds only the run's settings (--resume {run_dir} "
            "starts it again)")


def main(argv: list[str] | None = None) -> int:
    """Run the ``cnnlab`` command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    from cnnlab.training import distributed

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
    except KeyboardInterrupt as exc:
        print(f"cnnlab: interrupted{_what_is_saved(getattr(exc, 'run_dir', None))}", file=sys.stderr)
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
    every file is written, fsynced and closed and the process group is left
    (:func:`cnnlab.training.distributed.shutdown`), so nothing is lost by not tearing down.
    """
    from cnnlab.training.distributed import launched_by_torchrun

    launched = launched_by_torchrun()
    code = main(argv)
    if launched:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
