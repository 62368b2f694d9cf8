"""The seed's snippets (tests/seed/*.py, copied from the study notes) run with `import cnnlab as d2l` and print
what the seed shows, random values aside. Each runs in its own process, as a reader's script would."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seed_tables import LENET_TABLE, RESNET18_TABLE, VGG_TABLE, table

SEED_DIR = Path(__file__).parent / "seed"


def run_snippet(name, probe=None, **env):
    """Run a snippet as a script; with ``probe`` (a JSON path), under tests/_fit_probe.py, which records what
    each ``Trainer.fit`` call did to the weights."""
    wrapper = [str(Path(__file__).parent / "_fit_probe.py")] if probe else []
    cmd = [sys.executable, *wrapper, str(SEED_DIR / name), *([str(probe)] if probe else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_72_edge_detection_prints_the_seed_outputs():
    out = run_snippet("s72_edge.py")
    assert "tensor([[1., 1., 0., 0., 0., 0., 1., 1.]," in out
    assert out.count("[ 0.,  1.,  0.,  0.,  0., -1.,  0.]") == 6
    epochs = re.findall(r"epoch (\d+), loss ([\d.]+)", out)
    assert [int(e) for e, _ in epochs] == [2, 4, 6, 8, 10]
    losses = [float(loss) for _, loss in epochs]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1.0
    kernel = [float(v) for v in re.findall(r"-?\d+\.\d+", out.strip().splitlines()[-1])]
    assert abs(kernel[0] - 1) < 0.2 and abs(kernel[1] + 1) < 0.2  # the seed got [0.9483, -1.0276]


def test_73_to_75_print_the_seed_outputs():
    out = table(run_snippet("s73_s75_shapes_channels_pooling.py"))
    assert out[:5] == ["torch.Size([8, 8])", "torch.Size([8, 8])", "torch.Size([4, 4])", "torch.Size([2, 2])",
                       "torch.Size([3, 2, 2, 2])"]
    text = "\n".join(out)
    for block in ("[[ 56., 72.], [104., 120.]]", "[[ 76., 100.], [148., 172.]]", "[[ 96., 128.], [192., 224.]]"):
        assert block.replace(" ", "") in text.replace(" ", "").replace("\n", "")
    flat = text.replace(" ", "").replace("\n", "")
    assert "tensor([[4.,5.],[7.,8.]])tensor([[2.,3.],[5.,6.]])" in flat
    assert "tensor([[[[10.]]]])" in flat
    assert flat.count("tensor([[[[5.,7.],[13.,15.]]]])") == 2
    assert "tensor([[[[5.,7.],[13.,15.]],[[6.,8.],[14.,16.]]]])" in flat


def test_76_lenet_table_and_training_run(data_dir, tmp_path):
    report = tmp_path / "fit.json"
    out = run_snippet("s76_lenet.py", probe=report, CNNLAB_SEED_EPOCHS="1", CNNLAB_SEED_SLICE="3000")
    lines = table(out)
    assert lines[:12] == table(LENET_TABLE)
    assert sum(line.startswith("epoch 1/1 train loss") for line in lines) == 1
    (fit,) = json.loads(report.read_text())
    # Training moved every weight and bias of the seed's LeNet (5 layers), and downhill: one epoch on 3,000
    # images takes the validation loss from 2.53 (xavier init, seed 0) to 2.31 (about ln 10).
    assert len(fit["tensors"]) == 10 and fit["unchanged"] == []
    assert fit["val_loss_after"] < fit["val_loss_before"] - 0.05, fit


def test_82_86_vgg_and_resnet_tables():
    lines = table(run_snippet("s82_s86_vgg_resnet.py"))
    assert lines[:13] == table(VGG_TABLE)
    assert lines[13:15] == ["torch.Size([4, 3, 6, 6])", "torch.Size([4, 6, 3, 3])"]
    assert lines[15:21] == table(RESNET18_TABLE)
    assert lines[21] == "hparams 0.05"


@pytest.mark.parametrize("name", sorted(p.name for p in SEED_DIR.glob("*.py")))
def test_snippets_use_cnnlab_as_d2l(name):
    source = (SEED_DIR / name).read_text()
    assert "from d2l" not in source and ("import cnnlab as d2l" in source)
