"""The automatic recipe's last step (cnnlab.recipes.blend): the pixel blend (the head's fit, the share chosen on the
validation split) and the test-time shifts, and runs whose best.pt, evaluation, export and resume all carry them."""

from __future__ import annotations

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.recipes.blend import MAX_HEAD_VALUES, _subset_size, choose_blend, fit_pixel_head
from cnnlab.training.checkpoint import load_checkpoint


def test_the_head_reads_the_nets_own_input_with_its_standardization_folded_in():
    # Features far from zero and on a tiny scale: a head that kept the standardized fit's W and b as they are
    # would read these inputs as a constant and answer one class.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 1, 2, 2, generator=g)
    labels = (z[:, 0, 0, 0] > 0).long()
    inputs = 100 + 0.01 * z
    W, b = fit_pixel_head(inputs[:300], labels[:300], inputs[300:], labels[300:], num_classes=2)
    predicted = (inputs[300:].flatten(1) @ W.T + b).argmax(1)
    assert (predicted == labels[300:]).float().mean() >= 0.95


def test_a_feature_that_hardly_varies_takes_no_weight_in_the_tens():
    # A white-balanced corner pixel varies by 1e-4: standardized to unit spread, its noise took a weight in the
    # model's units of the standardized one over 1e-4, and float32 sums of such products differ between runtimes
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    signal = labels.float() * 2 - 1
    inputs = torch.stack([signal + torch.randn(400, generator=g), 1e-4 * torch.randn(400, generator=g),
                          torch.randn(400, generator=g), torch.randn(400, generator=g)], 1).view(400, 1, 2, 2)
    W, _ = fit_pixel_head(inputs[:300], labels[:300], inputs[300:], labels[300:], num_classes=2)
    assert W[:, 1].abs().max() < 10 and W[:, 0].abs().min() > 0.5  # the signal's weight is the larger


def test_the_share_is_the_one_of_lowest_validation_log_loss_and_none_where_the_head_does_not_help():
    labels = torch.arange(40) % 2
    right, wrong = 3 * torch.nn.functional.one_hot(labels, 2).float(), 3 * torch.nn.functional.one_hot(1 - labels,
                                                                                                         2).float()
    half = torch.arange(40) < 20
    net = torch.where(half[:, None], right, wrong)  # right on the first half, confidently wrong on the second
    head = torch.where(half[:, None], wrong, right)  # the other way round: their mean is the best of both
    weight, alone, blended = choose_blend(net, head, labels)
    assert weight == 0.5 and blended < alone
    # A net right everywhere and a head that knows nothing: the net stays alone
    weight, alone, blended = choose_blend(right, torch.zeros(40, 2), labels)
    assert weight == 0.0 and blended == alone


def test_the_heads_fit_is_kept_to_a_bounded_number_of_values():
    assert _subset_size(3 * 32 * 32) * 3 * 32 * 32 <= MAX_HEAD_VALUES < (_subset_size(3 * 32 * 32) + 1) * 3 * 32 * 32
    assert _subset_size(28 * 28) == 5_102 and _subset_size(8 * 8) == 10_000  # at most as many as the baseline


def _accuracy(text: str) -> float:
    return float(text.split("test accuracy ")[1].split()[0])


def test_an_automatic_run_blends_and_every_later_use_of_the_run_scores_the_blend(tmp_path, monkeypatch, capsys):
    from cnnlab.inference.loaded import evaluate_checkpoint
    from image_sets import short_run

    monkeypatch.setenv("CNNLAB_BF16", "0")
    # 60 steps: a net that has not learned all it could, beside which the linear head has something to add
    _, run, out = short_run("fashion-28-200", tmp_path, capsys, 60, 0.05)
    assert "pixel blend: the net's probabilities averaged with a linear classifier's" in out
    weight = float(out.split("pixel blend: ")[1].split("weight ")[1].split()[0])
    state = load_checkpoint(run / "best.pt")
    assert 0 < weight <= 0.5 and state["model_kwargs"]["pixel_blend"] == weight
    assert state["model_state"]["pixel_head.weight"].abs().sum() > 0  # fitted, not the zeros it is built with
    accuracy = _accuracy(out)
    # The baseline's line says that the model it compares with holds a linear part too
    assert f"; the network: {accuracy:.4f} (the net blended with a linear classifier on the pixels, weight " \
        f"{weight:g})" in out
    assert evaluate_checkpoint(run)[1].accuracy == pytest.approx(accuracy, abs=1e-4)
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 0
    assert evaluate_checkpoint(tmp_path / "m.safetensors")[1].accuracy == pytest.approx(accuracy, abs=1e-4)
    # Resumed when finished: scored again, not blended twice
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert "pixel blend:" not in again and _accuracy(again) == pytest.approx(accuracy, abs=1e-4)
    assert f"weight {weight:g})" in again  # the resumed run's baseline line still says it
    assert load_checkpoint(run / "best.pt")["model_kwargs"]["pixel_blend"] == weight
    # --no-pixel-blend: the net alone, as trained
    _, alone, alone_out = short_run("fashion-28-200", tmp_path, capsys, 60, 0.05, "--no-pixel-blend", out="alone")
    assert "pixel blend" not in alone_out and "blended" not in alone_out
    assert "pixel_head.weight" not in load_checkpoint(alone / "best.pt")["model_state"]


