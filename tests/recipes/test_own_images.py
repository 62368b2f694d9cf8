"""The automatic recipe for your own images (issue 23): its decisions from data facts, the step schedule, the
learning-rate range test, the linear baseline, the chance warning, and the command line that picks it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from cnnlab.cli.main import main
from cnnlab.data.batching import BatchLoader
from cnnlab.errors import TrainingDiverged
from cnnlab.recipes.auto import (
    CUTOUT,
    MAX_PEAK_LR,
    STEP_FLOOR,
    DataFacts,
    DivergenceGuard,
    RepeatedPasses,
    choose_image_size,
    peak_lr,
    plan_recipe,
)
from cnnlab.recipes.optim import linear_schedule
from cnnlab.training.baseline import chance_warning, linear_baseline
from cnnlab.training.lr_find import descent_edge, lr_find, suggest_lr

# ---- decisions: a pure function of the data facts -------------------------------------------------------


@pytest.mark.parametrize("facts, batch, augment", [
    (DataFacts(8, 8, 1, 1437, 10), 32, False),       # scikit-learn's digits: too small to crop
    (DataFacts(25, 25, 1, 144, 2), 16, True),        # 160 crops, 2 classes
    (DataFacts(32, 32, 3, 1080, 4), 32, True),       # colour photo patches
    (DataFacts(16, 16, 1, 1800, 10), 64, True),
])
def test_plan_from_data_facts(facts, batch, augment):
    plan = plan_recipe(facts)
    per_pass = math.ceil(facts.num_train / batch)
    assert (plan.batch_size, plan.augment, plan.flip) == (batch, augment, False)
    cuts = facts.height >= 32  # Cutout from 32 px (at 28 px it cost 0.02 on a Fashion-MNIST subset)
    assert plan.cutout == (CUTOUT if cuts else 0.0) and ("cutout" in plan.describe("m", 0.1)) == cuts
    assert plan.steps >= STEP_FLOOR  # with no clock: the floor, however small the folder
    assert plan.steps == plan.epochs * plan.passes_per_epoch * per_pass
    assert 6 <= plan.epochs <= 24  # about a dozen validations, not one per pass


def test_a_200_image_folder_gets_enough_steps_and_the_clock_can_cut_them():
    facts = DataFacts(28, 28, 1, 180, 10)
    roomy = plan_recipe(facts, seconds_per_step=0.01)
    assert roomy.steps >= STEP_FLOOR and roomy.passes_per_epoch > 1  # ~130 passes over 180 images
    slow = plan_recipe(facts, seconds_per_step=1.0, train_seconds=40)
    assert slow.steps < STEP_FLOOR and slow.steps >= 8 * math.ceil(180 / 16)  # never under 8 passes
    assert plan_recipe(facts, flip=True).flip


def test_images_above_32_px_are_resized_to_32_and_small_ones_kept():
    assert choose_image_size(64, 64) == 32 and choose_image_size(8, 8) == 8 and choose_image_size(25, 30) == 25


def _rates(opt, sched, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under ``sched`` (stepped after each)."""
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_linear_schedule_warms_up_then_reaches_zero_at_the_last_step():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = _rates(opt, linear_schedule(opt, total_steps=100), 100)
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0)
    assert rates.index(max(rates)) == 10 and rates[-1] == pytest.approx(1 / 90)
    assert opt.param_groups[0]["lr"] == 0.0


def test_an_epoch_counted_linear_run_warms_up_and_decays_to_zero():
    # The automatic recipe counts epochs (of repeated passes) with schedule "linear": with no step count or clock
    # to read progress from, its rate once stayed at the peak for the whole run.
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.optim import make_scheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    rates = _rates(opt, make_scheduler(TrainConfig(schedule="linear", lr=0.5))(opt, 10, 3), 30)
    assert rates[0] == pytest.approx(0.05) and max(rates) == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == 0.0


