"""The training core's contracts: the Trainer calls the model's own steps and hooks, leaves torch's global
flags as it found them, and every command reports the same accuracy for the same checkpoint."""

import json
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab import Callback, Display, FashionMNIST, Optimization, Trainer, create_model
from cnnlab.cli.main import main
from cnnlab.inference.loaded import evaluate_checkpoint
from cnnlab.models.lenet import LeNetReLU
from cnnlab.models.registry import prepare_model

QUIET = Display(progress=False, log=None, board=None)


def _data(data_dir, **kw):
    return FashionMNIST(batch_size=64, root=data_dir, num_train=512, num_val=256, seed=0, **kw)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05)


# ---- the d2l contract: training_step, validation_step and loss are the model's --------------------------

class CountingSteps(LeNetReLU):
    """A book-style subclass that overrides the steps and the loss, and counts what the trainer calls."""

    def __init__(self):
        super().__init__(lr=0.05)
        self.calls = {"training_step": 0, "validation_step": 0, "loss": 0}

    def loss(self, Y_hat, Y, averaged=True):
        self.calls["loss"] += 1
        return super().loss(Y_hat, Y, averaged)

    def training_step(self, batch):
        self.calls["training_step"] += 1
        return super().training_step(batch)

    def validation_step(self, batch):
        self.calls["validation_step"] += 1
        return super().validation_step(batch)


def test_the_trainer_calls_the_models_own_training_step_validation_step_and_loss(data_dir):
    torch.manual_seed(0)
    model = prepare_model(CountingSteps(), in_channels=1, image_size=28)
    data = _data(data_dir)
    Trainer(max_epochs=2, seed=0, display=QUIET).fit(model, data)
    steps = 2 * len(data.train_dataloader())  # 8 batches of 64 per epoch
    val_batches = 2 * len(data.val_dataloader())
    assert model.calls["training_step"] == steps
    assert model.calls["validation_step"] == val_batches
    assert model.calls["loss"] == steps + val_batches  # both steps go through the model's loss


class ScaledLoss(LeNetReLU):
    """A training_step that returns 0 times the loss: nothing may learn if the trainer really uses it."""

    def training_step(self, batch):
        return 0.0 * super().training_step(batch)


