"""One self-contained HTML page about a training run: settings, curves, test metrics, and what it learned.

The page needs nothing but itself: figures are PNGs embedded as base64 ``data:`` URIs, the style sheet and
the one small script are inline, and a Content-Security-Policy forbids any other load, so it opens the same
offline, from an e-mail or from a CI artifact. Every piece of text from the run is escaped.
The small script counts the images that failed to decode into ``body[data-broken-images]`` (and those that
loaded into ``data-images-loaded``), which is what the browser test reads.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
import time
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.errors import ConfigError

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


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _table(header, rows, numeric=()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _baseline_box(run_dir: Path) -> list[str]:
    """The linear baseline on the raw pixels beside the network's accuracy (``baseline.json``, written by the
    automatic recipe for your own images), or nothing."""
    try:
        base = json.loads((run_dir / "baseline.json").read_text())
        accuracy = float(base["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f'<div><span class="label">linear baseline on the raw pixels (same test images)</span>'
            f'<span class="big" id="baseline-accuracy" style="color:#1b1f24">{accuracy:.4f}</span></div>']


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None, *, test_index: int = 0, num_mistakes: int = 24,
                 device: str = "auto") -> Path:
    """Write ``report.html`` for a run folder (or a checkpoint file) and return its path.

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
    import torch

    from cnnlab.analysis.figures import (
        plot_layer_kernels,
        plot_test_features,
        plot_test_mistakes,
        predict_probabilities,
    )
    from cnnlab.inference.loaded import load_trained
    from cnnlab.nn.summary import layer_stats
    from cnnlab.training.evaluation import evaluate
    from cnnlab.training.runfolder import RunFolder
    from cnnlab.training.runtime import pick_device
    from cnnlab.visual.plotting import plot_confusion, plot_curves

    device = pick_device(device)
    loaded = load_trained(run_dir, device)
    folder = RunFolder(loaded.checkpoint.parent)
    config = folder.read_config() if folder.config_file.is_file() else {}
    data_dir = data_dir if data_dir is not None else config.get("data_dir")
    history = folder.history()
    model_name = loaded.state.get("model_name") or type(loaded.model).__name__

    images, labels = loaded.test_split(data_dir)
    class_names = loaded.class_names
    dataset = f"the image folder {loaded.data.get('root')}" if loaded.is_image_folder else "Fashion-MNIST"
    if not 0 <= test_index < len(images):  # checked before the slow part
        raise ConfigError(f"test index {test_index} is out of range: the test set has {len(images):,} images "
                         f"(0..{len(images) - 1})")
    result = evaluate(loaded.model, loaded.test_loader(data_dir), device)  # as evaluate_checkpoint does
    probs = predict_probabilities(loaded, images.to(device), labels.to(device))

    h, w = loaded.image_size
    with tempfile.TemporaryDirectory(prefix="cnnlab-report-") as tmp:
        tmp = Path(tmp)
        figures = {}
        if history:
            plot_curves(history, tmp / "curves.png")
            figures["curves"] = _img(tmp / "curves.png", "training curves",
                                     "Loss and validation accuracy after each epoch (metrics.jsonl).")
        plot_confusion(result.confusion, class_names, tmp / "confusion.png",
                       title=f"Confusion matrix (test accuracy {result.accuracy:.4f})")
        figures["confusion"] = _img(tmp / "confusion.png", "confusion matrix",
                                    "Rows: true class; columns: predicted class; cells: image counts.")
        mistakes = plot_test_mistakes(loaded, images, labels, tmp / "mistakes.png", n=num_mistakes, probs=probs)
        figures["mistakes"] = _img(tmp / "mistakes.png", "most confident mistakes",
                                   f"The {len(mistakes.indices)} wrong predictions the model was surest of, "
                                   "with the test-set index, the true class, the predicted class and its "
                                   "probability.")
        kernels = plot_layer_kernels(loaded.model, tmp / "kernels.png")
        figures["kernels"] = _img(tmp / "kernels.png", f"kernels of {kernels.layer}",
                                  f"The {kernels.tiles} kernels of the first conv layer, {kernels.layer} "
                                  f"(weight {'x'.join(map(str, kernels.weight_shape))}); red positive, blue "
                                  "negative, white zero, on one scale.")
        features = plot_test_features(loaded, images, labels, test_index, tmp / "features.png")
        figures["features"] = _img(tmp / "features.png", f"feature maps of test image {test_index}",
                                   f"Test image {test_index} and the feature maps after each conv stage "
                                   f"({len(features.stages)} stages).")

    rows = layer_stats(loaded.model, (1, loaded.channels, h, w))
    prefix = "net." if isinstance(getattr(loaded.model, "net", None), torch.nn.Module) else ""  # named_modules()
    total = sum(p.numel() for p in loaded.model.parameters())
    per_class = [(name, f"{acc:.4f}", f"{int(n):,}") for name, acc, n in
                 zip(class_names, result.per_class_accuracy.tolist(), result.confusion.sum(1).tolist(),
                     strict=True)]
    last = history[-1] if history else {}
    epochs_done = int(loaded.state.get("epoch", len(history)))
    best = loaded.checkpoint.name
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>cnnlab report: {_e(folder.path.name)}</title>",
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{_e(model_name)} on {_e(dataset)}</h1>",
        f'<p class="muted">Run folder {_e(folder.path)}; weights from {_e(best)} (epoch {epochs_done}); '
        f"report written {_e(time.strftime('%Y-%m-%d %H:%M'))} by cnnlab.</p>",
        '<div class="headline">',
        f'<div><span class="label">test accuracy ({result.count:,} test images)</span>'
        f'<span class="big" id="test-accuracy">{result.accuracy:.4f}</span></div>',
        f'<div><span class="label">test loss</span><span class="big" style="color:#1b1f24">'
        f"{result.loss:.4f}</span></div>",
        f'<div><span class="label">parameters</span><span class="big" style="color:#1b1f24">{total:,}</span></div>',
        *_baseline_box(folder.path),
        "</div>",
        '<p class="muted">The same evaluation as <code>cnnlab evaluate</code>: the whole test set, which '
        "training never sees (the validation accuracy below was measured during training, on "
        f"{_e(config.get('num_val') or 'all')} test images).</p>",
        "<h2>Training curves</h2>",
        figures.get("curves", '<p class="muted">No metrics.jsonl in the run folder.</p>'),
    ]
    if history:
        parts.append(_table(("epoch", "train loss", "val loss", "val accuracy", "images/s", "seconds"),
                            [(r.get("epoch"), f"{r.get('train_loss', float('nan')):.4f}",
                              f"{r.get('val_loss', float('nan')):.4f}", f"{r.get('val_acc', float('nan')):.4f}",
                              f"{r.get('images_per_s', 0):,.0f}", f"{r.get('seconds', 0):.1f}") for r in history],
                            numeric=range(6)))
        parts.append(f'<p class="muted">Final epoch: train loss {last.get("train_loss", float("nan")):.4f}, '
                     f'validation accuracy {last.get("val_acc", float("nan")):.4f}; total training time '
                     f"{sum(r.get('seconds', 0) for r in history):.1f} s.</p>")
    parts += [
        "<h2>Test set: per-class accuracy and confusion matrix</h2>",
        '<div class="cols">',
        _table(("class", "accuracy", "images"), per_class, numeric=(1, 2)),
        figures["confusion"],
        "</div>",
        "<h2>Most confident mistakes</h2>",
        f'<p class="muted">{mistakes.wrong:,} of {mistakes.total:,} test images are misclassified.</p>',
        figures["mistakes"],
        "<h2>What the first layer learned: kernels</h2>",
        figures["kernels"],
        "<h2>Feature maps of one test image</h2>",
        figures["features"],
        "<h2>Layers</h2>",
        f'<p class="muted">Top-level layers for one 1x{h}x{w} input; FLOPs count multiply-adds as 2 and '
        "elementwise work as 0.</p>",
        _table(("layer", "type", "output shape", "params", "FLOPs"),
               [(prefix + r.name, r.layer_type, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.flops:,}")
                for r in rows] + [("total", "", "", f"{total:,}", f"{sum(r.flops for r in rows):,}")],
               numeric=(3, 4)),
        "<h2>Settings</h2>",
        _table(("setting", "value"), [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in config.items()])
        if config else '<p class="muted">No config.json in the run folder.</p>',
        "</body></html>",
    ]
    out = Path(out) if out is not None else folder.path / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:  # a browser never opens half a page
        f.write("\n".join(parts) + "\n")
    return out
