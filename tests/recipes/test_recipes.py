"""Training recipes (cnnlab.recipes): config resolution, optimizers, schedules, checks, resume, bf16."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnnlab import recipes
from cnnlab.cli.main import main
from cnnlab.inference.loaded import load_trained
from cnnlab.models import create_model, list_models, model_recipe
from cnnlab.recipes import BASE, RECIPES, TrainConfig, model_defaults, resolve_config
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.runtime import bf16_default, bf16_is_fast

WORKER = str(Path(__file__).parents[1] / "_ddp_worker.py")  # the helpers live at tests/
TINY = ["--num-train", "512", "--num-val", "256", "--no-progress", "--no-bf16"]


# -- resolving a config -------------------------------------------------------------------------------------------

def test_unset_fields_take_the_base_recipe_for_the_seed_lenet(monkeypatch):
    monkeypatch.setenv("CNNLAB_BF16", "0")
    config = resolve_config(TrainConfig())
    assert config.model == "lenet"
    for key, value in BASE.items():
        expected = False if key == "bf16" else value  # bf16 unset: CNNLAB_BF16 decides
        assert getattr(config, key) == expected, key


@pytest.mark.parametrize("model", list_models())
def test_per_model_defaults_override_the_base_and_the_user_overrides_both(model, monkeypatch):
    monkeypatch.setenv("CNNLAB_BF16", "1")
    config = resolve_config(TrainConfig(model=model))
    for key, value in {**BASE, "bf16": True, **model_recipe(model)}.items():
        assert getattr(config, key) == value, key
    mine = resolve_config(TrainConfig(model=model, lr=0.0123, image_size=40, bf16=False))
    assert (mine.lr, mine.image_size, mine.bf16) == (0.0123, 40, False)


def test_recipe_fast_chooses_its_model_and_settings_unless_given(monkeypatch):
    monkeypatch.setenv("CNNLAB_BF16", "0")
    config = resolve_config(TrainConfig(), "fast")
    for key, value in RECIPES["fast"].items():
        assert getattr(config, key) == value, key
    assert resolve_config(TrainConfig(epochs=2), "fast").epochs == 2
    assert resolve_config(TrainConfig(model="lenet-relu"), "fast").model == "lenet-relu"
    with pytest.raises(ValueError, match="unknown recipe 'slow'; known recipes: seed, fast"):
        resolve_config(TrainConfig(), "slow")


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True)])
def test_cnnlab_bf16_overrides_the_hardware_everywhere(monkeypatch, value, expected):
    monkeypatch.setenv("CNNLAB_BF16", value)
    assert bf16_default("cpu") is expected
    assert resolve_config(TrainConfig()).bf16 is expected
    assert resolve_config(TrainConfig(bf16=not expected)).bf16 is (not expected)  # an explicit --bf16 wins


def test_without_cnnlab_bf16_the_hardware_decides(monkeypatch):
    monkeypatch.delenv("CNNLAB_BF16", raising=False)
    cpu = getattr(torch, "cpu", None)
    has = any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    assert bf16_is_fast("cpu") is has and bf16_default("cpu") is has
    assert bf16_is_fast("meta") is False


def test_a_bad_cnnlab_bf16_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CNNLAB_BF16", "yes")
    with pytest.raises(ValueError, match="CNNLAB_BF16 must be 0 .* or 1"):
        bf16_default("cpu")
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CNNLAB_BF16 must be 0" in err


# -- optimizers, schedules, clipping -------------------------------------------------------------------------------

def _config(**kw):
    return replace(resolve_config(TrainConfig(bf16=False)), **kw)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD),
                                       ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_make_optimizer_builds_what_it_names(name, cls):
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = recipes.make_optimizer(_config(optimizer=name, lr=0.02, weight_decay=1e-3, momentum=0.8))(params)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 1e-3
    if name == "momentum":
        assert group["momentum"] == 0.8 and group["nesterov"] is True
    elif name == "sgd":
        assert group["momentum"] == 0


def _lrs(schedule, steps=20, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=lr)
    scheduler = recipes.make_scheduler(_config(schedule=schedule, lr=lr))
    if scheduler is None:
        return [lr] * steps
    scheduler = scheduler(opt, steps // 2, 2)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_schedules_have_their_shapes():
    assert _lrs("constant") == [0.1] * 20
    cosine = _lrs("cosine")
    assert cosine[0] == pytest.approx(0.1) and all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    assert cosine[10] == pytest.approx(0.05, rel=0.1)  # half-way down a cosine is half the rate
    onecycle = _lrs("onecycle")
    peak = max(range(20), key=onecycle.__getitem__)
    assert onecycle[0] < 0.01 and onecycle[peak] == pytest.approx(0.1) and 3 <= peak <= 6  # 25% warm-up
    assert onecycle[-1] < 0.001


def test_clip_grad_norm_bounds_the_update(data_dir):
    from cnnlab import Display, FashionMNIST, Optimization, Trainer, create_model

    def step_size(clip):
        torch.manual_seed(0)
        model = create_model("lenet-relu")
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        data = FashionMNIST(batch_size=64, root=data_dir, num_train=64, num_val=64)
        sgd = Optimization(lambda p: torch.optim.SGD(p, lr=1.0), clip_grad_norm=clip)
        Trainer(max_epochs=1, seed=0, optimization=sgd, display=Display(progress=False, log=None)).fit(model, data)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    # One SGD step at lr 1 moves the weights by exactly the gradient's norm: at most the clip value.
    assert step_size(0.01) == pytest.approx(0.01, rel=1e-3)
    assert step_size(0.0) > 0.05


# -- checks on new and resumed runs ---------------------------------------------------------------------------------

def test_resume_checks_the_saved_settings_like_a_new_run(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--data-dir", str(data_dir), *TINY,
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    config["epochs"] = 2
    for key, bad, words in [("image_size", 600, "--image-size must be between 8 and 512 pixels, got 600"),
                            ("lr", -1.0, "--lr must be a positive finite number"),
                            ("epochs", "two", "epochs is 'two', expected int")]:
        (run / "config.json").write_text(json.dumps({**config, key: bad}))
        capsys.readouterr()
        assert main(["train", "--resume", str(run)]) == 2, key
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # nothing trained on the bad settings


def test_a_one_cycle_run_whose_epochs_were_edited_is_refused_not_crashed(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--schedule", "onecycle", "--batch-size", "64",
                 "--data-dir", str(data_dir), *TINY, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2  # torch's OneCycleLR, resumed, would step past its end
    err = capsys.readouterr().err
    assert "laid out over 1 epochs" in err and "Set epochs back to 1" in err and err.count("\n") == 1
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 0  # as it was: a finished run, nothing to do


def _old_names(settings):
    """Settings as cnnlab wrote them before issue 24: the image size as `resize`, and no min_steps yet."""
    return {("resize" if k == "image_size" else k): v for k, v in settings.items() if k != "min_steps"}


def test_a_cpu_runs_validation_and_the_test_pass_in_batches_of_128(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--device", "cpu", "--data-dir", str(data_dir),
                 *TINY, "--out", str(run)]) == 0
    assert load_checkpoint(run / "best.pt")["data_settings"]["val_batch_size"] == 128
    loader = load_trained(run).test_loader()
    assert loader.batch_size == 128 and len(loader) == -(-10_000 // 128)
    assert "test accuracy" in capsys.readouterr().out


def test_a_run_folder_from_before_the_rename_to_image_size_loads_and_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    # A constant schedule, so that one more epoch can be asked of the finished run through its config.json.
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--schedule", "constant", "--data-dir",
                 str(data_dir), *TINY, "--image-size", "32", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**_old_names(config), "epochs": 2}))
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        state["config"], state["data_settings"] = _old_names(state["config"]), _old_names(state["data_settings"])
        torch.save(state, run / name)
    assert "resize" in torch.load(run / "last.pt", weights_only=True)["data_settings"]  # as an old file has it
    assert recipes.read_run_config(run).image_size == 32
    old = load_checkpoint(run / "best.pt")
    assert old["config"]["image_size"] == 32 and tuple(old["data_settings"]["image_size"]) == (32, 32)
    assert load_trained(run).image_size == (32, 32)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["epoch"] == 2 and resumed["config"]["image_size"] == 32


def _worker(*argv, **env):
    full = {**os.environ, "OMP_NUM_THREADS": "2", **{k: str(v) for k, v in env.items()}}
    full.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, WORKER, *argv], env=full, capture_output=True, text=True, timeout=300)


def test_killed_before_the_first_checkpoint_then_resume_starts_afresh(tmp_path, data_dir):
    run = tmp_path / "run"
    args = ["train", "--model", "lenet-relu", "--epochs", "2", "--seed", "4", "--data-dir", str(data_dir), *TINY,
            "--out", str(run)]
    # SIGKILLed at its 3rd training step: config.json exists, no checkpoint does.
    killed = _worker(*args, CNNLAB_TEST_DIE_STEP=3, CNNLAB_TEST_DIE_RANK=0, CNNLAB_TEST_DIE_HOW="kill")
    assert killed.returncode == -signal.SIGKILL
    assert (run / "config.json").is_file() and not (run / "last.pt").exists()
    resumed = _worker("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 2/2" in resumed.stdout
    # Starting afresh from config.json is the run that was asked for: same as never having been killed.
    fresh = tmp_path / "fresh"
    assert _worker(*args[:-1], str(fresh)).returncode == 0
    ours, ref = load_checkpoint(run / "last.pt"), load_checkpoint(fresh / "last.pt")
    for name, value in ref["model_state"].items():
        assert torch.equal(ours["model_state"][name], value), name


def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    args = ["train", "--model", "lenet-relu", "--epochs", "2", "--seed", "4", "--data-dir", str(data_dir), *TINY,
            "--out", str(run)]
    # 4 steps an epoch (512 images, batch 128): SIGINT (Ctrl-C) at step 6, in epoch 2, after epoch 1's checkpoint.
    stopped = _worker(*args, CNNLAB_TEST_DIE_STEP=6, CNNLAB_TEST_DIE_RANK=0, CNNLAB_TEST_DIE_HOW="sigint")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("cnnlab: interrupted") and "--resume" in message
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    resumed = _worker("train", "--resume", str(run))
    assert resumed.returncode == 0 and "resuming at epoch 2/2" in resumed.stdout
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path, data_dir):
    # torch.compile needs a C++ compiler on the CPU and tens of seconds to compile: slow. Same seed, same steps,
    # fp32: the compiled run's losses match the eager run's to float rounding (fused kernels reorder sums).
    args = ["train", "--model", "lenet-relu", "--epochs", "1", "--seed", "2", "--data-dir", str(data_dir), *TINY]
    assert main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True
    eager = [json.loads(line) for line in open(tmp_path / "eager" / "metrics.jsonl")]
    compiled = [json.loads(line) for line in open(tmp_path / "compiled" / "metrics.jsonl")]
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-4)
    assert compiled[0]["val_acc"] == pytest.approx(eager[0]["val_acc"], abs=2 / 256)


@pytest.mark.parametrize("model", list_models())
def test_the_learning_rate_has_one_source_the_builder_default(model):
    # The recipe's lr is read off the builder's signature: the model `create_model` builds and the run
    # `cnnlab train --model NAME` starts use the same rate (resnet18's builder once said 0.01, its recipe 0.05).
    built = create_model(model, image_size=model_defaults(model)["image_size"])
    assert built.hparams["lr"] == built.model_kwargs["lr"] == resolve_config(TrainConfig(model=model)).lr


def test_a_model_registration_may_not_restate_the_learning_rate():
    from cnnlab.models import register_model

    with pytest.raises(ValueError, match="builder's `lr` default"):
        register_model("never-registered", lr=0.3)


def test_a_run_config_is_checked_field_by_field_against_trainconfigs_own_annotations(tmp_path, monkeypatch):
    import dataclasses

    from cnnlab.errors import RunFolderError
    from cnnlab.recipes import read_run_config
    from cnnlab.training.runfolder import RunFolder

    monkeypatch.setenv("CNNLAB_BF16", "0")
    config = resolve_config(TrainConfig(model="lenet", data_dir="/data", num_train=100))
    folder = RunFolder(tmp_path).create(config.to_dict())
    assert read_run_config(tmp_path) == config
    for field in dataclasses.fields(TrainConfig):  # every field, those added later too, is checked
        folder.create({**config.to_dict(), field.name: [1]})
        with pytest.raises(RunFolderError, match=f"{field.name} is \\[1\\], expected "):
            read_run_config(tmp_path)
    folder.create({**config.to_dict(), "lr": 1, "epochs": None})  # JSON's whole float is fine, a filled field not
    with pytest.raises(RunFolderError, match="epochs is None, expected int$"):
        read_run_config(tmp_path)
    folder.create({**config.to_dict(), "lr": 1, "num_val": None, "augment": True})
    assert read_run_config(tmp_path).lr == 1


def test_the_automatic_recipes_restart_replaces_its_attempt_without_the_new_run_note(tmp_path, data_dir):
    # A restart after divergence is a new run (resume NEW) in the diverged attempt's folder: the attempt's files
    # go, as for any new run there, but the restart's own line says what happens, not a note about --resume.
    from cnnlab.recipes.resume import NEW
    from cnnlab.recipes.run import run_training

    config = resolve_config(TrainConfig(model="lenet-relu", epochs=1, data_dir=str(data_dir), num_train=256,
                                        num_val=256, progress=False, out=str(tmp_path / "run")))
    said = []
    run_training(config, log=said.append)
    (tmp_path / "run" / "baseline.json").write_text("{}")
    run_training(config, resume=NEW, log=said.append)
    assert not any("a new run in" in line for line in said) and not (tmp_path / "run" / "baseline.json").exists()
    run_training(config, log=said.append)
    assert sum("a new run in" in line for line in said) == 1