def test_an_overridden_training_step_decides_what_is_minimized(data_dir):
    torch.manual_seed(0)
    model = prepare_model(ScaledLoss(lr=0.05), in_channels=1, image_size=28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(max_epochs=1, seed=0, optimization=Optimization(_sgd), display=QUIET).fit(model, _data(data_dir))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # zero gradients: unchanged


class HingeLoss(LeNetReLU):
    """A loss override (multi-class hinge) that the default training_step must pick up."""

    def loss(self, Y_hat, Y, averaged=True):
        losses = F.multi_margin_loss(Y_hat, Y, reduction="none")
        return losses.mean() if averaged else losses


def test_an_overridden_loss_is_the_one_trained_and_validated(data_dir):
    torch.manual_seed(0)
    model = prepare_model(HingeLoss(lr=0.05), in_channels=1, image_size=28)
    data = _data(data_dir)
    history = Trainer(max_epochs=1, seed=0, optimization=Optimization(_sgd), display=QUIET).fit(model, data)
    with torch.no_grad():
        X, y = next(iter(data.val_dataloader()))
        hinge = F.multi_margin_loss(model.eval()(X), y).item()
        cross_entropy = F.cross_entropy(model(X), y).item()
    # Validation reports the model's loss: the hinge (at most ~1 for a trained net), not the cross-entropy.
    assert history[0]["val_loss"] == pytest.approx(hinge, rel=0.2)
    assert abs(history[0]["val_loss"] - cross_entropy) > 0.1


def test_callbacks_see_the_fit_in_order_and_can_add_to_checkpoints(tmp_path, data_dir):
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_fit_start(self, trainer, model):
            self.events.append(("start", trainer.epoch))

        def on_train_epoch_end(self, trainer, model, row):
            self.events.append(("epoch", row["epoch"], sorted(row)))

        def on_save_checkpoint(self, trainer, state):
            state["recorder"] = len(self.events)

        def on_fit_end(self, trainer, model):
            self.events.append(("end", trainer.epoch))

    recorder = Recorder()
    torch.manual_seed(0)
    Trainer(max_epochs=2, seed=0, run_dir=tmp_path, display=QUIET, callbacks=[recorder]).fit(
        create_model("lenet-relu"), _data(data_dir))
    fields = sorted(["epoch", "train_loss", "val_loss", "val_acc", "lr", "images_per_s", "seconds", "elapsed"])
    assert recorder.events == [("start", 0), ("epoch", 1, fields), ("epoch", 2, fields), ("end", 2)]
    # The run folder writes its checkpoint first, so it holds the recorder's value from before its epoch row.
    assert torch.load(tmp_path / "last.pt", weights_only=True)["recorder"] == 2


class _Broken(Exception):
    pass


def test_an_error_in_fit_calls_on_exception_not_on_fit_end_and_closes_the_live_figure(data_dir):
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_fit_start(self, trainer, model):
            self.events.append("start")

        def on_train_epoch_end(self, trainer, model, row):
            self.events.append(f"epoch {row['epoch']}")
            if row["epoch"] == 2:
                raise _Broken("the data went away")

        def on_exception(self, trainer, model, exc):
            self.events.append(f"exception {type(exc).__name__}")

        def on_fit_end(self, trainer, model):
            self.events.append("end")

    class Board:
        steps, closed = 0, 0

        def step(self, loss):
            self.steps += 1

        def epoch(self, row):
            pass

        def close(self):
            self.closed += 1

    recorder, board = Recorder(), Board()
    trainer = Trainer(max_epochs=3, seed=0, display=Display(progress=False, log=None, board=board),
                      callbacks=[recorder])
    data = FashionMNIST(batch_size=64, root=data_dir, num_train=128, num_val=64)
    with pytest.raises(_Broken):
        trainer.fit(create_model("lenet-relu"), data)
    assert recorder.events == ["start", "epoch 1", "epoch 2", "exception _Broken"]
    assert board.steps == 2 * 2 and board.closed == 1 and trainer._live is None


def test_fit_again_continues_with_the_same_optimizer(data_dir):
    torch.manual_seed(0)
    model, data = create_model("lenet-relu"), _data(data_dir)
    trainer = Trainer(max_epochs=3, seed=0, display=QUIET)
    assert [r["epoch"] for r in trainer.fit(model, data, epochs=1)] == [1]
    optimizer = trainer.optimizer
    assert [r["epoch"] for r in trainer.fit(model, data, epochs=5)] == [1, 2, 3]  # never past max_epochs
    assert trainer.optimizer is optimizer


# ---- torch's process-wide flags ------------------------------------------------------------------------

def _flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)


@pytest.mark.parametrize("start", [(False, False, True, False), (True, False, True, True)])
def test_fit_leaves_torchs_global_flags_as_it_found_them(data_dir, start):
    saved = _flags()
    torch.use_deterministic_algorithms(start[0], warn_only=start[1])
    torch.utils.deterministic.fill_uninitialized_memory = start[2]
    torch.backends.cudnn.benchmark = start[3]
    try:
        seen = []

        class Spy(Callback):
            def on_train_epoch_end(self, trainer, model, row):
                seen.append(_flags())

        torch.manual_seed(0)
        Trainer(max_epochs=1, seed=0, display=QUIET, callbacks=[Spy()]).fit(
            create_model("lenet-relu"), _data(data_dir))
        assert seen == [(True, True, False, start[3])]  # a seeded CPU run: deterministic, warn-only, no NaN fill
        assert _flags() == start
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark = saved[2:]


def test_fit_restores_the_flags_after_an_exception_too(data_dir):
    before = _flags()

    class Boom(Callback):
        def on_train_epoch_end(self, trainer, model, row):
            raise RuntimeError("boom")

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(max_epochs=2, seed=0, display=QUIET, callbacks=[Boom()]).fit(
            create_model("lenet-relu"), _data(data_dir))
    assert _flags() == before


# ---- one evaluation: train, evaluate, report and predict agree ----------------------------------------

def _accuracy(pattern, text):
    return float(re.search(pattern, text).group(1))


