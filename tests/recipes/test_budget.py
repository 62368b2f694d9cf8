"""Schedules in steps and on the clock, ``--budget`` planning, ``--steps`` and ``--replay``, and the divergence stop
(issue 23, part A). Clocks are fake wherever one can be injected: no test reads the wall clock to pass or fail."""

import math

import pytest
import torch

from cnnlab import Callback, Classifier, Display, FashionMNIST, Optimization, Trainer, create_model
from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.models import narrower_model
from cnnlab.recipes import TrainConfig, resolve_config
from cnnlab.recipes.budget import (
    BATCH_FLOOR,
    MIN_BUDGET_STEPS,
    BudgetKeeper,
    budget_batch_size,
    budget_epochs,
    fastest_threads,
    parse_duration,
    plan_budget,
    seconds_per_eval_image,
)
from cnnlab.recipes.optim import make_scheduler
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.divergence import SETTLE_STEPS, LossWatch, val_loss_far_above_chance
from cnnlab.training.schedules import ClockProgress, ProgressLR, ReplayProgress, StepProgress, lr_factor


class FakeClock:
    """Seconds that move only when told to, or by ``tick`` on every reading."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _data(data_dir, **kw):
    return FashionMNIST(batch_size=64, root=data_dir, num_train=512, num_val=256, seed=0, **kw)


def _trainer(**kw):
    sgd = Optimization(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                       lambda opt, spe, epochs: ProgressLR(opt, "linear"))
    return Trainer(max_epochs=kw.pop("max_epochs", 5), seed=0, optimization=sgd,
                   display=Display(progress=False, log=None, board=None), **kw)


# ---- schedule shapes and progress sources --------------------------------------------------------------

@pytest.mark.parametrize("shape", ["linear", "onecycle", "cosine"])
def test_every_decaying_shape_peaks_once_and_ends_at_exactly_zero(shape):
    values = [lr_factor(shape, p / 100, warmup=0.1 if shape == "linear" else 0.0) for p in range(101)]
    assert values[-1] == 0.0 and max(values) == pytest.approx(1.0, abs=0.02)
    peak = values.index(max(values))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:], strict=False))  # no second rise
    assert lr_factor("constant", 0.7) == 1.0


def test_the_clock_counts_only_training_time_and_replanning_keeps_the_progress_made():
    clock = FakeClock()
    pace = ClockProgress(10.0, clock=clock)
    pace.resume()
    clock.now = 4.0
    assert pace() == pytest.approx(0.4)
    pace.pause()
    clock.now = 9.0  # validation: 5 s that the training time does not count
    assert pace() == pytest.approx(0.4)
    pace.replan(3.0)  # the rest of the run, 60% of it, over 3 more training seconds
    pace.resume()
    clock.now = 10.5
    assert pace() == pytest.approx(0.4 + 0.6 * 0.5)
    clock.now = 12.0
    assert pace() == 1.0 and pace.done(0, pace())


def test_step_and_replay_progress_end_at_their_step_count():
    steps, replay = StepProgress(8), ReplayProgress([0.1, 0.5, 1.0])
    assert steps(4) == 0.5 and steps.done(8, 1.0) and not steps.done(7, 0.9)
    assert replay(2) == 0.5 and replay.done(3, 1.0) and not replay.done(2, 0.5)


# ---- the budget: parsing and planning -------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1.5m", 90), ("45", 45)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-3s", "0s", "m"])
def test_a_bad_duration_is_a_one_line_user_error(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_duration(text)


def test_a_plan_adds_up_and_a_budget_too_small_names_the_costs():
    plan = plan_budget(60.0, spent=8.0, validation=1.5, final=3.0)
    assert plan.spent + plan.training + plan.validation + plan.final + plan.margin == pytest.approx(60.0)
    assert plan.margin <= 0.025 * 60 + 1.0  # a run ends at most ~4% early at 60 s, ~2.6% at 15 min
    with pytest.raises(ConfigError, match="start-up and data.*give at least"):
        plan_budget(10.0, spent=8.0, validation=1.5, final=3.0)


@pytest.mark.parametrize("batch, drawn", [(128, 17), (1024, 3), (5000, 1)])
def test_the_evaluation_is_timed_on_2048_images_whatever_the_batch(batch, drawn):
    """One warm-up batch, then batches until 2,048 images are timed: the estimate rests on as many images with
    a CPU's batches of 128 as it did with 1,024; a loader of one batch is timed on that batch again."""
    images, labels = torch.rand(5000, 1, 28, 28), torch.randint(0, 10, (5000,))
    seen = []

    def loader():
        for i in range(0, len(labels), batch):
            seen.append(i)
            yield images[i:i + batch], labels[i:i + batch]

    model = create_model("lenet-bn", num_classes=10)
    assert seconds_per_eval_image(model, loader(), torch.device("cpu")) > 0
    assert len(seen) == drawn


