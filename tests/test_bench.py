"""`cnnlab bench`: the FLOP count, the book's per-image dataset, and a tiny side-by-side run through the CLI."""

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

from cnnlab import bench
from cnnlab.bench import BookDataset, compare, format_result, matmul_flops, training_flops_per_image
from cnnlab.cli.main import main
from cnnlab.data.fashion_mnist import FashionMNIST
from cnnlab.models import create_model
from cnnlab.training.trainer import Trainer


def test_lenet_training_flops_match_the_hand_count():
    # Forward MACs of the seed's LeNet at 28x28: conv1 784*6*25, conv2 100*16*150, fc 400*120 + 120*84 + 84*10;
    # backward costs twice the forward except conv1's input gradient, which autograd skips for the images.
    conv1, conv2, fc = 784 * 6 * 25, 100 * 16 * 150, 400 * 120 + 120 * 84 + 84 * 10
    expected = 2 * (3 * (conv1 + conv2 + fc) - conv1)
    assert training_flops_per_image(create_model("lenet"), (1, 28, 28)) == pytest.approx(expected, rel=1e-6)


def test_matmul_flops_is_2n_cubed_over_the_median_time(monkeypatch):
    # The arithmetic alone, on a fake clock: the five timed matmuls "take" these seconds (the warm-up is not
    # timed), so the rate must be 2 n^3 FLOPs over their median, 3 s. A rate off by 1000x (milliseconds for
    # seconds), by 2x (n^3 FLOPs) or taken from the mean (22 s) or the first repeat cannot match.
    durations = iter([1.0, 100.0, 2.0, 3.0, 4.0])
    clock = {"now": 0.0, "running": False}

    def perf_counter():
        if clock["running"]:
            clock["now"] += next(durations)
        clock["running"] = not clock["running"]
        return clock["now"]

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=perf_counter))
    calls = []
    real_matmul = torch.Tensor.__matmul__

    def matmul(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real_matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    n = 64
    assert bench.matmul_flops(n=n, repeats=5) == 2 * n**3 / 3.0
    assert calls == [((n, n), (n, n))] * 6  # the warm-up and five timed products of n x n matrices
    assert next(durations, None) is None


def test_matmul_flops_on_the_real_clock_is_a_rate_in_flop_per_second():
    flops = matmul_flops(n=128, repeats=3)
    # In FLOP/s, any CPU lies far inside these bounds; GFLOP/s or a time in seconds would not.
    assert math.isfinite(flops) and 1e7 < flops < 1e14


@pytest.mark.parametrize("image_size", [28, 40])
def test_book_dataset_matches_the_batched_loader(image_size):
    data = FashionMNIST(batch_size=4, resize=image_size, normalize=True, num_train=8, num_val=8)
    X, y = next(iter(data.val_dataloader()))
    book = BookDataset(data.val_images, data.val_labels, image_size, normalize=True)
    for i in range(4):
        x, label = book[i]
        assert x.shape == (1, image_size, image_size) and int(label) == int(y[i])
        torch.testing.assert_close(x, X[i], atol=1e-5, rtol=1e-5)


def test_book_dataset_augmentation_keeps_the_pixels():
    images = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    x, _ = BookDataset(images, torch.zeros(1, dtype=torch.long), augment=True)[0]
    padded = F.pad(images[0].float() / 255, (2, 2, 2, 2))
    crops = [padded[dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
    assert any(torch.equal(x[0], c) or torch.equal(x[0], c.flip(-1)) for c in crops)


def test_compare_runs_all_three_pipelines_from_the_same_weights(monkeypatch):
    # Each pipeline's weights as it starts training: the book's and the plain loop's at their first epoch,
    # cnnlab's as run_training hands its model to Trainer.fit.
    start: dict[str, dict[str, torch.Tensor]] = {}

    def snapshot(name, model):
        if name not in start:
            start[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    book_epoch, plain_epoch, fit = bench._book_epoch, bench.PlainLoop.epoch, Trainer.fit

    def book(model, *args):
        snapshot("book", model)
        return book_epoch(model, *args)

    def plain(self, model, *args):
        snapshot("plain", model)
        return plain_epoch(self, model, *args)

    def cnnlab(self, model, *args, **kwargs):
        snapshot("cnnlab", model)
        return fit(self, model, *args, **kwargs)

    monkeypatch.setattr(bench, "_book_epoch", book)
    monkeypatch.setattr(bench.PlainLoop, "epoch", plain)
    monkeypatch.setattr(Trainer, "fit", cnnlab)
    result = compare("lenet-relu", epochs=1, max_steps=3, num_val=256, book_workers=0, log=None)
    assert set(result["pipelines"]) == set(start) == {"book", "plain", "cnnlab"}
    reference = start["cnnlab"]
    assert len(reference) == 10  # LeNet's five layers, weight and bias
    for name in ("book", "plain"):
        assert start[name].keys() == reference.keys()
        different = [k for k, v in reference.items() if not torch.equal(start[name][k], v)]
        assert not different, f"{name} starts from other weights than cnnlab: {different}"
    assert result["images_per_epoch"] == 3 * 128 and result["val_images"] == 256
    for row in result["pipelines"].values():
        assert row["seconds"] > 0 and row["images_per_s"] > 0 and 0 <= row["val_acc"] <= 1
    text = format_result(result)
    assert "book" in text and "cnnlab" in text and "load average" in text and "GFLOP/s" in text


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "lenet", "--epochs", "1", "--max-steps", "2", "--num-val", "128",
                 "--book-workers", "0", "--no-plain", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "of fp32 mm" in text
    figures = json.loads(out.read_text())
    assert set(figures["pipelines"]) == {"book", "cnnlab"}
    assert figures["flops_per_image"] > 2e6


def test_cli_bench_rejects_a_bad_epoch_count(capsys):
    assert main(["bench", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
