"""One self-contained HTML page about a training run: settings, curves, test metrics, and what it learned.

The page needs nothing but itself: figures are PNGs embedded as base64 ``data:`` URIs, the style sheet and
the one small script are inline, and a Content-Security-Policy forbids any other load, so it opens the same
offline, from an e-mail or from a CI artifact. Every piece of text from the run is escaped.
The small script counts the images that failed to decode into ``body[data-broken-images]`` (and those that
loaded into ``data-images-loaded``), which is what the browser test reads.

Three steps, one function each: :func:`_evaluate` (the numbers, as ``cnnlab evaluate`` computes them),
:func:`_draw_figures` (the PNGs, the mistakes with their Grad-CAM overlays when Captum is installed) and
:func:`_render` (the page: ``templates/report.html.j2``, a Jinja2 template that escapes every value).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.atomic import atomic_write

__all__ = ["write_report"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.2rem 1.6rem 3rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
.muted { color: #57606a; font-size: .92rem; }
.headline { display: flex; gap: 2.5rem; align-items: baseline; flex-wrap: wrap; margin: 1rem 0;
            padding: 1rem 1.4rem; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 8px; }
.headline .big { font-size: 2.6rem; font-weight: 700; color: #0a6640; }
.headline .label { font-size: .9rem; color: #57606a; display: block; }
table { border-collapse: collapse; font-size: .9rem; margin: .6rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .8rem 0; } img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .88rem; color: #57606a; }
.cols { display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }
"""

# Counted on window load, after every image has been decoded or has failed.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; }).length;
  document.body.dataset.brokenImages = String(broken);
  document.body.dataset.imagesLoaded = String(images.length - broken);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass
class _Evaluated:
    """What the report shows of a run: the model, its run folder and the test-set evaluation."""

    loaded: object
    folder: object
    config: dict
    history: list
    images: object
    labels: object
    result: object
    probs: object
    data_dir: object


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None, *, test_index: int = 0, num_mistakes: int = 24,
                 device: str = "auto") -> Path:
    """Write ``report.html`` for a run folder (or a checkpoint or ``.safetensors`` file) and return its path.

    The test accuracy, per-class table and confusion matrix come from the same evaluation as
    ``cnnlab evaluate`` (the run's best checkpoint on the full 10,000-image test set), so the numbers agree.

    Args:
        run_dir: the run folder ``cnnlab train --out`` wrote, or one of its checkpoints.
        out: where the page goes; default ``<run folder>/report.html``.
        data_dir: the Fashion-MNIST folder; default the run's own ``--data-dir``, then the usual places.
        test_index: the test image whose feature maps are shown.
        num_mistakes: how many of the most confident mistakes to show.
        device: where to evaluate ('auto': CUDA, then MPS, then the CPU).
    """
    run = _evaluate(run_dir, data_dir, test_index, device)
    with tempfile.TemporaryDirectory(prefix="cnnlab-report-") as tmp:
        figures, mistakes = _draw_figures(run, Path(tmp), test_index, num_mistakes)
    out = Path(out) if out is not None else run.folder.path / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:  # a browser never opens half a page
        f.write(_render(run, figures, mistakes))
    return out


def _evaluate(run_dir, data_dir, test_index: int, device: str) -> _Evaluated:
    """Load the run, check ``test_index`` (before the slow part), evaluate the test set as ``cnnlab evaluate``."""
    from cnnlab.analysis.figures import predict_probabilities
    from cnnlab.inference.loaded import check_test_index, evaluate_loaded, load_trained
    from cnnlab.training.runfolder import RunFolder
    from cnnlab.training.runtime import pick_device

    device = pick_device(device)
    loaded = load_trained(run_dir, device)
    folder = RunFolder(loaded.checkpoint.parent)
    config = folder.read_config() if folder.config_file.is_file() else {}
    data_dir = data_dir if data_dir is not None else config.get("data_dir")
    images, labels = loaded.test_split(data_dir)
    check_test_index(test_index, len(images))
    result = evaluate_loaded(loaded, data_dir, device)  # the number evaluate_checkpoint gives
    probs = predict_probabilities(loaded, images.to(device), labels.to(device))
    return _Evaluated(loaded=loaded, folder=folder, config=config, history=folder.history(), images=images,
                      labels=labels, result=result, probs=probs, data_dir=data_dir)


def _figure(png: Path, alt: str, caption: str) -> dict:
    return {"data": base64.b64encode(png.read_bytes()).decode("ascii"), "alt": alt, "caption": caption}