def test_a_budget_with_a_fake_clock_ends_its_schedule_at_zero_and_leaves_time_for_the_last_passes(data_dir):
    """Every step takes 1.0 fake seconds: the plan, the clock and the stop all read the same fake time."""
    clock = FakeClock(tick=0.0)
    pace = ClockProgress(1.0, clock=clock)
    keeper = BudgetKeeper(15.0, pace, data_seconds=0.5, test_images=256, log=None, clock=lambda: clock.now)
    model = create_model("lenet-bn", num_classes=10, lr=0.1)
    step = model.training_step

    def timed_step(batch):  # each training step takes 1.0 fake seconds
        clock.now += 1.0
        return step(batch)

    model.training_step = timed_step
    plans = []

    class Plans(Callback):
        def on_fit_start(self, trainer, model):
            plans.append(keeper.plan)

    trainer = _trainer(pace=pace, callbacks=[keeper, Plans()], max_epochs=10**6)
    trainer.fit(model, _data(data_dir))
    first, last = plans[0], keeper.plan
    assert 1.0 < first.training < 15.0 - first.validation - first.final
    assert trainer.run_progress == 1.0 and trainer.optimizer.param_groups[0]["lr"] == 0.0
    # The run took the steps its planned training time holds (the validation passes took no fake time) ...
    assert trainer.global_step == pytest.approx(first.training / 1.0, abs=1)
    # ... and what is left holds the last validation, the final pass and the margin.
    assert clock.now + last.validation + last.final + last.margin <= 15.0 + 1.0


def test_seconds_planned_after_training_are_taken_from_the_training_time(data_dir):
    """The automatic recipe's pixel blend runs between training and the final pass: a budget keeps its seconds."""
    steps, finals = [], []
    for after_training in (0.0, 6.0):
        clock = FakeClock(tick=0.0)
        pace = ClockProgress(1.0, clock=clock)
        keeper = BudgetKeeper(30.0, pace, data_seconds=0.5, test_images=256, log=None, clock=lambda c=clock: c.now,
                              after_training=after_training)
        model = create_model("lenet-bn", num_classes=10, lr=0.1)
        step = model.training_step

        def timed_step(batch, c=clock, step=step):  # each training step takes 1.0 fake seconds
            c.now += 1.0
            return step(batch)

        model.training_step = timed_step
        trainer = _trainer(pace=pace, callbacks=[keeper], max_epochs=10**6)
        trainer.fit(model, _data(data_dir))
        steps.append(trainer.global_step)
        finals.append(keeper.plan.final)
    assert finals[1] - finals[0] == pytest.approx(6.0, abs=0.5)
    assert steps[0] - steps[1] == pytest.approx(6, abs=1)  # six fewer 1-second steps


def test_a_run_the_clock_ends_at_an_epoch_end_is_finished_in_its_last_checkpoint(tmp_path, data_dir):
    from cnnlab.recipes.run import _finished

    clock = FakeClock(tick=0.0)
    pace = ClockProgress(1.0, clock=clock)
    keeper = BudgetKeeper(15.0, pace, data_seconds=0.5, test_images=256, log=None, clock=lambda: clock.now)

    class SlowEpochEnd(Callback):  # the first epoch's end takes the rest of the budget (a slow disk, say)
        def on_train_epoch_end(self, trainer, model, row):
            clock.now += 100.0

    trainer = _trainer(pace=pace, callbacks=[SlowEpochEnd(), keeper], max_epochs=10**6, run_dir=tmp_path)
    trainer.fit(create_model("lenet-bn", num_classes=10, lr=0.1), _data(data_dir))
    assert trainer.epoch == 1 and trainer.run_progress < 1.0  # stopped by the re-plan, not by its progress
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["finished"] is True and state["global_step"] == trainer.global_step
    assert _finished(state, TrainConfig(budget=15.0), steps_per_epoch=8)  # a resume has nothing left to do ...
    again = _trainer(pace=ClockProgress(1.0, clock=FakeClock(tick=0.01)), max_epochs=10**6)
    again.fit(create_model("lenet-bn", num_classes=10, lr=0.1), _data(data_dir), resume_from=state)
    assert again.global_step == trainer.global_step  # ... and does nothing


