"""The command line beyond Fashion-MNIST: `train --images`, `data export-folder`, `export` (ONNX) and
`train --tensorboard`, with class names that are hostile text."""

import csv
import html
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.inference.loaded import load_trained

HOSTILE = "<img src=x onerror=alert(1)>"
QUOTED = "a&b \"c\" 'd'"


def _colour_folder(root, names=(HOSTILE, QUOTED), per_class=24, size=12, seed=0):
    """Two classes a CNN tells apart by colour: reddish and bluish noise."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            pixels[..., 0 if label == 0 else 2] += 120
            Image.fromarray(pixels, mode="RGB").save(folder / f"{i:03d}.png")
    return root


def test_train_on_an_image_folder_then_evaluate_predict_report_and_export(tmp_path, capsys):
    folder = _colour_folder(tmp_path / "pictures")
    run = tmp_path / "run"
    assert main(["train", "--images", str(folder), "--model", "lenet-relu", "--epochs", "4", "--batch-size", "8",
                 "--no-progress", "--out", str(run), "--report"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy 1.0000" in out  # colour separates the classes; the val split is 10% of 48 images
    config = json.loads((run / "config.json").read_text())
    assert config["images"] == str(folder) and config["image_size"] == 32  # colour images: 32x32 by default
    loaded = load_trained(run)
    assert loaded.class_names == tuple(sorted([HOSTILE, QUOTED])) and loaded.channels == 3
    assert loaded.model.model_kwargs["in_channels"] == 3 and loaded.model.model_kwargs["num_classes"] == 2

    # Class names are data: escaped in the page, never markup.
    page = (run / "report.html").read_text()
    assert HOSTILE not in page and html.escape(HOSTILE) in page

    picture = folder / HOSTILE / "000.png"
    assert main(["predict", str(run), str(picture), "--top", "1"]) == 0
    predicted = capsys.readouterr().out.strip()
    assert predicted.split(": ", 1)[1].rsplit(" ", 1)[0] == HOSTILE  # printed as given, never interpreted

    assert main(["evaluate", str(run)]) == 0
    assert "test accuracy 1.0000" in capsys.readouterr().out

    # A colour run explained (Integrated Gradients, RGB summed) and used through its safetensors file.
    assert main(["explain", str(run), str(picture), "--test-index", "0", "--method", "ig"]) == 0
    assert "grid:" in capsys.readouterr().out and len(list((run / "explain").glob("*.png"))) == 3
    assert main(["export", str(run), "--format", "safetensors", "--out", str(run / "m.safetensors")]) == 0
    capsys.readouterr()
    assert main(["predict", str(run / "m.safetensors"), str(picture), "--top", "1"]) == 0
    assert capsys.readouterr().out.strip() == predicted

    pytest.importorskip("onnxruntime")
    from cnnlab.inference.export import read_metadata

    assert main(["export", str(run)]) == 0
    assert "same top-1 class on 100.00%" in capsys.readouterr().out
    metadata = read_metadata(run / "model.onnx")
    assert metadata["class_names"] == list(loaded.class_names) and metadata["channels"] == 3
    # Nothing was written anywhere a class name could point.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures", "run"]


def test_a_crafted_checkpoints_class_names_never_become_paths(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "256", "--num-val", "64",
                 "--no-progress", "--data-dir", str(data_dir), "--out", str(run)]) == 0
    names = ["../../x", HOSTILE, "/etc/passwd", *[f"c{i}" for i in range(7)]]
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        state["data_settings"]["classes"] = names  # what a hostile folder could put there
        torch.save(state, run / name)
    before = set(os.listdir(tmp_path))
    assert main(["report", str(run), "--data-dir", str(data_dir)]) == 0
    assert main(["predict", str(run), "--test-index", "0", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert set(os.listdir(tmp_path)) == before and not (tmp_path.parent / "x").exists()
    page = (run / "report.html").read_text()
    assert HOSTILE not in page and html.escape(HOSTILE) in page


def test_export_folder_writes_fashion_mnist_as_class_folders_that_train_reads(tmp_path, data_dir, capsys):
    out = tmp_path / "fashion"
    for split, limit in (("train", 300), ("test", 100)):
        assert main(["data", "export-folder", str(out), "--split", split, "--limit", str(limit),
                     "--data-dir", str(data_dir)]) == 0
    classes = sorted(os.listdir(out / "train"))
    assert len(classes) == 10 and classes[0] == "0_T-shirt_top"  # the slash of "T-shirt/top" is no path
    assert sum(len(os.listdir(out / "test" / c)) for c in classes) == 100
    run = tmp_path / "run"
    assert main(["train", "--images", str(out), "--model", "lenet-relu", "--epochs", "1", "--no-progress",
                 "--out", str(run)]) == 0
    assert "on 100 images" in capsys.readouterr().out  # scored on the folder's own test split


def test_a_training_image_damaged_after_training_does_not_block_the_test_split(tmp_path, capsys):
    folder = tmp_path / "pictures"
    _colour_folder(folder / "train", per_class=8)
    _colour_folder(folder / "test", per_class=4, seed=1)
    run = tmp_path / "run"
    assert main(["train", "--images", str(folder), "--model", "lenet-relu", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--out", str(run)]) == 0
    (folder / "train" / HOSTILE / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged since")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0  # export reads its check images the same way (test_loader)
    assert "(8 images)" in capsys.readouterr().out
    loaded = load_trained(run)
    images, labels = loaded.test_split()
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == [0] * 4 + [1] * 4
    assert next(iter(loaded.test_loader(batch_size=1000)))[0].shape == (8, 3, 32, 32)


def test_a_test_split_without_one_class_is_scored_with_the_models_labels(tmp_path, capsys):
    folder = tmp_path / "pictures"
    _colour_folder(folder / "train", per_class=8)
    _colour_folder(folder / "test", names=(QUOTED,), per_class=4, seed=1)  # the second class alone
    run = tmp_path / "run"
    assert main(["train", "--images", str(folder), "--model", "lenet-relu", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--out", str(run)]) == 0
    assert "holds 1 of the 2 classes" in capsys.readouterr().out
    loaded = load_trained(run)
    images, labels = loaded.test_split()  # decoded alone, labelled by the model's classes: 1, not its own 0
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [1] * 4
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(4 images)" in out and f"{QUOTED:<12}" in out


def test_bad_image_folder_arguments_are_one_line_errors(tmp_path, capsys):
    folder = _colour_folder(tmp_path / "pictures", per_class=4)
    (folder / HOSTILE / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["train", "--images", str(folder), "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "cnnlab train --skip-bad" in err and "Traceback" not in err
    assert main(["train", "--images", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert main(["train", "--images", str(folder), "--channels", "2"]) == 2
    assert main(["train", "--val-split", "1.5"]) == 2
    capsys.readouterr()


def test_tensorboard_scalars_equal_metrics_csv_and_resume_appends(tmp_path, data_dir, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["--model", "lenet-relu", "--epochs", "2", "--num-train", "256", "--num-val", "64", "--no-progress",
            "--data-dir", str(data_dir), "--tensorboard"]
    assert main(["train", *args, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    config["epochs"] = 3  # continue the finished run for one more epoch
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 0
    capsys.readouterr()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    for tag, column in (("train/loss", "train_loss"), ("val/loss", "val_loss"), ("val/accuracy", "val_acc"),
                        ("lr", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3], tag  # one event per epoch, none repeated by the resume
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
