"""The Trainer on small slices of the real Fashion-MNIST: learning, files, resume, divergence."""

import csv
import json
import math

import pytest
import torch

from cnnlab import (
    Display,
    FashionMNIST,
    Optimization,
    Speed,
    Trainer,
    TrainingDiverged,
    create_model,
    load_checkpoint,
)
from cnnlab.nn.classifier import Classifier
from cnnlab.training.evaluation import best_two_validation_mean, evaluate, within_one_standard_error
from cnnlab.training.runtime import CPU_EVAL_BATCH_SIZE, GPU_EVAL_BATCH_SIZE, eval_batch_size, pick_device

QUIET = Display(progress=False, log=None)


def _data(data_dir, **kw):
    return FashionMNIST(batch_size=32, root=data_dir, num_train=2000, num_val=1000, seed=0, **kw)


def _adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def test_one_epoch_on_2k_images_is_far_above_chance(data_dir):
    torch.manual_seed(0)
    model = create_model("lenet-relu")
    data = _data(data_dir)
    before = evaluate(model, data.val_dataloader()).accuracy
    history = Trainer(max_epochs=1, seed=0, optimization=Optimization(_adam), display=QUIET).fit(model, data)
    after = evaluate(model, data.val_dataloader()).accuracy
    assert before < 0.25
    assert after >= 0.6
    assert history[0]["val_acc"] == pytest.approx(after)
    assert history[0]["train_loss"] < 2.3 and history[0]["images_per_s"] > 0


def test_run_folder_files(tmp_path, data_dir):
    model = create_model("lenet-relu")
    Trainer(max_epochs=2, seed=0, run_dir=tmp_path, optimization=Optimization(_adam), display=QUIET).fit(
        model, _data(data_dir))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_acc", "lr", "images_per_s", "seconds", "elapsed"}
    # elapsed: the run's wall time so far, the sum of the epochs' (the time axis of time-to-accuracy plots)
    assert float(rows[1]["elapsed"]) == pytest.approx(float(rows[0]["seconds"]) + float(rows[1]["seconds"]))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 2 and last["model_name"] == "lenet-relu"
    assert best["best_val_acc"] == max(r["val_acc"] for r in lines)
    # best.pt is the latest epoch within one standard error (on 1,000 images) of the best two-validation mean
    chosen = max(r["epoch"] for r in lines if within_one_standard_error(
        r["val_acc"], best_two_validation_mean([q["val_acc"] for q in lines if q["epoch"] <= r["epoch"]]), 1000))
    assert best["epoch"] == chosen
    assert "optimizer_state" in last and last["data_settings"]["num_train"] == 2000


def test_curves_are_redrawn_at_most_every_ten_seconds_and_always_at_the_end(tmp_path, monkeypatch):
    # A draw costs ~0.25 s: 12 validations of a 25 s automatic run spent 3 s drawing. The metrics files are
    # written every epoch; curves.png on the first epoch, then when 10 s have passed, and at the fit's end.
    from types import SimpleNamespace

    import cnnlab.visual.plotting
    from cnnlab.training import runfolder

    drawn, now = [], [0.0]
    monkeypatch.setattr(cnnlab.visual.plotting, "plot_curves", lambda rows, path: drawn.append(len(rows)))
    monkeypatch.setattr(runfolder, "time", SimpleNamespace(monotonic=lambda: now[0]))
    trainer = SimpleNamespace(is_main=True, history=[], finished=False, is_best_epoch=False, state_dict=dict)
    folder = runfolder.RunFolder(tmp_path)
    monkeypatch.setattr(folder, "save", lambda state, is_best: None)
    folder.on_fit_start(trainer, None)
    for epoch in range(1, 7):  # an epoch every 6 s
        row = dict(epoch=epoch, train_loss=1.0, val_loss=1.0, val_acc=0.5, lr=0.1, images_per_s=1, seconds=6,
                   elapsed=6 * epoch)
        trainer.history.append(row)
        folder.on_train_epoch_end(trainer, None, row)
        now[0] += 6.0
        assert len(folder.history()) == epoch  # the metrics every epoch
    assert drawn == [1, 3, 5]
    folder.on_fit_end(trainer, None)
    assert drawn == [1, 3, 5, 6]  # the finished run's curves show every epoch
    folder.on_fit_end(trainer, None)
    assert drawn == [1, 3, 5, 6]