def test_a_pixel_blend_for_a_model_without_a_head_is_refused_in_one_line(tmp_path, capsys):
    from image_sets import write_set

    folder = str(write_set("shapes-25", tmp_path / "f"))
    assert main(["train", "--images", folder, "--model", "lenet-bn", "--pixel-blend", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pixel-blend needs --images and a model with a pixel head" in err[0]


def test_a_run_on_crops_is_scored_on_its_shifts_and_so_is_every_later_use_of_the_run(tmp_path, monkeypatch, capsys):
    from cnnlab.inference.loaded import evaluate_checkpoint
    from cnnlab.recipes import read_run_config
    from image_sets import short_run

    monkeypatch.setenv("CNNLAB_BF16", "0")
    _, run, out = short_run("shapes-25", tmp_path, capsys, 40, 0.05, "--no-pixel-blend")
    assert "the mean of the net's predictions over its 25 shifts by up to 2 pixels" in out
    assert read_run_config(run).shift_tta == 2  # so a resumed or replayed run finishes the same way
    assert load_checkpoint(run / "best.pt")["model_kwargs"]["shift_tta"] == 2
    accuracy = _accuracy(out)
    assert evaluate_checkpoint(run)[1].accuracy == pytest.approx(accuracy, abs=1e-4)
    # ONNX: the shifted views exported too, checked against PyTorch by onnxruntime within the export's bar
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: scored again, not shifted twice
    again = capsys.readouterr().out
    assert "test-time shifts" not in again and _accuracy(again) == pytest.approx(accuracy, abs=1e-4)
    assert load_checkpoint(run / "best.pt")["model_kwargs"]["shift_tta"] == 2
    # A run folder of the days when the setting was a yes or no (yes: one pixel) reads as that pixel
    (run / "config.json").write_text((run / "config.json").read_text().replace('"shift_tta": 2', '"shift_tta": true'))
    assert read_run_config(run).shift_tta == 1
    _, plain, plain_out = short_run("shapes-25", tmp_path, capsys, 40, 0.05, "--no-pixel-blend", "--no-shift-tta",
                                    out="plain")
    assert "test-time shifts" not in plain_out and load_checkpoint(plain / "best.pt")["model_kwargs"]["shift_tta"] == 0


def test_the_automatic_recipe_shifts_where_it_crops_and_nowhere_else(tmp_path):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config
    from image_sets import write_set

    for name, crops in (("digits-8", False), ("shapes-25", True)):
        folder = str(write_set(name, tmp_path / name))
        config, _, plan = auto_config(TrainConfig(images=folder, lr=0.1, threads=1, progress=False), log=None)
        # No step timed (--threads): every shift the crops taught, 2 pixels each way
        assert plan.augment is crops and config.shift_tta == plan.shift_tta == (2 if crops else 0), name
    config, _, _ = auto_config(TrainConfig(images=folder, lr=0.1, threads=1, augment=False, progress=False),
                               log=None)
    assert config.shift_tta == 0  # no crops taught it the shifts


@pytest.mark.parametrize("seconds_per_step, budget, shift, said", [
    (0.016, None, 2, "tested on 25 shifts"),  # 96 images x 25 views at 1 ms: 2.4 s
    (0.16, None, 1, "tested on 9 shifts"),  # 10 ms an image: 25 views 24 s, over the 15 s; 9 views 8.6 s
    (1.0, None, 0, "augment crop"),  # 62 ms: 9 views 54 s; one view
    (0.016, 20.0, 1, "tested on 9 shifts"),  # a --budget 20s spends at most 2 s on them: 25 views 2.4 s, 9 0.9 s
])
def test_the_automatic_recipe_takes_the_shifts_its_clock_allows(tmp_path, monkeypatch, seconds_per_step, budget,
                                                                  shift, said):
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import auto_config
    from image_sets import write_set

    # shapes-25: 80 test images and 16 for validation, batches of 16; a step timed as given
    monkeypatch.setattr("cnnlab.recipes.auto.model_and_threads", lambda *args: (None, None, 1, seconds_per_step))
    folder = str(write_set("shapes-25", tmp_path / "f"))
    lines = []
    config, _, plan = auto_config(TrainConfig(images=folder, lr=0.1, budget=budget, progress=False),
                                  log=lines.append)
    assert config.shift_tta == plan.shift_tta == shift and lines[-1].endswith(said), lines[-1]
    given, _, _ = auto_config(TrainConfig(images=folder, lr=0.1, shift_tta=2, progress=False), log=None)
    assert given.shift_tta == 2  # --shift-tta 2 wins over the clock


def test_the_views_fit_the_seconds_given():
    from cnnlab.recipes.blend import tta_shift, tta_views

    assert [tta_views(s) for s in (0, 1, 2)] == [1, 9, 25]
    assert tta_shift(520, 0.53e-3) == 2  # photos-32's test and validation images at its training step's pace
    assert tta_shift(10_400, 0.45e-3) == 0  # 10,000 test images: nine views would take ~42 s
    assert tta_shift(2_000, 0.5e-3) == 1 and tta_shift(2_000, 0.5e-3, seconds=5) == 0
    assert tta_shift(10**6, None) == 2  # no step timed: every shift


@pytest.mark.parametrize("options, message", [
    (["--no-augment", "--shift-tta"], "--shift-tta needs a model trained on random crops (--augment)"),
    (["--model", "lenet-bn", "--augment", "crop", "--shift-tta"], "that averages shifted views (fastnet-auto"),
])
def test_shifts_without_crops_or_for_a_model_without_them_are_refused_in_one_line(tmp_path, capsys, options, message):
    from image_sets import write_set

    folder = str(write_set("shapes-25", tmp_path / "f"))
    assert main(["train", "--images", folder, *options, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_shift_tta_takes_the_crops_pixels_unless_told_how_many():
    from cnnlab.cli.parser import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--shift-tta"]).shift_tta == 2  # every shift of the crops' 2-pixel padding
    assert parse(["train", "--shift-tta", "1"]).shift_tta == 1
    assert parse(["train", "--no-shift-tta"]).shift_tta == 0 and parse(["train"]).shift_tta is None