def test_a_linear_schedule_on_the_clock_or_a_step_count_warms_up_too():
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.optim import make_scheduler

    def rate_at(config, progress):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_scheduler(config, by_progress=True)(opt, 10, 3)
        sched.step(progress)
        return opt.param_groups[0]["lr"]

    linear = TrainConfig(schedule="linear", lr=1.0, budget=60.0)
    assert rate_at(linear, 0.05) == pytest.approx(0.5) and rate_at(linear, 0.1) == pytest.approx(1.0)
    assert rate_at(linear, 0.55) == pytest.approx(0.5) and rate_at(linear, 1.0) == 0.0
    constant = TrainConfig(schedule="constant", lr=1.0, budget=60.0)  # decayed by the budget, from its rate
    assert rate_at(constant, 0.0) == 1.0 and rate_at(constant, 0.5) == pytest.approx(0.5)


def test_repeated_passes_make_longer_epochs_with_distinct_passes():
    images, labels = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous(), \
        torch.arange(8)

    class Data:
        def train_dataloader(self):
            return BatchLoader(images, labels, 4, shuffle=True)

    loader = RepeatedPasses(Data(), 3).train_dataloader()
    assert len(loader) == 6
    loader.set_epoch(1)
    orders = [torch.cat([y for _, y in loader]).tolist() for _ in range(2)]
    assert all(sorted(o[i:i + 8]) == list(range(8)) for o in orders for i in (0, 8, 16))
    assert orders[0] != orders[1] and orders[0][:8] != orders[0][8:16]


def test_the_divergence_guard_stops_a_loss_far_above_chance():
    guard = DivergenceGuard(num_classes=10)
    guard.on_train_epoch_end(None, None, {"epoch": 1, "train_loss": 2.0, "val_loss": 2.5})
    for row in ({"epoch": 2, "train_loss": 5.1, "val_loss": 2.0}, {"epoch": 2, "train_loss": 1.0, "val_loss": 495},
                {"epoch": 2, "train_loss": 1.0, "val_loss": float("nan")}):
        with pytest.raises(TrainingDiverged, match="diverged"):
            guard.on_train_epoch_end(None, None, row)


def test_crops_only_never_mirror_an_image():
    image = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    image[:, :, 8, 1] = 255  # a bright pixel near the left edge
    for flip, mirrored in ((False, False), (True, True)):
        X, _ = next(iter(BatchLoader(image, torch.zeros(64, dtype=torch.long), 64, augment=True, flip=flip)))
        cols = X[:, 0].amax(1).argmax(1)  # (64,) the bright pixel's column
        assert bool((cols >= 8).any()) is mirrored


# ---- the range test ----------------------------------------------------------------------------------------


def test_suggest_lr_stays_below_the_minimum():
    lrs = [10 ** (-5 + 6 * i / 99) for i in range(100)]
    loss = [2.3 - 2 / (1 + math.exp(-4 * (math.log10(lr) + 2.5))) for lr in lrs]  # falls fastest at 3e-3
    loss = [v if lr < 0.3 else v + (lr - 0.3) * 20 for v, lr in zip(loss, lrs, strict=True)]  # explodes
    steepest, minimum, suggestion = suggest_lr(lrs, loss)
    assert steepest == pytest.approx(3e-3, rel=0.3) and 0.2 < minimum <= 0.31
    assert suggestion == max(steepest, minimum / 10) and suggestion < minimum


def test_the_descent_edge_ignores_where_the_flat_bottom_wobbles():
    lrs = [10 ** (-5 + 6 * i / 99) for i in range(100)]
    fall = [2.3 - 2 / (1 + math.exp(-4 * (math.log10(lr) + 2.5))) for lr in lrs]  # flat below ~0.03
    fall = [v if lr < 0.3 else v + (lr - 0.3) * 20 for v, lr in zip(fall, lrs, strict=True)]
    minima, edges = set(), set()
    for phase in (0.0, 1.5, 3.0):  # the same curve, its noise shifted: the argmin moves along the bottom
        loss = [v + 0.01 * math.sin(0.5 * i + phase) for i, v in enumerate(fall)]
        minima.add(suggest_lr(lrs, loss)[1])
        edges.add(descent_edge(lrs, loss))
        # 90% of the fall from step 5's 2.3 to ~0.3 is done at 0.5, where the sigmoid is 0.9: 10^(-2.5 + ln(9) / 4)
        assert descent_edge(lrs, loss) == pytest.approx(10 ** (-2.5 + math.log(9) / 4), rel=0.15)
    assert len(minima) == 3 and max(minima) / min(minima) > 1.9
    assert len(edges) == 1


