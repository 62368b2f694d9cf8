"""`cnnlab bench`: the FLOP count, the book's per-image dataset, and a tiny side-by-side run through the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from cnnlab.bench import BookDataset, compare, format_result, matmul_flops, training_flops_per_image
from cnnlab.cli import main
from cnnlab.data import FashionMNIST
from cnnlab.models import create_model


def test_lenet_training_flops_match_the_hand_count():
    # Forward MACs of the seed's LeNet at 28x28: conv1 784*6*25, conv2 100*16*150, fc 400*120 + 120*84 + 84*10;
    # backward costs twice the forward except conv1's input gradient, which autograd skips for the images.
    conv1, conv2, fc = 784 * 6 * 25, 100 * 16 * 150, 400 * 120 + 120 * 84 + 84 * 10
    expected = 2 * (3 * (conv1 + conv2 + fc) - conv1)
    assert training_flops_per_image(create_model("lenet"), (1, 28, 28)) == pytest.approx(expected, rel=1e-6)


def test_matmul_flops_is_positive_and_finite():
    flops = matmul_flops(n=128, repeats=3)
    assert 1e6 < flops < 1e15


@pytest.mark.parametrize("size", [28, 40])
def test_book_dataset_matches_the_batched_loader(size):
    data = FashionMNIST(batch_size=4, resize=size, normalize=True, num_train=8, num_val=8)
    X, y = next(iter(data.val_dataloader()))
    book = BookDataset(data.val_images, data.val_labels, size, normalize=True)
    for i in range(4):
        x, label = book[i]
        assert x.shape == (1, size, size) and int(label) == int(y[i])
        torch.testing.assert_close(x, X[i], atol=1e-5, rtol=1e-5)


def test_book_dataset_augmentation_keeps_the_pixels():
    images = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    x, _ = BookDataset(images, torch.zeros(1, dtype=torch.long), augment=True)[0]
    padded = F.pad(images[0].float() / 255, (2, 2, 2, 2))
    crops = [padded[dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
    assert any(torch.equal(x[0], c) or torch.equal(x[0], c.flip(-1)) for c in crops)


def test_compare_runs_all_three_pipelines_from_the_same_weights():
    result = compare("lenet-relu", epochs=1, max_steps=3, num_val=256, book_workers=0, log=None)
    assert set(result["pipelines"]) == {"book", "plain", "cnnlab"}
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
