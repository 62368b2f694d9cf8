"""notebooks/ run in real Jupyter kernels (nbclient), as a reader runs them, and show what the book shows.

Every cell must run; a cell that calls `trainer.fit` must show the book's live figure as one inline PNG
(updated in place, not appended), the progress bar must be tqdm.auto's notebook widget, and nothing may be
written to stderr. d2l's plotting helpers (`d2l.plot`, `d2l.show_images`, `FashionMNIST.visualize`) show
one inline PNG when they are a cell's value. The VGG and ResNet notebooks train at 224x224 and 96x96, so
they run with `pytest -m slow`; LeNet's is the fit notebook of the default run. §7.1 has no code in the
book: its notebook checks the seed's three points about it with cnnlab's operators.
"""

from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
SLOW = {"8.2-vgg", "8.6-resnet"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def execute(nb, tmp_path):
    """Run every cell in a fresh python3 kernel started in tmp_path; an error in any cell fails the test.

    The kernel's RNG is seeded first (a cell run before the notebook's, not kept in it), as tests/run_book_chapter.py
    seeds the book's chapters: §7.4's own check, a sum of 18 float32 differences under 1e-6, fails on about one
    unseeded draw in ten, the book's code included (its matmul rounds a 3-term dot product differently from the
    sum of separately rounded products). Seed 1 draws values whose two results differ by one float32 step
    (1.3e-8 in all, on an Intel Xeon), far from the bound on any CPU; seed 0 came to 7.9e-7.
    """
    nb.cells.insert(0, nbformat.v4.new_code_cell("import torch\ntorch.manual_seed(1)"))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nb.cells.pop(0)  # the notebook's own cells, as the checks below count them
    return nb


def images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def test_the_notebooks_are_the_seeds_sections_without_outputs():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["7.1-why-conv", "7.2-conv-layer", "7.3-padding-and-strides", "7.4-channels", "7.5-pooling",
                     "7.6-lenet", "8.2-vgg", "8.6-resnet"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code)
        assert "import cnnlab as d2l" in code[0].source or name == "7.3-padding-and-strides"
        assert not any("from d2l" in c.source for c in code)


@pytest.mark.parametrize("name", [
    pytest.param(p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
    for p in sorted(NOTEBOOKS.glob("*.ipynb"))
])
def test_notebook_runs_in_a_kernel(name, tmp_path, data_dir):
    nb = execute(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4), tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"], cell.source
    fits = [c for c in code if "trainer.fit(" in c.source]
    assert bool(fits) == (name in {"7.6-lenet", "8.2-vgg", "8.6-resnet"})
    for cell in fits:
        assert images(cell) == 1  # the live figure, redrawn in place
        assert any(WIDGET in out.get("data", {}) for out in cell.outputs)  # tqdm.auto's notebook bar
        assert any(o.output_type == "stream" and "epoch 1/1  train loss" in o.text for o in cell.outputs)
    if name == "7.1-why-conv":  # the seed's three points about §7.1, checked
        assert "615,440 parameters, a 3x3 d2l.Conv2D 10" in code[1].outputs[0].text
        assert code[2].outputs[-1]["data"]["text/plain"] == "True"  # shifted input, shifted output
        window = torch.zeros(8, 8, dtype=torch.int32)
        window[4:7, 2:5] = 1
        assert code[3].outputs[-1]["data"]["text/plain"] == repr(window)  # the 3x3 window of H[4, 2], no more
    if name in ("7.6-lenet", "8.6-resnet"):
        assert "d2l.explain(model" in code[-1].source and images(code[-1]) == 1  # one Grad-CAM explanation
    if name == "7.6-lenet":
        assert images(code[-2]) == 1  # data.visualize(...)
        assert "Conv2d output shape:\t torch.Size([1, 6, 28, 28])" in code[3].outputs[0].text


def test_plotting_helpers_show_inline(tmp_path, data_dir):
    cells = [
        "import cnnlab as d2l\nimport torch\nx = torch.arange(-2.0, 2.0, 0.1)",
        "d2l.plot(x, [x ** 2, 2 * x - 1], 'x', 'f(x)', legend=['f(x)', 'Tangent line (x=1)'])",  # §2.4
        "data = d2l.FashionMNIST(batch_size=8, num_train=16, num_val=8)\n"
        "batch = next(iter(data.val_dataloader()))\ndata.visualize(batch)",  # §4.2
        "d2l.show_images(batch[0].squeeze(1), 2, 4, titles=data.text_labels(batch[1]))",
        "board = d2l.ProgressBoard('x')\n"  # d2l §3.2.2's demo of the board: every 2 points averaged into one
        "for i in range(0, 20):\n    board.draw(i / 2, i % 3, 'sin', every_n=2)\nboard.flush()",
        "fig = d2l.plot(x, x)\nNone",  # a figure that is not the cell's value is not shown (pyplot is not used)
        # The training board throttles: 50 epochs (200 points) in 25 s redraw at most once a second, plus the
        # last time, always in the same image.
        "from cnnlab.visual.board import ProgressBoard, TrainingBoard\nnow = [0.0]\n"
        "board = ProgressBoard(xlabel='epoch', xlim=[0, 50], min_interval=1.0, clock=lambda: now[0])\n"
        "tb = TrainingBoard(max_epochs=50, num_batches=10, board=board)\nfor e in range(50):\n"
        "    now[0] = 0.5 * e  # a fake clock: each epoch takes half a second\n"
        "    for s in range(10):\n        tb.step(torch.tensor(1.0 / (e + 1)))\n"
        "    tb.epoch({'epoch': e + 1, 'val_loss': 1.0 / (e + 1), 'val_acc': 0.5})\ntb.close()\n"
        # At most one redraw a second: at 0, 1, ..., 24 s of the fake clock (epochs 1, 3, ..., 49), plus the last.
        "assert tb.board.redraws == 25 + 1, tb.board.redraws\n"
        "assert len(tb.board.data['train_loss']) == 100 and len(tb.board.data['val_acc']) == 50",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nb = execute(nb, tmp_path)
    assert [images(c) for c in nb.cells] == [0, 1, 1, 1, 1, 0, 1]