def test_best_pt_takes_a_later_epoch_within_one_standard_error_of_the_best():
    assert within_one_standard_error(0.87, 0.90, 60) and not within_one_standard_error(0.85, 0.90, 60)  # se 0.039
    assert within_one_standard_error(0.898, 0.90, 10_000) and not within_one_standard_error(0.896, 0.90, 10_000)
    assert within_one_standard_error(1.0, 1.0, 60) and not within_one_standard_error(0.99, 1.0, 60)  # ties: later
    assert within_one_standard_error(0.1, -1.0, 60)  # the first validation is the best so far


def test_one_lucky_early_validation_does_not_veto_every_later_epoch():
    # fashion-64-colour, seed 1 (60 validation images): epoch 1 scored 0.933 by luck, the rest 0.80-0.88; best.pt
    # stayed epoch 1 (0.730 on the test split, the last epoch 0.847)
    accs = [0.933, 0.817, 0.883, 0.85, 0.8, 0.883, 0.867, 0.867, 0.85, 0.867, 0.883, 0.867, 0.867]
    chosen = [e for e in range(1, 14) if within_one_standard_error(
        accs[e - 1], best_two_validation_mean(accs[:e]), 60)]
    assert chosen[0] == 1 and chosen[-1] == 13
    assert best_two_validation_mean(accs[:1]) == 0.933 and best_two_validation_mean([]) == -1.0
    assert best_two_validation_mean(accs) == pytest.approx((0.933 + 0.817) / 2)  # never above the plain maximum
    # a steady climb keeps the latest epoch, as the plain maximum did
    assert best_two_validation_mean([0.5, 0.7, 0.9]) == pytest.approx(0.8)


class _Crash(Exception):
    pass


def _crash_after(epochs):
    def callback(trainer, row):
        if row["epoch"] == epochs:
            raise _Crash

    return callback


def _final_weights(run_dir, data_dir, epochs=3, resume=False, crash_after=None):
    torch.manual_seed(3)  # the initial weights, as `cnnlab train --seed 3` draws them
    model = create_model("lenet-relu")
    one_cycle = Optimization(_adam, lambda opt, steps, ep: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=steps * ep))
    trainer = Trainer(max_epochs=epochs, seed=3, run_dir=run_dir, optimization=one_cycle, display=QUIET,
                      on_epoch_end=_crash_after(crash_after) if crash_after else None)
    try:
        trainer.fit(model, _data(data_dir, augment=True), resume_from=run_dir / "last.pt" if resume else None)
    except _Crash:
        pass
    return model.state_dict(), trainer.history


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, data_dir):
    straight, straight_history = _final_weights(tmp_path / "a", data_dir)
    assert load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 3
    # run c stops after epoch 1 (its files are what a crash leaves), then resumes to epoch 3
    _final_weights(tmp_path / "c", data_dir, crash_after=1)
    assert load_checkpoint(tmp_path / "c" / "last.pt")["epoch"] == 1
    resumed, resumed_history = _final_weights(tmp_path / "c", data_dir, resume=True)
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    assert [r["val_acc"] for r in resumed_history] == [r["val_acc"] for r in straight_history]
    rows = list(csv.DictReader(open(tmp_path / "c" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


class _DropoutMLP(Classifier):
    """A tiny classifier whose training draws from torch's global RNG (dropout masks)."""

    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.5), torch.nn.Linear(32, 10))


def _unseeded_run(run_dir, data_dir, epochs, resume=False):
    torch.manual_seed(5)  # the initial weights (a resumed run loads its own)
    model = _DropoutMLP()
    if resume:
        torch.manual_seed(12345)  # a new process: its RNG is not the one the killed run had
    # seed=None: the trainer does not re-seed each epoch, so only the checkpoint's rng_state can give a
    # resumed run the dropout masks the uninterrupted run drew.
    trainer = Trainer(max_epochs=epochs, seed=None, run_dir=run_dir, display=QUIET)
    trainer.fit(model, _data(data_dir), resume_from=run_dir / "last.pt" if resume else None)
    return load_checkpoint(run_dir / "last.pt")


def test_unseeded_resume_restores_the_rng_and_draws_the_same_dropout_masks(tmp_path, data_dir):
    straight = _unseeded_run(tmp_path / "a", data_dir, epochs=2)
    _unseeded_run(tmp_path / "b", data_dir, epochs=1)
    resumed = _unseeded_run(tmp_path / "b", data_dir, epochs=2, resume=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    assert torch.equal(resumed["rng_state"], straight["rng_state"])
    for name, tensor in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][name], tensor), name