def test_the_descent_edge_of_a_loss_that_never_falls_is_the_first_rate_read():
    lrs = [10 ** (-5 + i / 10) for i in range(20)]
    assert descent_edge(lrs, [1.0 + i for i in range(20)]) == lrs[5]
    with pytest.raises(ValueError, match="fraction"):
        descent_edge(lrs, [1.0] * 20, fraction=0)


class _LeastSquares(nn.Module):
    """Linear least squares: on standardized inputs the loss's curvature is ~2, so plain SGD diverges above a
    rate of about 2 / 2 = 1 (less with the noise of a batch), and rates 0.03 to 0.5 converge."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 1)

    def training_step(self, batch):
        X, t = batch
        return (self.linear(X).squeeze(1) - t).square().mean()


def test_lr_find_on_a_model_with_a_known_good_rate():
    torch.manual_seed(0)
    X = torch.randn(512, 16)
    t = X @ torch.randn(16) + 0.1 * torch.randn(512)
    batches = [(X[i:i + 64], t[i:i + 64]) for i in range(0, 512, 64)]
    model = _LeastSquares()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(model, batches, lambda p: torch.optim.SGD(p, lr=0.1), end_lr=100, num_steps=100)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored
    assert result.stopped_early and result.lrs[-1] < 10  # it saw the explosion and stopped there
    assert 0.03 <= result.suggestion <= 0.5 and result.suggestion <= result.minimum, result.to_dict()
    opt = torch.optim.SGD(model.parameters(), lr=result.suggestion)
    for _ in range(5):
        for batch in batches:
            loss = model.training_step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert float(model.training_step((X, t)).detach()) < 0.05  # from ~17 at the start: the rate trains it


# ---- the baseline and the chance warning ---------------------------------------------------------------------


def test_linear_baseline_scores_on_the_split_it_is_given():
    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    images = (torch.rand(300, 1, 6, 6) * 60).to(torch.uint8)
    images[torch.arange(300), 0, labels, labels] = 250  # class k lights pixel (k, k): linearly separable
    noise = (torch.rand(60, 1, 6, 6) * 255).to(torch.uint8)  # pure noise test set: about chance
    result = linear_baseline((images[:200], labels[:200]), (images[200:], labels[200:]),
                             (images[200:], labels[200:]), 3)
    assert result.accuracy == 1.0 and result.count == 100
    noisy = linear_baseline((images[:200], labels[:200]), (images[200:], labels[200:]), (noise, labels[:60]), 3)
    assert noisy.accuracy < 0.6 and noisy.count == 60


def test_linear_baseline_fits_on_a_fixed_subset_of_a_large_training_split(monkeypatch):
    import cnnlab.training.baseline as baseline

    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    images = (torch.rand(300, 1, 6, 6) * 60).to(torch.uint8)
    images[torch.arange(300), 0, labels, labels] = 250
    monkeypatch.setattr(baseline, "MAX_BASELINE_IMAGES", 50)  # the cap's 10,000 images, scaled to this split
    first = linear_baseline((images[:240], labels[:240]), (images[240:], labels[240:]), (images[240:], labels[240:]), 3)
    again = linear_baseline((images[:240], labels[:240]), (images[240:], labels[240:]), (images[240:], labels[240:]), 3)
    assert (first.fit_on, first.train_images) == (50, 240) and first.accuracy == again.accuracy == 1.0
    assert first.describe(0.99).endswith("(the baseline fitted on a random 50 of the 240 training images)")
    # Every image where there are no more than the cap; a file written before the cap existed reads the same
    whole = linear_baseline((images[:40], labels[:40]), (images[240:], labels[240:]), (images[240:], labels[240:]), 3)
    assert (whole.fit_on, whole.train_images) == (40, 40) and "random" not in whole.describe(0.99)
    old = baseline.describe_baseline({"accuracy": 0.5, "count": 60, "seconds": 1.0, "weight_decay": 0.01}, 0.9)
    assert old == ("linear baseline on the raw pixels: test accuracy 0.5000 on the same 60 images (1.0 s); "
                   "the network: 0.9000")


def test_a_hand_edited_baseline_file_is_read_as_none_not_a_traceback(tmp_path):
    from cnnlab.training.baseline import BASELINE_FILE, read_baseline

    good = {"accuracy": 0.5, "count": 60, "seconds": 1.0, "weight_decay": 0.01, "fit_on": 50, "train_images": 90}
    (tmp_path / BASELINE_FILE).write_text(json.dumps(good))
    assert read_baseline(tmp_path) == good
    for bad in ({**good, "count": "many"}, {**good, "fit_on": "half"}, {**good, "accuracy": "high"}, [0.5]):
        (tmp_path / BASELINE_FILE).write_text(json.dumps(bad))
        assert read_baseline(tmp_path) is None, bad


def test_chance_warning_within_005_of_the_majority_class():
    names = ["a", "b", "c", "d"]
    assert "within 0.05 of chance (0.2500" in chance_warning(0.26, [100, 100, 100, 100], names)
    assert chance_warning(0.31, [100, 100, 100, 100], names) is None
    warning = chance_warning(0.82, [800, 100, 50, 50], names)  # imbalanced: always 'a' scores 0.80
    assert "'a'" in warning and "lr-find" in warning
    assert chance_warning(0.86, [800, 100, 50, 50], names) is None


# ---- the command line ---------------------------------------------------------------------------------------


def _fake_summary(config):
    return {"test_accuracy": 0.5, "test_count": 10, "finished_already": False, "config": config,
            "checkpoint": "x/best.pt", "seconds": 1.0, "run_dir": "x", "chance_warning": None, "steps": 1}


def test_train_without_images_keeps_the_seed_recipe_and_images_alone_pick_the_automatic_one(monkeypatch, tmp_path):
    import cnnlab.recipes
    import cnnlab.recipes.auto

    seen = {}
    monkeypatch.setattr(cnnlab.recipes, "run_training", lambda c, **_: seen.setdefault("seed", c) and _fake_summary(c))
    monkeypatch.setattr(cnnlab.recipes.auto, "run_auto", lambda c, **_: seen.setdefault("auto", c) and _fake_summary(c))
    assert main(["train", "--no-progress"]) == 0
    seed = seen.pop("seed")
    assert (seed.model, seed.optimizer, seed.lr, seed.epochs, seed.augment) == ("lenet", "sgd", 0.1, 10, False)
    assert main(["train", "--images", str(tmp_path), "--augment", "flip"]) == 0
    assert seen["auto"].images == str(tmp_path) and seen["auto"].flip is True
    assert main(["train", "--images", str(tmp_path), "--model", "lenet-bn"]) == 0  # a model named: no automatic
    assert seen["seed"].model == "lenet-bn"


@pytest.mark.slow
def test_the_automatic_recipe_on_160_noisy_shapes(tmp_path, capsys):
    from image_sets import write_set

    folder = write_set("shapes-25", tmp_path / "shapes")
    assert main(["train", "--images", str(folder), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "automatic recipe: fastnet-auto at 25x25" in out.out and "diverged" not in out.out
    accuracy = float(out.out.split("test accuracy ")[1].split()[0])
    baseline = float(out.out.split("linear baseline on the raw pixels: test accuracy ")[1].split()[0])
    assert accuracy >= 0.9 > baseline  # the SVM scores 0.66 on it, the linear classifier about chance
    assert "warning" not in out.err


def test_the_report_shows_the_baseline_beside_the_network(tmp_path):
    from importlib.resources import files

    from cnnlab.analysis.report import _baseline_accuracy

    assert _baseline_accuracy(tmp_path) is None  # no baseline.json: nothing shown
    (tmp_path / "baseline.json").write_text('{"accuracy": 0.6367, "count": 300}')
    assert _baseline_accuracy(tmp_path) == 0.6367
    template = files("cnnlab.analysis").joinpath("templates/report.html.j2").read_text()
    assert 'id="baseline-accuracy"' in template and "format(baseline)" in template


def _tiny_folder(root, side=8):
    from PIL import Image

    for split, n in (("train", 12), ("test", 4)):
        for k, name in enumerate(("dark", "light")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(torch.full((side, side), 40 + 150 * k + i, dtype=torch.uint8).numpy()).save(
                    root / split / name / f"{i}.png")
    return root


def test_a_diverged_automatic_run_restarts_at_a_quarter_of_the_lr(monkeypatch, tmp_path):
    import cnnlab.recipes.run
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import run_auto

    calls, said, starts, kept = [], [], [], []
    good = torch.nn.Linear(1, 1)

    def fake_run(config, log, data, callbacks, initial_state, **_):
        calls.append(config)
        starts.append(initial_state)
        assert len(data.val_labels) == 2 and data.has_test  # validation carved from train/, test kept apart
        guard = callbacks[0]
        if len(calls) == 1:  # epoch 1 passes the guard, epoch 2 diverges: the restart starts from epoch 1
            guard.on_train_epoch_end(None, good, {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0})
            kept.append(float(good.weight.detach()))
            with torch.no_grad():
                good.weight.fill_(7.0)  # the weights go on changing after the copy
            guard.on_train_epoch_end(None, good, {"epoch": 2, "train_loss": 99.0, "val_loss": 1.0})
        if len(calls) == 2:  # diverges before any good epoch of its own: the same good state again
            raise TrainingDiverged("epoch 1: the run diverged again")
        return {"run_dir": None, "test_accuracy": 1.0}

    monkeypatch.setattr(cnnlab.recipes.run, "run_training", fake_run)
    summary = run_auto(TrainConfig(images=str(_tiny_folder(tmp_path / "f")), lr=0.4, progress=False),
                       log=said.append)
    assert [c.lr for c in calls] == [0.4, 0.1, 0.025] and calls[0].model == "fastnet-auto"
    assert calls[0].schedule == "linear" and calls[0].val_split == 0.1 and not calls[0].augment  # 8 px: no crops
    # Epoch 1's weights, as they were then (not the 7.0 written after), for both restarts.
    assert starts[0] is None and float(starts[1]["weight"]) == kept[0] != 7.0 and starts[2] is starts[1]
    restarts = [line for line in said if "restarting from epoch 1's weights (the last good state)" in line]
    assert len(restarts) == 2 and "0.1" in restarts[0] and "0.025" in restarts[1]
    assert summary["baseline"]["accuracy"] == 1.0 and summary["baseline"]["count"] == 8


def test_a_budget_of_the_automatic_recipe_counts_the_planning_and_every_attempt(monkeypatch, tmp_path):
    # run_training's clock started at its own call: the data, the range test, the baseline and a diverged
    # attempt were outside the --budget (the spent passed in stayed the process's age when run_auto began).
    import time

    import cnnlab.recipes.auto
    import cnnlab.recipes.run
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import run_auto

    real_auto_config, spent = cnnlab.recipes.auto.auto_config, []

    def slow_auto_config(*args):  # a range test of 0.3 s
        time.sleep(0.3)
        return real_auto_config(*args)

    def fake_run(config, **kwargs):
        spent.append(kwargs["spent"])
        assert kwargs["startup"] == 5.0  # the process's start-up alone estimates its exit, not the range test
        time.sleep(0.3)
        if len(spent) == 1:
            raise TrainingDiverged("epoch 1: the run diverged")
        return {"run_dir": None, "test_accuracy": 1.0}

    monkeypatch.setattr(cnnlab.recipes.auto, "auto_config", slow_auto_config)
    monkeypatch.setattr(cnnlab.recipes.run, "run_training", fake_run)
    config = TrainConfig(images=str(_tiny_folder(tmp_path / "f")), lr=0.4, budget=60.0, progress=False)
    summary = run_auto(config, log=None, spent=5.0)
    assert spent[0] >= 5.3 and spent[1] >= spent[0] + 0.3
    assert summary["seconds"] >= 0.9  # the whole call, the planning included


def test_an_interrupted_automatic_run_resumes_into_the_uninterrupted_one(monkeypatch, tmp_path, capsys):
    # Its epochs are several passes (RepeatedPasses); `--resume` rebuilt the data from config.json without them,
    # so the resumed epochs were single passes: other batches, a quarter of the steps left.
    import cnnlab.recipes.auto
    from cnnlab.cli.train import _print_summary
    from cnnlab.recipes import TrainConfig, run_training
    from cnnlab.recipes.auto import run_auto
    from cnnlab.training.baseline import read_baseline
    from cnnlab.training.callbacks import Callback
    from cnnlab.training.checkpoint import load_checkpoint

    class StopAfter(Callback):  # Ctrl-C after epoch 5's checkpoint
        def on_train_epoch_end(self, trainer, model, row):
            if row["epoch"] == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.recipes.auto, "STEP_FLOOR", 120)  # 12 epochs of 5 passes of 2 batches
    monkeypatch.setenv("CNNLAB_BF16", "0")
    folder = str(_tiny_folder(tmp_path / "f", side=16))
    config = TrainConfig(images=folder, lr=0.05, threads=1, progress=False)
    whole = run_auto(dataclasses.replace(config, out=str(tmp_path / "whole")), log=None)
    with pytest.raises(KeyboardInterrupt):
        run_auto(dataclasses.replace(config, out=str(tmp_path / "cut")), log=None, callbacks=[StopAfter()])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 5
    # The baseline was saved when the folder was made, so the resumed run prints it too
    saved = read_baseline(tmp_path / "cut")
    assert (saved["accuracy"], saved["count"]) == (whole["baseline"]["accuracy"], whole["baseline"]["count"])
    resumed = run_training(None, resume=str(tmp_path / "cut"), log=None)
    assert resumed["steps"] == whole["steps"] == 12 * 5 * 2
    capsys.readouterr()
    _print_summary(resumed)
    assert f"linear baseline on the raw pixels: test accuracy {whole['baseline']['accuracy']:.4f}" in \
        capsys.readouterr().out
    expected, got = (load_checkpoint(tmp_path / name / "last.pt")["model_state"] for name in ("whole", "cut"))
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_a_replayed_automatic_run_prints_the_recorded_runs_baseline(monkeypatch, tmp_path, capsys):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import run_auto

    monkeypatch.setenv("CNNLAB_BF16", "0")
    config = TrainConfig(images=str(_tiny_folder(tmp_path / "f")), lr=0.05, threads=1, steps=30, progress=False,
                         out=str(tmp_path / "run"))
    recorded = run_auto(config, log=None)
    capsys.readouterr()
    assert main(["train", "--replay", str(tmp_path / "run"), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "after 30 steps" in out
    assert f"linear baseline on the raw pixels: test accuracy {recorded['baseline']['accuracy']:.4f}" in out


def test_lr_find_command_prints_a_rate_and_draws_the_plot(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "f")
    assert main(["lr-find", "--images", str(folder), "--out", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out
    # By default the automatic recipe's own test: its 60 steps, so the rate printed is the run's
    assert "fastnet-auto, momentum, batch 16: " in out and "suggested lr" in out
    assert "the automatic recipe's peak lr on this curve: " in out and "takes at this seed" in out
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["lr-find", "--images", str(folder), "--steps", "30", "--out", str(tmp_path / "lr.png")]) == 0
    assert "runs its own test of 60 steps" in capsys.readouterr().out


def test_lr_find_on_a_folder_finds_the_rate_the_automatic_run_takes(tmp_path):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import LR_TEST_STEPS, auto_config, lr_find_for, peak_lr

    # 16 px: the run augments its training batches, but only after its range test, which sees them plain
    folder = _tiny_folder(tmp_path / "f", side=16)
    config = TrainConfig(images=str(folder), threads=1, progress=False)
    found, tested = lr_find_for(config, automatic=True, steps=LR_TEST_STEPS)
    run, _, plan = auto_config(config, log=None)
    assert plan.augment and tested.batch_size == run.batch_size
    assert run.lr == peak_lr(found)


def test_the_automatic_recipe_times_its_threads_and_leaves_the_process_count_alone(tmp_path):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config

    threads = torch.get_num_threads()
    config, _, _ = auto_config(TrainConfig(images=str(_tiny_folder(tmp_path / "f")), progress=False), log=None)
    assert config.threads in {threads, max(1, threads // 2)} and torch.get_num_threads() == threads
    given, _, _ = auto_config(TrainConfig(images=str(tmp_path / "f"), threads=1, progress=False), log=None)
    assert given.threads == 1 and torch.get_num_threads() == threads
    # An lr given skips the range test, not the thread choice (it had run on torch's threads, whatever the load)
    lr_given, _, _ = auto_config(TrainConfig(images=str(tmp_path / "f"), lr=0.1, progress=False), log=None)
    assert lr_given.threads in {threads, max(1, threads // 2)} and torch.get_num_threads() == threads


def test_with_an_lr_given_a_slow_step_still_cuts_the_plan_to_time(monkeypatch, tmp_path):
    import cnnlab.recipes.budget
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config

    monkeypatch.setattr(cnnlab.recipes.budget, "choose_threads", lambda *args: (1, 1.0))  # a second a step
    config, _, plan = auto_config(TrainConfig(images=str(_tiny_folder(tmp_path / "f")), lr=0.1, progress=False),
                                  log=None)
    assert config.threads == 1 and plan.steps < 100 < STEP_FLOOR  # it was STEP_FLOOR steps, untimed


def test_the_range_test_runs_on_the_default_threads_whatever_count_the_timing_chose(monkeypatch, tmp_path):
    # 1 and 2 threads round the test's loss apart: the rate must not follow the timing's choice, which load flips
    import cnnlab.recipes.budget
    import cnnlab.training.lr_find
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config

    threads = torch.get_num_threads()
    if threads == 1:
        pytest.skip("one core: no other count to choose")
    folder = str(_tiny_folder(tmp_path / "f"))
    given, _, _ = auto_config(TrainConfig(images=folder, threads=threads, progress=False), log=None)
    tested_on, real_lr_find = [], cnnlab.training.lr_find.lr_find

    def counting_lr_find(*args, **kwargs):
        tested_on.append(torch.get_num_threads())
        return real_lr_find(*args, **kwargs)

    monkeypatch.setattr(cnnlab.training.lr_find, "lr_find", counting_lr_find)
    monkeypatch.setattr(cnnlab.recipes.budget, "choose_threads", lambda *args: (1, 1.0))  # one thread, 1 s a step
    chosen, _, plan = auto_config(TrainConfig(images=folder, progress=False), log=None)
    assert tested_on == [threads] and chosen.threads == 1
    assert chosen.lr == given.lr  # the rate of the default count, as if no other had been timed faster
    assert plan.steps < 100 < STEP_FLOOR  # the plan is cut by the chosen count's step, not the test's


def test_the_peak_rate_is_half_the_descent_edge_and_capped_where_the_test_saw_no_rise():
    from cnnlab.training.lr_find import LRFinder

    assert peak_lr(LRFinder(minimum=0.06, suggestion=0.006, edge=0.03)) == pytest.approx(0.015)
    assert peak_lr(LRFinder(minimum=0.06, suggestion=0.03, edge=0.03)) == 0.03  # never below the suggestion
    # 10 images memorized within the test: the loss fell to its last step, lr 10 (a third diverged)
    assert peak_lr(LRFinder(minimum=10.0, suggestion=1.0, edge=5.0)) == MAX_PEAK_LR == 0.2


def test_a_capped_rate_says_so_in_the_plan_line(monkeypatch, tmp_path):
    import cnnlab.recipes.auto
    from cnnlab.recipes import TrainConfig
    from cnnlab.training.lr_find import LRFinder

    def fake_range_test(config, data, steps=60, log=None):  # a folder memorized within the test
        return LRFinder(minimum=10.0, suggestion=1.0, step_seconds=[0.01] * 10), 0.01, 1

    monkeypatch.setattr(cnnlab.recipes.auto, "range_test", fake_range_test)
    said = []
    config, _, _ = cnnlab.recipes.auto.auto_config(TrainConfig(images=str(_tiny_folder(tmp_path / "f")),
                                                               progress=False), log=said.append)
    assert config.lr == MAX_PEAK_LR and "lr 0.2 (range test, at its cap 0.2)" in said[-1]


def test_the_plan_line_of_an_automatic_run_of_several_passes_an_epoch(tmp_path):
    # A small folder's epoch is several passes (RepeatedPasses): the plan line counted the images of the
    # loader, which a pass-repeating loader does not have, and the run crashed before training (digits-8).
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config
    from cnnlab.recipes.run import describe_run

    config, data, _ = auto_config(TrainConfig(images=str(_tiny_folder(tmp_path / "f")), lr=0.1, progress=False),
                                  log=None)
    line = describe_run(config, RepeatedPasses(data, 3), 3, None)
    assert f"{len(data.train_labels)} training images" in line
    # It names the augmentation the run does: crops, no mirror images unless --augment flip (it said "+ flip").
    cropped, data, _ = auto_config(TrainConfig(images=str(tmp_path / "f"), lr=0.1, augment=True, progress=False),
                                   log=None)
    assert cropped.flip is False and describe_run(cropped, data, 3, None).endswith("augmentation random crop")
    flipped, data, _ = auto_config(TrainConfig(images=str(tmp_path / "f"), lr=0.1, augment=True, flip=True,
                                               progress=False), log=None)
    assert describe_run(flipped, data, 3, None).endswith("augmentation random crop + flip")


def test_options_given_beside_the_automatic_recipe_win_over_its_choices(tmp_path):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config

    folder = str(_tiny_folder(tmp_path / "f"))
    plain, _, _ = auto_config(TrainConfig(images=folder, lr=0.1, progress=False), log=None)
    assert (plain.model, plain.weight_decay, plain.label_smoothing, plain.schedule) == \
        ("fastnet-auto", 5e-4, 0.0, "linear")
    mine, _, _ = auto_config(TrainConfig(images=folder, lr=0.1, weight_decay=1e-3, label_smoothing=0.1,
                                         schedule="cosine", progress=False), log=None)
    assert (mine.model, mine.weight_decay, mine.label_smoothing, mine.schedule) == \
        ("fastnet-auto", 1e-3, 0.1, "cosine")
    # At 32 px the recipe crops and cuts out; --no-augment and --cutout win, and the plan line says what runs
    # (it printed the plan's "augment crop" whatever --no-augment said)
    folder = str(_tiny_folder(tmp_path / "g", side=32))
    for given, augment, cutout, said in [({}, True, CUTOUT, "augment crop+cutout 0.25, tested on 25 shifts"),
                                         ({"cutout": 0.0}, True, 0.0, "augment crop, tested on 25 shifts"),
                                         ({"cutout": 0.0, "shift_tta": False}, True, 0.0, "augment crop"),
                                         ({"augment": False}, False, 0.0, "augment none")]:
        lines = []
        config, data, _ = auto_config(TrainConfig(images=folder, lr=0.1, progress=False, **given), log=lines.append)
        assert (config.augment, config.cutout, data.augment, data.cutout) == (augment, cutout, augment, cutout)
        assert lines[-1].endswith(said), lines[-1]
    # --epochs counts epochs of one pass, and the line says so (it said the plan's 12 epochs of several passes)
    lines = []
    config, data, plan = auto_config(TrainConfig(images=folder, lr=0.1, epochs=3, progress=False), log=lines.append)
    assert (config.epochs, config.passes, plan.steps) == (3, 1, 3 * len(data.train_dataloader()))
    assert f"{plan.steps} steps (3 epochs of 1 pass)" in lines[-1], lines[-1]
    # --steps and --budget decide the length, and the line says so (it said the plan's steps, which did not run)
    for given, said in [({"steps": 120}, "batch 16, 120 steps (--steps), lr"),
                        ({"budget": 30.0}, "batch 16, as many steps as fit in --budget 30s, lr")]:
        lines = []
        auto_config(TrainConfig(images=folder, lr=0.1, progress=False, **given), log=lines.append)
        assert said in lines[-1], lines[-1]
