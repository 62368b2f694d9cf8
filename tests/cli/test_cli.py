"""The `cnnlab` command line: a tiny real run through a subprocess, then evaluate, predict and the errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnlab.cli.main import main

TINY = ["--num-train", "1000", "--num-val", "300", "--no-progress"]


def _run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = _run("train", "--model", "lenet-relu", "--epochs", "2", "--seed", "5", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and str(out) in proc.stdout
    assert "epoch 2/2" in proc.stdout
    return out


def test_train_writes_the_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last.pt", "best.pt"} <= names


def test_resume_of_a_finished_run_is_a_no_op(run_dir):
    before = (run_dir / "last.pt").stat().st_mtime_ns
    proc = _run("train", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "already finished" in proc.stdout
    assert (run_dir / "last.pt").stat().st_mtime_ns == before


def test_evaluate_prints_accuracy_table_and_writes_confusion(run_dir, tmp_path, capsys):
    out = tmp_path / "confusion.png"
    assert main(["evaluate", str(run_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "ankle boot" in text and "t-shirt" in text
    accuracy = float(text.split("test accuracy ")[1].split()[0])
    assert 0.5 < accuracy <= 1.0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_predict_a_png_written_here(run_dir, tmp_path, capsys):
    from PIL import Image

    from cnnlab.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist(train=False)
    # A trouser from the test set, saved as a light-background photo would be (inverted, 3x larger, RGB).
    index = int((labels == 1).nonzero()[0])
    picture = Image.fromarray((255 - images[index]).numpy()).resize((84, 84)).convert("RGB")
    picture.save(tmp_path / "trouser.png")
    assert main(["predict", str(run_dir), str(tmp_path / "trouser.png"), "--test-index", "0", "1",
                 "--grid", str(tmp_path / "grid.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(tmp_path / "trouser.png") + ": trouser")
    probs = [float(part.rsplit(" ", 1)[1]) for part in lines[0].split(": ", 1)[1].split(", ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert lines[1].startswith("test[0] (true: ankle boot)")
    _assert_a_drawn_png(tmp_path / "grid.png", wider_than_high=True)  # three tiles in one row


def test_python_dash_m_and_help():
    proc = _run("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "evaluate" in proc.stdout
    proc = _run("train", "--help")
    assert "global batch" in proc.stdout


def test_summary_and_models(capsys):
    assert main(["models"]) == 0
    assert "resnet18" in capsys.readouterr().out.split()
    assert main(["summary", "lenet", "--input", "1,1,28,28"]) == 0
    assert "61,706" in capsys.readouterr().out


def test_demo_edge(capsys, tmp_path):
    assert main(["demo", "edge", "--plot", str(tmp_path / "edge.png")]) == 0
    out = capsys.readouterr().out
    assert "epoch 10, loss" in out
    kernel = [float(v) for v in out.split("learned kernel: tensor([[")[1].split("]]")[0].split(",")]
    assert kernel == pytest.approx([1.0, -1.0], abs=0.1)  # the book's K = [[1, -1]], recovered
    _assert_a_drawn_png(tmp_path / "edge.png", wider_than_high=True)  # X, K and Y side by side


def _assert_a_drawn_png(path, wider_than_high):
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 50
        assert (img.width > img.height) == wider_than_high
        low, high = img.convert("L").getextrema()
        assert high - low > 100  # something was drawn, not a blank canvas


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--model", "nosuchnet"], "known models:"),
        (["train", "--epochs", "0"], "positive integer"),
        (["train", "--lr", "abc"], "expected a number"),
        (["train", "--lr", "nan"], "finite"),
        (["train", "--lr", "-1", "--epochs", "1"], "--lr must be a positive"),
        (["train", "--batch-size", "-4"], "positive integer"),
        (["train", "--optimizer", "rmsprop"], "invalid choice"),
        (["train", "--resume", "/nonexistent/run"], "no such run folder"),
        (["evaluate", "/nonexistent/run"], "no such run folder"),
        (["predict", "/nonexistent/run", "x.png"], "no such run folder"),
        (["summary", "nosuchnet"], "known models"),
        (["summary", "lenet", "--input", "1,1,28"], "N,C,H,W"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert err.count("\n") == 1 and err.startswith("cnnlab"), err  # one line: no usage block, no traceback
    if "invalid choice" in words or "expected" in words or "positive integer" in words or "finite" in words:
        assert "see `cnnlab train --help`" in err  # argparse's own errors point at the help


def test_missing_data_lists_places_and_remedies(tmp_path, capsys, monkeypatch):
    import cnnlab.data.files

    monkeypatch.setattr(cnnlab.data.files, "default_data_dirs", lambda: (tmp_path / "nowhere", tmp_path / "nor-here"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and str(tmp_path / "nor-here") in err
    assert "apt-get install dataset-fashion-mnist" in err and "cnnlab data download" in err
    assert err.count("\n") == 1
    # A folder named with --data-dir is the only place looked at, and the remedy puts the data there.
    assert main(["train", "--data-dir", str(tmp_path / "empty"), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'} (the folder given) holds none" in err and str(tmp_path / "nowhere") not in err
    assert f"cnnlab data download --data-dir {tmp_path / 'empty'}" in err and err.count("\n") == 1


def test_predict_errors(run_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir)]) == 2
    assert "IMAGE" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--test-index", "10000"]) == 2
    assert "out of range" in capsys.readouterr().err
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(run_dir), str(tmp_path / "notes.png")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_file_works_where_run_folder_does(run_dir, capsys):
    assert main(["predict", str(run_dir / "last.pt"), "--test-index", "3"]) == 0
    assert capsys.readouterr().out.startswith("test[3]")
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["config"]["model"] == "lenet-relu" and state["epoch"] == 2


# -- data subcommands -----------------------------------------------------------------------------------------------

def test_data_info_show_and_download_from_a_mirror(data_dir, tmp_path, capsys):
    import shutil

    from cnnlab.data import files

    assert main(["data", "info", "--data-dir", str(data_dir)]) == 0
    info = capsys.readouterr().out
    assert f"Fashion-MNIST in {data_dir}" in info
    assert "train 60,000 images of 28x28, 6,000 to 6,000 per class" in info and "test  10,000 images" in info
    grid = tmp_path / "grid.png"
    assert main(["data", "show", "--split", "test", "--n", "5", "--out", str(grid), "--data-dir", str(data_dir)]) == 0
    assert "wrote 5 test images" in capsys.readouterr().out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in files.FILE_NAMES:
        source = files.data_file(data_dir, name)
        shutil.copyfile(source, mirror / f"{name}.gz") if source.suffix == ".gz" else \
            (mirror / f"{name}.gz").write_bytes(__import__("gzip").compress(source.read_bytes(), compresslevel=1))
    dest = tmp_path / "dest"
    # Debian recompressed the archives: the official archive MD5 refuses them, the data MD5 accepts them.
    assert main(["data", "download", "--data-dir", str(dest), "--mirror", mirror.as_uri()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d" in err
    assert main(["data", "download", "--data-dir", str(dest), "--mirror", mirror.as_uri(), "--any-archive"]) == 0
    assert f"Fashion-MNIST ready in {dest}" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{name}.gz" for name in files.FILE_NAMES)
    assert main(["data", "info", "--data-dir", str(dest)]) == 0
    assert "checksums verified" in capsys.readouterr().out


def test_a_diverging_run_exits_3_without_naming_a_checkpoint_that_does_not_exist(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", "lenet-relu", "--lr", "1e30", "--epochs", "2", "--data-dir", str(data_dir),
                 "--num-train", "512", "--num-val", "128", "--no-progress", "--no-bf16", "--out", str(run)])
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged; try a lower --lr (the rate was " in err
    assert "in epoch 1" in err and "last.pt" not in err and not (run / "last.pt").exists()


def test_ctrl_c_says_what_the_run_folder_holds_and_claims_nothing_more(tmp_path, monkeypatch, capsys, data_dir):
    # It always said "the last finished epoch is saved in last.pt", also where no run folder or checkpoint existed.
    from PIL import Image

    import cnnlab.recipes.auto
    import cnnlab.training.trainer

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    folder = tmp_path / "images"
    for k, name in enumerate(("dark", "light")):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(torch.full((16, 16), 40 + 150 * k + i, dtype=torch.uint8).numpy()).save(
                folder / name / f"{i}.png")
    monkeypatch.setattr(cnnlab.recipes.auto, "range_test", interrupt)  # the automatic recipe, before any folder
    assert main(["train", "--images", str(folder), "--no-progress", "--out", str(tmp_path / "a")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "cnnlab: interrupted"
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(cnnlab.training.trainer.Trainer, "_train_epoch", interrupt)  # in the first epoch
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--data-dir", str(data_dir), "--num-train",
                 "256", "--num-val", "256", "--no-progress", "--out", str(run)]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"cnnlab: interrupted before the first epoch was saved; {run} holds only the run's settings "
                    f"(--resume {run} starts it again)")
    assert (run / "config.json").is_file() and not (run / "last.pt").exists()


def test_a_new_run_in_the_folder_of_an_earlier_one_shows_nothing_of_it(data_dir, tmp_path, capsys):
    # A --recipe run with the --out of an earlier automatic run printed that run's linear baseline (0.53 on its 400
    # photos) beside its own Fashion-MNIST accuracy; until its first epoch it also held the earlier best.pt.
    run = tmp_path / "run"
    args = ["train", "--model", "lenet-relu", "--epochs", "1", "--data-dir", str(data_dir), "--num-train", "256",
            "--num-val", "256", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    earlier = {"accuracy": 0.53, "count": 400, "weight_decay": 0.1, "seconds": 1.7, "fit_on": 1080,
               "train_images": 1080}
    (run / "baseline.json").write_text(json.dumps(earlier))
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"the earlier run's")
    (run / "model.onnx").write_bytes(b"the user's export")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # a resume continues the run: nothing removed
    out = capsys.readouterr().out
    assert "removed" not in out and "on the same 400 images" in out and (run / "tensorboard").is_dir()
    assert main([*args, "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert (f"a new run in {run}: the earlier run's last.pt, best.pt, metrics.csv, metrics.jsonl, curves.png, "
            "baseline.json, tensorboard/ removed") in out
    assert "linear baseline" not in out and not (run / "baseline.json").exists()
    assert not (run / "tensorboard").exists() and (run / "model.onnx").read_bytes() == b"the user's export"
    assert json.loads((run / "config.json").read_text())["seed"] == 1 and (run / "best.pt").is_file()
