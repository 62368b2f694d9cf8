"""`model_summary`: the per-layer table of shapes, parameters and FLOPs."""

import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models import create_model
from cnnlab.models.lenet import LeNet
from cnnlab.nn.summary import layer_stats, model_summary


def number(text: str, label: str) -> int:
    match = re.search(rf"^{label}: ([\d,]+)$", text, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{text}"
    return int(match.group(1).replace(",", ""))


def rows(text: str) -> list[list[str]]:
    """The table's body: the lines between the second and third rules, split into cells."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    return [line.split() for line in lines[rules[1] + 1 : rules[2]]]


@pytest.fixture(scope="module")
def lenet_summary():
    model = create_model("lenet")
    return model, model_summary(model, (1, 1, 28, 28))


def test_totals_equal_the_parameter_count(lenet_summary):
    model, text = lenet_summary
    total = sum(p.numel() for p in model.parameters())
    assert number(text, "Total params") == total == 61_706
    assert number(text, "Trainable params") == total
    assert sum(int(r[-2].replace(",", "")) for r in rows(text)) == total


def test_trainable_excludes_frozen_parameters():
    model = create_model("lenet")
    model.net[0].requires_grad_(False)
    text = model_summary(model, (1, 1, 28, 28))
    assert number(text, "Trainable params") == 61_706 - (6 * 25 + 6)
    assert number(text, "Non-trainable params") == 6 * 25 + 6


def test_lenet_rows(lenet_summary):
    model, text = lenet_summary
    body = rows(text)
    assert [r[1] for r in body] == [type(m).__name__ for m in model.net]
    assert body[0][:2] == ["0", "Conv2d"] and " ".join(body[0][2:6]) == "(1, 6, 28, 28)"
    assert body[-1][-2:] == ["850", "1,680"]  # 84 * 10 + 10 parameters; 2 * 84 * 10 FLOPs
    assert number(text, "Total FLOPs") == sum(int(r[-1].replace(",", "")) for r in body) > 0


def test_conv_flops_match_the_counter_on_each_layer_alone():
    model = create_model("lenet")
    stats = layer_stats(model, (2, 1, 28, 28))
    X = torch.zeros(2, 1, 28, 28)
    checked = 0
    with torch.no_grad():
        for layer, row in zip(model.net, stats, strict=True):
            if isinstance(layer, nn.Conv2d):
                with FlopCounterMode(display=False) as counter:
                    layer(X)
                assert row.flops == counter.get_total_flops() > 0
                # and the textbook count: 2 * C_out * H_out * W_out * C_in * kh * kw per example
                n, c_out, h, w = row.output_shape
                assert row.flops == 2 * n * c_out * h * w * layer.in_channels * 5 * 5
                checked += 1
            X = layer(X)
    assert checked == 2


def test_summary_of_lazy_model_materializes_it():
    model = LeNet()  # lazy, as the book builds it
    text = model_summary(model, (1, 1, 28, 28))
    # rows name the class a lazy layer becomes, as layer_summary prints it
    assert [r[1] for r in rows(text)][:2] == ["Conv2d", "Sigmoid"]
    assert number(text, "Total params") == 61_706
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


def test_resnet_rows_are_its_stages():
    model = create_model("resnet18", image_size=96)
    model.train()
    text = model_summary(model, (1, 1, 96, 96))
    body = rows(text)
    assert [r[0] for r in body] == ["b1", "b2", "b3", "b4", "b5", "last"]
    assert " ".join(body[4][2:6]) == "(1, 512, 3, 3)"
    assert number(text, "Total params") == 11_178_378
    assert all(m.training for m in model.modules())  # summarized in eval mode, then restored


def test_module_without_net_uses_its_children():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    stats = layer_stats(model, (1, 3, 8, 8))
    assert [s.layer_type for s in stats] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert stats[-1].output_shape == (1, 2)
    assert stats[-1].flops == 2 * 144 * 2