def _draw_figures(run: _Evaluated, tmp: Path, test_index: int, num_mistakes: int):
    """The report's PNGs as ``data:`` URI parts (name -> data, alt, caption), and the mistakes record."""
    from cnnlab.analysis.figures import plot_layer_kernels, plot_test_features, plot_test_mistakes
    from cnnlab.visual.plotting import plot_confusion, plot_curves

    loaded, figures = run.loaded, {}
    if run.history:
        figures["curves"] = _figure(plot_curves(run.history, tmp / "curves.png"), "training curves",
                                    "Loss and validation accuracy after each epoch (metrics.jsonl).")
    plot_confusion(run.result.confusion, loaded.class_names, tmp / "confusion.png",
                   title=f"Confusion matrix (test accuracy {run.result.accuracy:.4f})")
    figures["confusion"] = _figure(tmp / "confusion.png", "confusion matrix",
                                   "Rows: true class; columns: predicted class; cells: image counts.")
    mistakes = plot_test_mistakes(loaded, run.images, run.labels, tmp / "mistakes.png", n=num_mistakes,
                                  probs=run.probs, explain=_captum_installed())
    why = (" Over each, its Grad-CAM heat map: where the last convolutional block found the evidence for the "
           "wrong class." if mistakes.explained else " (Install the 'explain' extra to see each one's Grad-CAM.)")
    figures["mistakes"] = _figure(tmp / "mistakes.png", "most confident mistakes",
                                  f"The {len(mistakes.indices)} wrong predictions the model was surest of, with "
                                  "the test-set index, the true class, the predicted class and its probability."
                                  + why)
    kernels = plot_layer_kernels(loaded.model, tmp / "kernels.png")
    figures["kernels"] = _figure(tmp / "kernels.png", f"kernels of {kernels.layer}",
                                 f"The {kernels.tiles} kernels of the first conv layer, {kernels.layer} "
                                 f"(weight {'x'.join(map(str, kernels.weight_shape))}); red positive, blue "
                                 "negative, white zero, on one scale.")
    features = plot_test_features(loaded, run.images, run.labels, test_index, tmp / "features.png")
    figures["features"] = _figure(tmp / "features.png", f"feature maps of test image {test_index}",
                                  f"Test image {test_index} and the feature maps after each conv stage "
                                  f"({len(features.stages)} stages).")
    return figures, mistakes


def _captum_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("captum") is not None


def _baseline_accuracy(run_dir: Path) -> float | None:
    """The linear baseline's test accuracy on the raw pixels (``baseline.json``, written by the automatic recipe
    for your own images), shown beside the network's; None where the run has none."""
    from cnnlab.training.baseline import read_baseline

    saved = read_baseline(run_dir)
    return None if saved is None else float(saved["accuracy"])


def _render(run: _Evaluated, figures: dict, mistakes) -> str:
    """The page, from ``templates/report.html.j2`` (Jinja2, every value escaped)."""
    import jinja2
    import torch

    from cnnlab.nn.summary import layer_stats

    loaded, result, history = run.loaded, run.result, run.history
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnlab.analysis", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    h, w = loaded.image_size
    rows = layer_stats(loaded.model, (1, loaded.channels, h, w))
    prefix = "net." if isinstance(getattr(loaded.model, "net", None), torch.nn.Module) else ""  # named_modules()
    total = sum(p.numel() for p in loaded.model.parameters())
    last = history[-1] if history else {}
    nan = float("nan")
    return env.get_template("report.html.j2").render(
        csp=_CSP, style=_STYLE, script=_SCRIPT, folder_name=run.folder.path.name, folder=run.folder.path,
        model_name=loaded.state.get("model_name") or type(loaded.model).__name__,
        dataset=f"the image folder {loaded.data.get('root')}" if loaded.is_image_folder else "Fashion-MNIST",
        baseline=_baseline_accuracy(run.folder.path), checkpoint=loaded.checkpoint.name,
        epochs_done=int(loaded.state.get("epoch", len(history))),
        written=time.strftime("%Y-%m-%d %H:%M"), result=result, total_params=total,
        num_val=run.config.get("num_val") or "all", figures=figures, mistakes=mistakes,
        history_rows=[(r.get("epoch"), f"{r.get('train_loss', nan):.4f}", f"{r.get('val_loss', nan):.4f}",
                       f"{r.get('val_acc', nan):.4f}", f"{r.get('images_per_s', 0):,.0f}",
                       f"{r.get('seconds', 0):.1f}") for r in history],
        final_epoch=f"Final epoch: train loss {last.get('train_loss', nan):.4f}, validation accuracy "
                    f"{last.get('val_acc', nan):.4f}; total training time "
                    f"{sum(r.get('seconds', 0) for r in history):.1f} s.",
        per_class=[(name, f"{acc:.4f}", f"{int(n):,}") for name, acc, n in
                   zip(loaded.class_names, result.per_class_accuracy.tolist(), result.confusion.sum(1).tolist(),
                       strict=True)],
        input_shape=f"{loaded.channels}x{h}x{w}",  # was 1xHxW whatever the channels
        layer_rows=[(prefix + r.name, r.layer_type, "x".join(map(str, r.output_shape)), f"{r.params:,}",
                     f"{r.flops:,}") for r in rows] + [("total", "", "", f"{total:,}",
                                                        f"{sum(r.flops for r in rows):,}")],
        settings=[(k, v if isinstance(v, str) else json.dumps(v)) for k, v in run.config.items()],
    ) + "\n"