def test_divergence_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    def exploding_after_epoch_2(optimizer, steps_per_epoch, epochs):
        # a sane LR for two epochs, then one that must blow the loss up
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < 2 * steps_per_epoch else 1e9)

    torch.manual_seed(0)
    model = create_model("lenet-relu")
    trainer = Trainer(max_epochs=5, seed=0, run_dir=tmp_path, display=QUIET,
                      optimization=Optimization(lambda p: torch.optim.SGD(p, lr=1e-2), exploding_after_epoch_2))
    with pytest.raises(TrainingDiverged, match="lower --lr") as info:
        trainer.fit(model, _data(data_dir))
    assert "epoch 3" in str(info.value) and "last.pt" in str(info.value)
    good = load_checkpoint(tmp_path / "last.pt")
    assert good["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in good["model_state"].values())
    assert [r["epoch"] for r in good["history"]] == [1, 2]


def test_seed_style_lenet_learns_with_bare_trainer(data_dir):
    # The book's exact call sequence: Trainer(max_epochs, num_gpus=1) falls back to the CPU here.
    from cnnlab import LeNet, init_cnn

    torch.manual_seed(0)
    data = FashionMNIST(batch_size=128, root=data_dir, num_train=2000, num_val=500)
    model = LeNet(lr=0.1)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], init_cnn)
    initial = {name: t.clone() for name, t in model.state_dict().items()}
    before = evaluate(model, data.val_dataloader())
    trainer = Trainer(max_epochs=1, num_gpus=1, display=QUIET)
    history = trainer.fit(model, data)
    after = evaluate(model, data.val_dataloader())
    # Every parameter moved (an optimizer that never steps leaves them all as initialized) ...
    unchanged = [name for name, t in model.state_dict().items() if torch.equal(t.cpu(), initial[name])]
    assert not unchanged
    # ... and downhill: 16 SGD steps take the sigmoid LeNet's validation loss from ~2.6 (xavier init) to
    # ~2.31 (about ln 10, the uniform guess) on every seed tried; a drop of 0.05 is far from both.
    assert after.loss < before.loss - 0.05, (before.loss, after.loss)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert history[0]["val_loss"] == pytest.approx(after.loss)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert trainer.device.type == expected


def test_pick_device_errors():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None, num_gpus=0).type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


def test_evaluation_batches_128_images_on_a_cpu_and_1024_on_a_gpu(monkeypatch):
    assert eval_batch_size("cpu") == eval_batch_size(None) == CPU_EVAL_BATCH_SIZE == 128
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_batch_size("cuda") == eval_batch_size("auto") == GPU_EVAL_BATCH_SIZE == 1024


def test_trainer_rejects_bad_epochs():
    with pytest.raises(ValueError, match="max_epochs"):
        Trainer(max_epochs=0)


def test_trainer_options_come_in_groups_and_anything_else_is_refused():
    trainer = Trainer(max_epochs=10, num_gpus=1)  # the book's call: every group at its defaults
    assert (trainer.optimization, trainer.speed, trainer.display) == (Optimization(), Speed(), Display())
    assert trainer.deterministic is False  # unseeded: torch's kernels as they are
    assert Trainer(max_epochs=1, seed=0, device="cpu").deterministic  # seeded on the CPU: deterministic kernels
    with pytest.raises(ValueError, match=r"speed must be a cnnlab\.training\.Speed\(\.\.\.\), got \{'compile'"):
        Trainer(max_epochs=1, speed={"compile": True})
    with pytest.raises(TypeError, match="progress"):
        Trainer(max_epochs=1, progress=False)  # one way to say it: display=Display(progress=False)
    with pytest.raises(TypeError):
        Trainer(1, 0, None, None, 0, Optimization())  # the groups are keywords