def test_train_evaluate_and_report_print_the_same_accuracy(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    # bf16 on: the per-epoch validation then runs under autocast, the final figure must still be the fp32 one.
    assert main(["train", "--model", "lenet-relu", "--epochs", "2", "--num-train", "1000", "--num-val", "300",
                 "--bf16", "--no-progress", "--data-dir", str(data_dir), "--out", str(run), "--report"]) == 0
    trained = _accuracy(r"test accuracy (\d\.\d{4}) on 10,000 images \(best\.pt", capsys.readouterr().out)
    assert main(["evaluate", str(run)]) == 0
    evaluated = _accuracy(r"test accuracy (\d\.\d{4}) \(10,000 images\)", capsys.readouterr().out)
    html = (run / "report.html").read_text()
    reported = _accuracy(r'id="test-accuracy">(\d\.\d{4})<', html)
    _, result = evaluate_checkpoint(run, data_dir)
    assert trained == evaluated == reported == round(result.accuracy, 4)


def test_predict_on_test_images_saved_as_png_equals_evaluate(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    # 32x32 and normalize: the path that once differed (F.interpolate in predict, matmuls in batches).
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "500", "--num-val", "100",
                 "--image-size", "32", "--no-progress", "--data-dir", str(data_dir), "--out", str(run)]) == 0
    loaded, _ = evaluate_checkpoint(run, data_dir)
    images, labels = loaded.test_split(data_dir)
    n = 24
    with torch.inference_mode():
        X, y = next(iter(loaded.test_loader(data_dir, batch_size=n)))  # evaluate's own first batch
        expected = torch.softmax(loaded.model(X).float(), dim=1)
    paths = []
    for i in range(n):
        path = tmp_path / f"test-{i}.png"
        Image.fromarray(images[i].numpy(), mode="L").save(path)
        paths.append(str(path))
    capsys.readouterr()
    assert main(["predict", str(run), *paths, "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = loaded.class_names
    assert [line.split(": ")[0] for line in lines] == paths  # one line per image, in order
    for i, line in enumerate(lines):
        predicted, probability = line.split(": ")[1].rsplit(" ", 1)
        assert predicted == names[int(expected[i].argmax())]
        assert float(probability) == pytest.approx(float(expected[i].max()), abs=6e-4)  # printed to 3 places


# ---- errors: a user's mistake is one line, a bug is a traceback ----------------------------------------

def test_a_bug_surfaces_as_a_traceback_with_exit_code_1(monkeypatch, capsys):
    import cnnlab.cli.main as cli

    def broken(args):
        raise KeyError("a bug in cnnlab")

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback (most recent call last)" in err and "KeyError" in err
    with pytest.raises(KeyError):
        main(["--debug", "models"])


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "no such run folder" in err


def test_library_models_record_how_they_were_built_without_reading_frames(monkeypatch):
    import cnnlab.nn.classifier as classifier

    def no_frames(depth=1):
        raise AssertionError("a library model read its caller's frame")

    class BookStyle(classifier.Classifier):  # the book's bare call is the one that reads a frame
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

    monkeypatch.setattr(classifier, "caller_arguments", no_frames)
    with pytest.raises(AssertionError, match="read its caller's frame"):
        BookStyle()
    for name in ("lenet", "lenet-bn", "fastnet", "nin-small", "densenet-small"):
        create_model(name)
    model = create_model("resnet18-small", num_classes=7, in_channels=3, image_size=[32, 30])
    assert model.model_name == "resnet18-small"
    assert model.model_kwargs == {"num_classes": 7, "in_channels": 3, "image_size": (32, 30), "lr": 0.05}
    assert model.hparams["num_classes"] == 7 and model.hparams["lr"] == 0.05
    json.dumps(model.model_kwargs)  # plain values: a checkpoint stores them


@pytest.mark.parametrize("compiled", [False, True])
def test_the_deterministic_flag_loads_the_compiler_only_for_a_compiled_run(compiled):
    # torch.use_deterministic_algorithms imports torch._inductor.config (1.2 s of every run's start-up).
    code = ("import sys, torch\n"
            "from cnnlab.training.runtime import set_deterministic\n"
            f"set_deterministic(True, warn_only=True, compiled={compiled})\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
            "loaded = 'torch._inductor.config' in sys.modules\n"
            "assert not loaded or sys.modules['torch._inductor.config'].deterministic\n"
            f"set_deterministic(False, compiled={compiled})\n"
            "assert not torch.are_deterministic_algorithms_enabled()\n"
            "print(loaded)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(compiled)
