"""The book's own code runs with `import cnnlab as d2l`: every PyTorch cell of d2l §7.2-7.6 and §8.1-8.8.

tests/book/<chapter>.py holds the cells as scripts/extract_book_cells.py extracted them from d2l-en 23d7a5ae.
Each chapter runs in its own process through tests/run_book_chapter.py, cell by cell like a notebook kernel,
headless (MPLBACKEND=Agg), and what the book shows under its cells is checked: values where they are exact,
and every printed shape against the book's tables (tests/seed_tables.py) or shapes worked out from the
architecture (written next to each table below).

Default run: every cell of every chapter, except the training cells of the chapters whose models are costly
on a CPU (AlexNet, VGG, NiN at 224x224; GoogLeNet, ResNet, DenseNet, RegNet at 96x96). `pytest -m slow` runs
those chapters whole, training cells included (one epoch on a slice, see each file's header).
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from book_tables import ALEXNET_TABLE, GOOGLENET_TABLE, NIN_TABLE, REGNETX32_TABLE
from seed_tables import LENET_TABLE, RESNET18_TABLE, VGG_TABLE, table

TESTS = Path(__file__).parent
BOOK = TESTS / "book"
CHAPTERS = ["conv_layer", "padding_and_strides", "channels", "pooling", "lenet", "alexnet", "vgg", "nin",
            "googlenet", "batch_norm", "resnet", "densenet", "cnn_design"]
# PyTorch cells per chapter in d2l-en 23d7a5ae (98 in all).
CELLS = {"conv_layer": 10, "padding_and_strides": 5, "channels": 8, "pooling": 10, "lenet": 5, "alexnet": 4,
         "vgg": 5, "nin": 5, "googlenet": 10, "batch_norm": 8, "resnet": 12, "densenet": 9, "cnn_design": 7}
HEAVY = {"alexnet", "vgg", "nin", "googlenet", "resnet", "densenet", "cnn_design"}

# The chapters' layer tables: the seed's (LeNet, VGG, ResNet-18) and the chapter-8 ones (tests/book_tables.py).
SUMMARY_TABLES = {"lenet": LENET_TABLE, "alexnet": ALEXNET_TABLE, "vgg": VGG_TABLE, "nin": NIN_TABLE,
                  "googlenet": GOOGLENET_TABLE, "resnet": RESNET18_TABLE, "cnn_design": REGNETX32_TABLE}


def run_chapter(name: str, skip_fit: bool) -> dict[int, str]:
    """Run one chapter; returns each cell's printed output by cell number (skipped cells are absent)."""
    cmd = [sys.executable, str(TESTS / "run_book_chapter.py"), str(BOOK / f"{name}.py")]
    if skip_fit:
        cmd.append("--skip-fit")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    parts = re.split(r"^# %% \[(\d+)\]( skipped)?\n", proc.stdout, flags=re.M)
    out = {int(n): text for n, skipped, text in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)
           if not skipped}
    ran = [n for n in range(1, CELLS[name] + 1) if n in out]
    expected_skips = {n for n in range(1, CELLS[name] + 1) if skip_fit and "trainer.fit(" in _cells(name)[n - 1]}
    assert set(range(1, CELLS[name] + 1)) - set(ran) == expected_skips
    return out


def _cells(name: str) -> list[str]:
    return re.split(r"^# %% \[\d+\]$", (BOOK / f"{name}.py").read_text(), flags=re.M)[1:]


def flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def summary(text: str) -> list[str]:
    return [line for line in table(text) if "output shape:" in line]


