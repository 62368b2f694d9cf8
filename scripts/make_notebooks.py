"""Write notebooks/*.ipynb: the seed's sections of d2l (7.2-7.6, 8.2, 8.6) as notebooks, with cnnlab as d2l.

Usage: ``python scripts/make_notebooks.py`` (needs nbformat, in the dev extra).

Each notebook holds the book's PyTorch cells for its section as tests/book/<chapter>.py keeps them (the
import line is ``import cnnlab as d2l``; the training cells train one epoch on a slice, marked
``# shortened``), after a title cell that says where they come from. In Jupyter, ``trainer.fit`` draws the
book's live figure (cnnlab.visual.board). The notebooks are stored without outputs; rerun this script after
regenerating tests/book/.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "tests" / "book"
OUT = ROOT / "notebooks"

# (section, chapter file in tests/book, title in the book, page on d2l.ai)
CNN, MODERN = "chapter_convolutional-neural-networks", "chapter_convolutional-modern"
SECTIONS = [
    ("7.2", "conv_layer", "Convolutions for Images", f"{CNN}/conv-layer"),
    ("7.3", "padding_and_strides", "Padding and Stride", f"{CNN}/padding-and-strides"),
    ("7.4", "channels", "Multiple Input and Multiple Output Channels", f"{CNN}/channels"),
    ("7.5", "pooling", "Pooling", f"{CNN}/pooling"),
    ("7.6", "lenet", "Convolutional Neural Networks (LeNet)", f"{CNN}/lenet"),
    ("8.2", "vgg", "Networks Using Blocks (VGG)", f"{MODERN}/vgg"),
    ("8.6", "resnet", "Residual Networks (ResNet) and ResNeXt", f"{MODERN}/resnet"),
]

# One explanation at the end of a training notebook (cnnlab's, not the book's: docs/explain.md).
EXPLAIN = [
    ("markdown", "Why did the model predict what it did? One explanation, cnnlab's addition to the book "
                 "(`d2l.explain`, Grad-CAM by Captum, see docs/explain.md): the heat map marks where the last "
                 "convolutional block found the evidence for the predicted class."),
    ("code", "from IPython.display import Image\n\nfrom cnnlab.visual.plotting import plot_overlays\n\n"
             "X, y = next(iter(data.val_dataloader()))\n"
             "X, y = X[:8].to(next(model.parameters()).device), y[:8]\n"
             "maps = d2l.explain(model, X, method=\"gradcam\")  # one (H, W) map per image\n"
             "preds = model(X).argmax(1).cpu()\n"
             "titles = [f\"true {t}\\npred {p}\" for t, p in zip(data.text_labels(y), data.text_labels(preds))]\n"
             "Image(plot_overlays(X[:, 0].cpu(), maps.cpu(), titles, \"gradcam.png\", "
             "\"Grad-CAM of the predicted class\"))"),
]

# Cells added after the book's own, each from a nearby section of the book, to show its helpers inline.
EXTRA = {
    "lenet": [
        ("markdown", "Fashion-MNIST's validation images as d2l §4.2 shows them "
                     "(`FashionMNIST.visualize`, inline like every cnnlab figure):"),
        ("code", "X, y = next(iter(data.val_dataloader()))\ndata.visualize((X, y))"),
        *EXPLAIN,
    ],
    "resnet": EXPLAIN,
}

INTRO = """# {section} {title}

The PyTorch code of [d2l.ai §{section}](https://d2l.ai/{page}.html) (d2l-en commit 23d7a5ae), cell by cell,
with one change: `import cnnlab as d2l` in place of `from d2l import torch as d2l`.{training}

Sample code (c) Amazon.com, Inc. or its affiliates, under the book's modified MIT license."""

TRAINING = """

The book trains for 10 epochs on all 60,000 images; here the training cell trains **one epoch on a slice**
(the lines marked `# shortened`) so that it runs in seconds on a laptop CPU. Put the book's line back to train
for real. While it trains, `trainer.fit` draws the book's figure (train loss, val loss, val acc by epoch)."""


def book_cells(chapter: str) -> list[str]:
    source = (BOOK / f"{chapter}.py").read_text(encoding="utf-8")
    return [cell.strip("\n") for cell in re.split(r"^# %% \[\d+\]$", source, flags=re.M)[1:]]


def notebook(section: str, chapter: str, title: str, page: str):
    cells = book_cells(chapter)
    trains = any("trainer.fit(" in c for c in cells)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    intro = INTRO.format(section=section, title=title, page=page, training=TRAINING if trains else "")
    nb.cells = [nbformat.v4.new_markdown_cell(intro)] + [nbformat.v4.new_code_cell(c) for c in cells]
    for kind, text in EXTRA.get(chapter, []):
        nb.cells.append(nbformat.v4.new_code_cell(text) if kind == "code" else nbformat.v4.new_markdown_cell(text))
    for k, cell in enumerate(nb.cells):
        cell.id = f"{chapter.replace('_', '-')}-{k}"  # stable ids, so regenerating changes nothing
    return nb


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for section, chapter, title, page in SECTIONS:
        path = OUT / f"{section}-{chapter.replace('_', '-')}.ipynb"
        nbformat.write(notebook(section, chapter, title, page), path)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