# ---- steps, replay and resume ---------------------------------------------------------------------------

def test_a_step_count_stops_mid_epoch_and_still_validates(data_dir):
    trainer = _trainer(max_steps=11)  # 8 steps an epoch: one epoch and 3 steps
    history = trainer.fit(create_model("lenet-bn", num_classes=10, lr=0.1), _data(data_dir))
    assert trainer.global_step == 11 and len(history) == 2 and trainer.max_epochs == 2
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0 and 0 < history[-1]["val_acc"] <= 1


def test_a_step_counted_run_resumed_at_an_epoch_end_is_exact(data_dir):
    def fresh():
        torch.manual_seed(0)
        return create_model("lenet-bn", num_classes=10, lr=0.1)

    whole = _trainer(max_steps=11)
    whole.fit(fresh(), _data(data_dir))
    first = _trainer(max_steps=11)
    first.fit(fresh(), _data(data_dir), epochs=1)
    resumed = _trainer(max_steps=11)
    resumed.fit(fresh(), _data(data_dir), resume_from=first.state_dict())
    assert resumed.global_step == whole.global_step == 11 and resumed.progress_trace == whole.progress_trace
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_replay_of_a_clocked_run_is_bit_for_bit_without_the_clock(data_dir):
    clock = FakeClock(tick=0.01)  # every reading moves: an irregular, clock-driven schedule
    clocked = _trainer(pace=ClockProgress(0.12, clock=clock), max_epochs=10**6)
    torch.manual_seed(0)
    clocked.fit(create_model("lenet-bn", num_classes=10, lr=0.1), _data(data_dir))
    replayed = _trainer(pace=ReplayProgress(clocked.progress_trace))
    torch.manual_seed(0)
    replayed.fit(create_model("lenet-bn", num_classes=10, lr=0.1), _data(data_dir))
    assert replayed.global_step == clocked.global_step > 8  # more than an epoch, ending mid-epoch
    for a, b in zip(clocked.model.state_dict().values(), replayed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_steps_on_the_cli_record_the_step_count_and_the_progress_of_each(tmp_path, data_dir, capsys):
    args = ["train", "--model", "lenet-bn", "--steps", "12", "--num-train", "640", "--num-val", "256",
            "--batch-size", "64", "--no-progress", "--data-dir", str(data_dir)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "after 12 steps" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["global_step"] == 12 and len(state["progress_trace"]) == 12 and state["epoch"] == 2
    assert float(state["progress_trace"][-1]) == 1.0


def test_the_plan_line_says_what_was_decided(tmp_path, data_dir, capsys):
    main(["train", "--recipe", "fast", "--model", "lenet-bn", "--num-train", "640", "--num-val", "256",
          "--no-progress", "--data-dir", str(data_dir), "--out", str(tmp_path / "r"), "--steps", "3"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("plan:"))
    for part in ("lenet-bn", "1x28x28", "640 training images", "3 steps (--steps)", "lr 0.2", "random crop"):
        assert part in line


# ---- threads on a shared CPU ------------------------------------------------------------------------------

class _DropoutBN(Classifier):
    """Dropout draws random numbers at every training step; BatchNorm keeps running statistics."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                       torch.nn.Dropout(0.5), torch.nn.Linear(4 * 26 * 26, 10))


def test_fastest_threads_times_a_copy_and_leaves_the_model_and_the_random_streams_alone():
    torch.manual_seed(0)
    model = _DropoutBN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(64, 1, 28, 28), torch.randint(10, (64,)))
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    try:
        best, seconds = fastest_threads(model, batch)
        assert torch.equal(torch.get_rng_state(), rng)  # the run's data order and dropout do not move
        assert set(seconds) == {threads, max(1, threads // 2)} and all(s > 0 for s in seconds.values())
        assert best in seconds and torch.get_num_threads() == threads  # the caller applies the choice
        # Fewer threads win only when 10% faster.
        assert best == min(seconds, key=lambda n: seconds[n] if n == max(seconds) else seconds[n] / 0.9)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm's statistics too
    assert all(p.grad is None for p in model.parameters())


def test_a_budgeted_run_records_its_threads_and_gives_the_process_its_count_back(tmp_path, data_dir):
    from cnnlab.recipes.run import run_training
    from cnnlab.training.runfolder import RunFolder

    seen = []

    class Threads(Callback):
        def on_fit_start(self, trainer, model):
            seen.append(torch.get_num_threads())

    threads = torch.get_num_threads()
    config = resolve_config(TrainConfig(model="lenet-bn", budget=8.0, num_train=640, num_val=256, batch_size=64,
                                        data_dir=str(data_dir), out=str(tmp_path / "b"), progress=False))
    summary = run_training(config, log=None, callbacks=[Threads()])
    chosen = summary["config"].threads
    assert chosen in {threads, max(1, threads // 2)} and seen == [chosen]
    assert RunFolder(tmp_path / "b").read_config()["threads"] == chosen  # --replay and --resume use it too
    assert torch.get_num_threads() == threads
    given = resolve_config(TrainConfig(model="lenet-bn", steps=2, num_train=256, num_val=128, batch_size=64,
                                       threads=1, data_dir=str(data_dir), out=str(tmp_path / "s"), progress=False))
    run_training(given, log=None, callbacks=[Threads()])
    assert seen[-1] == 1 and torch.get_num_threads() == threads


# ---- the floor of steps -----------------------------------------------------------------------------------

def test_a_small_data_set_gets_the_recipes_floor_of_steps_unless_epochs_are_given():
    from cnnlab.recipes.run import build_pace

    fast = resolve_config(TrainConfig(), "fast")
    pace = build_pace(fast, steps_per_epoch=6)  # 1.4k images at batch 256: 7 epochs would be 42 steps
    assert isinstance(pace, StepProgress) and pace.total_steps == fast.min_steps >= 300
    assert build_pace(fast, steps_per_epoch=235) is None  # all of Fashion-MNIST: the epochs it was tuned with
    assert build_pace(resolve_config(TrainConfig(epochs=2), "fast"), steps_per_epoch=6) is None
    assert build_pace(resolve_config(TrainConfig()), steps_per_epoch=1) is None  # the seed's recipe: no floor
    assert isinstance(make_scheduler(fast, by_progress=True)(torch.optim.SGD([torch.zeros(1)], lr=0.2), 6, 7),
                      ProgressLR)


# ---- divergence ----------------------------------------------------------------------------------------------

def test_a_loss_that_grows_tenfold_within_an_epoch_is_divergence_and_noise_near_zero_is_not():
    watch = LossWatch(floor=math.log(10))
    assert watch.check(2.0) is None and watch.check(0.5) is None
    assert "grew from 0.5 to 6" in watch.check(6.0)
    near_zero = LossWatch(floor=math.log(10))
    assert near_zero.check(0.002) is None and near_zero.check(0.05) is None  # 25x, but far below chance
    assert val_loss_far_above_chance(495.0, 10) and not val_loss_far_above_chance(2.4, 10)


def test_a_high_validation_loss_before_batchnorm_settles_is_not_divergence_unless_it_is_not_finite():
    # 8 steps: BatchNorm's running statistics still near their initial values (measured: 33.4 on a learning run)
    assert val_loss_far_above_chance(33.4, 10, steps=8) is None
    assert val_loss_far_above_chance(33.4, 10, steps=SETTLE_STEPS) and val_loss_far_above_chance(33.4, 10)
    assert val_loss_far_above_chance(float("nan"), 10, steps=1) and val_loss_far_above_chance(float("inf"), 10, 1)


def test_a_small_batchnorm_run_is_not_stopped_by_its_first_validation(tmp_path, data_dir, capsys):
    # The run that was stopped at a validation loss of 33.4 after epoch 1's 8 steps, while it was learning.
    code = main(["train", "--recipe", "fast", "--num-train", "2048", "--num-val", "256", "--epochs", "2", "--lr",
                 "0.05", "--no-progress", "--data-dir", str(data_dir), "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err


def test_a_run_that_diverges_inside_its_first_epoch_stops_with_exit_code_3(tmp_path, data_dir, capsys):
    code = main(["train", "--model", "lenet-bn", "--lr", "50", "--optimizer", "sgd", "--epochs", "3",
                 "--num-train", "3200", "--num-val", "256", "--batch-size", "64", "--no-progress",
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 3 and "in epoch 1: training diverged" in err
    assert not (tmp_path / "r" / "last.pt").exists()  # stopped inside the first epoch, before any checkpoint


# ---- real budgets (slow: each takes its budget) ----------------------------------------------------------------

def _cnnlab(*argv, timeout=600):
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def _busy_core(seconds: float):
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_spin, args=(seconds,), daemon=True)
    process.start()
    return process


def _spin(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("busy", [False, True], ids=["calm", "one-core-busy"])
def test_a_real_budget_ends_within_budget_plus_2_percent_and_replays_bit_for_bit(tmp_path, data_dir, busy):
    spinner = _busy_core(120) if busy else None
    try:
        done, wall = _cnnlab("cnnlab", "train", "--recipe", "fast", "--budget", "60s", "--num-train", "5000",
                             "--num-val", "1000", "--no-progress", "--data-dir", str(data_dir), "--out",
                             str(tmp_path / "budget"))
    finally:
        if spinner is not None:
            spinner.terminate()
    assert done.returncode == 0, done.stderr[-2000:]
    assert wall <= 60 * 1.02, done.stdout
    assert "budget 60 s:" in done.stdout and "test accuracy" in done.stdout
    a, b = _replayed(tmp_path / "budget", tmp_path / "replay", "last.pt")
    assert a["global_step"] == b["global_step"] > 0


def _replayed(run, again, checkpoint: str) -> tuple[dict, dict]:
    """``cnnlab train --replay run`` into ``again``; both runs' ``checkpoint``, whose weights must be equal."""
    replay, _ = _cnnlab("cnnlab", "train", "--replay", str(run), "--no-progress", "--out", str(again))
    assert replay.returncode == 0, replay.stderr[-2000:]
    a, b = load_checkpoint(run / checkpoint), load_checkpoint(again / checkpoint)
    assert a["model_state"].keys() == b["model_state"].keys()
    for x, y in zip(a["model_state"].values(), b["model_state"].values(), strict=True):
        assert torch.equal(x, y)
    return a, b


@pytest.mark.slow
def test_an_automatic_budget_holds_its_pixel_blend_and_replays_it_bit_for_bit(tmp_path, data_dir):
    folder = tmp_path / "fashion"
    for split, limit in (("train", 1000), ("test", 500)):
        assert main(["data", "export-folder", str(folder), "--split", split, "--limit", str(limit),
                     "--data-dir", str(data_dir)]) == 0
    done, wall = _cnnlab("cnnlab", "train", "--images", str(folder), "--budget", "30s", "--no-progress", "--out",
                         str(tmp_path / "budget"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert wall <= 30 * 1.02, done.stdout
    assert "(with the pixel blend after training" in done.stdout and "pixel blend: " in done.stdout
    a, b = _replayed(tmp_path / "budget", tmp_path / "replay", "best.pt")  # the net, and the head if chosen
    assert a["model_kwargs"] == b["model_kwargs"]


@pytest.mark.slow
def test_under_torchrun_the_ranks_agree_on_the_rate_and_the_step_to_stop_at(tmp_path, data_dir):
    done, wall = _cnnlab("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnlab", "train",
                         "--model", "lenet-bn", "--budget", "45s", "--num-train", "4096", "--num-val", "1024",
                         "--no-progress", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert wall <= 45 * 1.02 and done.stdout.count("test accuracy") == 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == len(state["progress_trace"]) > 0


@pytest.mark.slow  # 500 steps: ~2 minutes of CPU on the 2-core development machine
def test_a_200_image_folder_gets_enough_steps_and_learns(tmp_path, data_dir, capsys):
    """The issue's failure: --recipe fast on a small folder had ~40 steps of a one-cycle schedule. Now: its floor."""
    folder = tmp_path / "fashion"
    for split, limit in (("train", 200), ("test", 200)):
        assert main(["data", "export-folder", str(folder), "--split", split, "--limit", str(limit),
                     "--data-dir", str(data_dir)]) == 0
    code = main(["train", "--images", str(folder), "--recipe", "fast", "--model", "lenet-bn", "--batch-size", "64",
                 "--no-progress", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "500 steps (a floor of 500 steps: 7 epochs would be 28) = 125 epochs of 4" in out
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 500 and len(state["history"]) == 10  # validated every 13 epochs (52 steps)
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # 10 classes: chance is 0.1


def test_a_budget_too_short_for_a_few_hundred_steps_halves_the_batch():
    # 0.6 of 50 s left is 30 s: 142 steps of 256 at 0.21 s (fp32 on 2 cores), 600 of 64 at a quarter of that.
    assert budget_batch_size(256, 0.21, 50.0) == 64
    assert budget_batch_size(256, 0.10, 50.0) == 128  # 300 steps of 256, 600 of 128
    assert budget_batch_size(256, 0.10, 840.0) == 256  # 15 minutes: thousands of steps, the recipe's batch
    assert budget_batch_size(256, 5.0, 50.0) == BATCH_FLOOR  # never below the floor
    assert budget_batch_size(32, 5.0, 50.0) == 32  # a batch already under the floor is left alone
    batch = budget_batch_size(256, 0.05, 60.0)
    assert 0.6 * 60 / (0.05 * batch / 256) >= MIN_BUDGET_STEPS


def test_the_epochs_a_budget_holds_and_the_chain_of_narrower_models():
    # 0.6 of 55 s is 33 s: 157 steps of 256 at 0.21 s (fp32, 2 cores), 40k of 58k images.
    assert budget_epochs(0.21, 256, 55.0, 58_000) == pytest.approx(0.6 * 55 / 0.21 * 256 / 58_000)
    assert budget_epochs(0.21, 256, -3.0, 58_000) == 0.0
    assert narrower_model("fastnet-wide") == "fastnet-flip" and narrower_model("fastnet-flip") == "fastnet-slim"
    assert narrower_model("fastnet-slim") is None and narrower_model("lenet") is None
    sizes = [sum(p.numel() for p in create_model(name).parameters())
             for name in ("fastnet-wide", "fastnet-flip", "fastnet-slim")]
    assert sizes == sorted(sizes, reverse=True) and sizes[2] < 0.5 * sizes[1]


@pytest.mark.parametrize("seconds_left, expected", [(0.5, "fastnet-slim"), (10**6, "fastnet-wide")])
def test_a_budget_too_short_for_a_few_epochs_narrows_the_model_from_the_same_random_state(data_dir, seconds_left,
                                                                                        expected):
    from cnnlab.recipes.run import _fit_model_to_budget, build_data, build_model

    config = resolve_config(TrainConfig(budget=100.0, num_train=512, num_val=256, data_dir=str(data_dir)),
                            "fast-long")
    data = build_data(config)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    lines = []
    chosen, model = _fit_model_to_budget(config, data, build_model(config, data), rng,
                                         clock=lambda: 100.0 - seconds_left, log=lines.append)
    assert chosen.model == model.model_name == expected and chosen.threads is not None
    narrowed = [line for line in lines if line.startswith("model ")]
    assert len(narrowed) == (2 if expected == "fastnet-slim" else 0)  # wide -> flip -> slim, each said
    assert all("epochs of it on this machine" in line for line in narrowed)
    torch.set_rng_state(rng)  # --replay builds the chosen model straight away: the same weights
    direct = build_model(chosen, data)
    for a, b in zip(model.state_dict().values(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_same_budget_command_with_resume_auto_continues_its_run(tmp_path, data_dir):
    from cnnlab.recipes.run import run_training

    # The run records what the budget decided (here surely a halved batch: 15 s hold no 500 steps of 512 on
    # any CPU; a narrower net is the same case, tested in test_runlock): the same command again is the same run.
    config = resolve_config(TrainConfig(model="lenet-bn", budget=15.0, num_train=4000, num_val=500, batch_size=512,
                                        data_dir=str(data_dir), out=str(tmp_path / "r"), progress=False), "fast")
    lines = []
    first = run_training(config, resume="auto", log=lines.append)
    chosen = first["config"].batch_size
    assert chosen < 512 and any(line.startswith(f"batch {chosen}, not 512") for line in lines)
    again = run_training(config, resume="auto", log=None)  # was: ConfigError "holds a run of other settings"
    assert again["finished_already"] and again["steps"] == first["steps"]