def check_chapter(name: str, out: dict[int, str], trained: bool) -> None:
    """What the book shows under the chapter's cells."""
    if name in SUMMARY_TABLES:
        printed = [line for cell in out.values() for line in summary(cell)]
        assert printed == table(SUMMARY_TABLES[name])
    if name == "conv_layer":
        assert flat(out[3]) == "Out[3]:tensor([[19.,25.],[37.,43.]])"
        assert flat(out[7]) == "Out[7]:tensor([" + ",".join(["[0.,1.,0.,0.,0.,-1.,0.]"] * 6) + "])"
        assert flat(out[8]) == "Out[8]:tensor([" + ",".join(["[0.,0.,0.,0.,0.]"] * 8) + "])"
        losses = [float(v) for v in re.findall(r"epoch \d+, loss ([\d.]+)", out[9])]
        assert len(losses) == 5 and losses == sorted(losses, reverse=True) and losses[-1] < 0.1
        kernel = [float(v) for v in re.findall(r"-?\d+\.\d+", out[10])]
        assert abs(kernel[0] - 1) < 0.1 and abs(kernel[1] + 1) < 0.1  # the book learns [1, -1] back
    elif name == "padding_and_strides":
        assert [out[n].strip() for n in (2, 3, 4, 5)] == [
            f"Out[{n}]: torch.Size([{s}, {s}])" for n, s in ((2, 8), (3, 8), (4, 4), (5, 2))]
    elif name == "channels":
        assert flat(out[3]) == "Out[3]:tensor([[56.,72.],[104.,120.]])"
        assert out[5].strip() == "Out[5]: torch.Size([3, 2, 2, 2])"
        assert flat(out[6]) == "Out[6]:tensor([[[56.,72.],[104.,120.]],[[76.,100.],[148.,172.]]," \
                               "[[96.,128.],[192.,224.]]])"
        assert 8 in out  # the 1x1 convolution as a matrix product agrees (the cell asserts it)
    elif name == "pooling":
        assert flat(out[3]) == "Out[3]:tensor([[4.,5.],[7.,8.]])"
        assert flat(out[4]) == "Out[4]:tensor([[2.,3.],[5.,6.]])"
        assert flat(out[6]) == "Out[6]:tensor([[[[10.]]]])"
        assert flat(out[7]) == flat(out[8]).replace("Out[8]", "Out[7]") == "Out[7]:tensor([[[[5.,7.],[13.,15.]]]])"
        assert flat(out[10]) == "Out[10]:tensor([[[[5.,7.],[13.,15.]],[[6.,8.],[14.,16.]]]])"
    elif name == "batch_norm":
        gamma, beta = re.findall(r"tensor\(\[([^\]]*)\]", out[6])
        assert len(gamma.split(",")) == len(beta.split(",")) == 6  # one scale and shift per channel of conv 1
    elif name == "resnet":
        assert out[3].strip() == "Out[3]: torch.Size([4, 3, 6, 6])"
        assert out[4].strip() == "Out[4]: torch.Size([4, 6, 3, 3])"
        assert out[12].strip() == "Out[12]: torch.Size([4, 32, 96, 96])"
    elif name == "densenet":
        assert out[4].strip() == "Out[4]: torch.Size([4, 23, 8, 8])"  # 3 + 2 * 10 channels
        assert out[6].strip() == "Out[6]: torch.Size([4, 10, 4, 4])"
    if trained:
        fits = [n for n in out if "trainer.fit(" in _cells(name)[n - 1]]
        assert bool(fits) == (name not in {"conv_layer", "padding_and_strides", "channels", "pooling"})
        for n in fits:
            assert re.search(r"^epoch 1/1  train loss \d+\.\d+  val loss \d+\.\d+  val acc", out[n], re.M), out[n]


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_runs_and_prints_the_books_shapes(name):
    heavy = name in HEAVY
    check_chapter(name, run_chapter(name, skip_fit=heavy), trained=not heavy)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_chapter_trains(name):
    check_chapter(name, run_chapter(name, skip_fit=False), trained=True)


# --- the extracted files -------------------------------------------------------------------------------------


def test_the_extracted_chapters_are_the_books_98_cells():
    assert sorted(CHAPTERS) == sorted(p.stem for p in BOOK.glob("*.py"))
    assert sum(len(_cells(n)) for n in CHAPTERS) == sum(CELLS.values()) == 98
    for name in CHAPTERS:
        source = (BOOK / f"{name}.py").read_text()
        assert len(_cells(name)) == CELLS[name]
        assert "d2l-en (https://github.com/d2l-ai/d2l-en) at commit 23d7a5ae" in source
        code = "".join(_cells(name))
        assert "from d2l" not in code and "tab.selected" not in code
        assert code.count("import cnnlab as d2l") == (name != "padding_and_strides")  # §7.3 imports torch only
        ast.parse(source)
        for line in source.splitlines():  # each edit is visible on its line and listed in the header
            if "# shortened (book: " in line:
                old = line.split("# shortened (book: ")[1][:-1]
                assert f"{old} -> " in source


def _extractor():
    spec = importlib.util.spec_from_file_location("extract_book_cells",
                                                  TESTS.parent / "scripts" / "extract_book_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extractor_keeps_the_pytorch_tab_as_the_book_shows_it():
    ex = _extractor()
    markdown = "\n".join([
        "```{.python .input}", "%load_ext d2lbook.tab", "```",
        "```{.python .input}", "%%tab mxnet", "mx = 1", "```",
        "```{.python .input  n=3}", "%%tab pytorch, mxnet", "from d2l import torch as d2l", "```",
        "```{.python .input}", "%%tab all", "class A:", "    def f(self):",
        "        if tab.selected('mxnet'):", "            return 'mx'",
        "        if tab.selected('pytorch'):", "            x = 1", "", "            return x", "",
        "        if tab.selected('jax'):", "            return 'jax'", "", "y = A().f()", "```",
    ])
    cells, changes = ex.convert("conv_layer", markdown)
    assert cells == ["import cnnlab as d2l",
                     "class A:\n    def f(self):\n        x = 1\n\n        return x\n\ny = A().f()"]
    assert changes == []
    training = "trainer = d2l.Trainer(max_epochs=10, num_gpus=1)\ndata = d2l.FashionMNIST(batch_size=128)"
    cells, changes = ex.convert("lenet", markdown.replace("y = A().f()", training))
    assert cells[1].endswith(
        "trainer = d2l.Trainer(max_epochs=1, num_gpus=1)  # shortened (book: d2l.Trainer(max_epochs=10, num_gpus=1))\n"
        "data = d2l.FashionMNIST(batch_size=128, num_train=1024, num_val=256)  "
        "# shortened (book: d2l.FashionMNIST(batch_size=128))")
    assert len(changes) == 2
    with pytest.raises(SystemExit, match="max_epochs=10"):  # an edit that no longer applies is an error
        ex.convert("resnet", markdown)
