"""One run, one folder: default names taken exclusively, a live folder locked against a second writer, a killed
writer's lock taken over, readers never blocked, and a run continued by itself (``--resume auto``, torchrun).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.inference.loaded import evaluate_checkpoint
from cnnlab.recipes import TrainConfig
from cnnlab.recipes.resume import config_differences, folder_to_resume
from cnnlab.training import runlock
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.runfolder import RunFolder

TINY = ["--model", "lenet-relu", "--num-train", "512", "--num-val", "128", "--no-progress", "--device", "cpu"]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_names_are_taken_exclusively_next_free_on_a_collision(tmp_path):
    base = tmp_path / "runs" / "lenet-relu-20260101-000000"
    folders = [RunFolder.create_new(base, {"seed": i}) for i in range(3)]
    assert [f.path.name for f in folders] == [base.name, f"{base.name}-1", f"{base.name}-2"]
    assert [json.loads(f.config_file.read_text())["seed"] for f in folders] == [0, 1, 2]
    for folder in folders:
        folder.release()
    assert not list(tmp_path.glob("runs/*/.lock"))  # a clean end leaves no lock file


# The replay: two default-named runs started in the same second (the clock is pinned to one second),
# with different seeds, at the same time, in the same working folder.
_SAME_SECOND = textwrap.dedent("""
    import sys, time
    time.strftime = lambda *args: "20260101-000000"
    from cnnlab.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow  # two trainings and their test-set evaluations (~15 s on 2 idle cores)
def test_two_runs_started_in_the_same_second_get_a_folder_each(tmp_path, data_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _SAME_SECOND, "train", *TINY, "--epochs", "1", "--seed",
                               str(seed), "--data-dir", str(data_dir)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["lenet-relu-20260101-000000", "lenet-relu-20260101-000000-1"]
    for seed, (out, _) in zip((1, 2), outputs, strict=True):
        line = out.strip().splitlines()[-1]
        run = tmp_path / line.split("files in ")[1].split("/ (")[0]
        # Its own folder, files and accuracy: the seed it was given, one epoch's row, the accuracy of its model.
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        assert len((run / "metrics.csv").read_text().splitlines()) == 2
        assert load_checkpoint(run / "last.pt")["config"]["seed"] == seed
        accuracy = evaluate_checkpoint(run, str(data_dir), "cpu")[1].accuracy
        assert f"test accuracy {accuracy:.4f}" in line


_HOLD = textwrap.dedent("""
    import sys, time
    from cnnlab.training import runlock
    runlock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A finished 1-epoch run, started by ``--resume auto`` in an empty --out folder (a fresh start)."""
    run = tmp_path_factory.mktemp("locked") / "run"
    code = main(["train", *TINY, "--epochs", "1", "--seed", "4", "--data-dir", str(data_dir), "--out", str(run),
                 "--resume", "auto"])
    assert code == 0 and load_checkpoint(run / "last.pt")["config"]["seed"] == 4
    return run


@pytest.fixture
def held_run(finished_run):
    """(the finished run, a live process that holds its lock as a running writer would)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(finished_run)], text=True, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout.readline() == "held\n"
    yield finished_run, holder
    holder.kill()
    holder.wait()


def test_a_second_writer_is_refused_at_once_and_readers_are_not(held_run, data_dir, capsys):
    run, holder = held_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for argv in (["train", *TINY, "--epochs", "2", "--data-dir", data_dir, "--out", run], ["train", "--resume", run],
                 ["train", *TINY, "--epochs", "1", "--seed", "4", "--data-dir", data_dir, "--out", run, "--resume",
                  "auto"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert f"run folder {run} is in use by process {holder.pid}" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing written
    code, out, err = _cli(capsys, "evaluate", run, "--data-dir", data_dir, "--out", run.parent / "confusion.png")
    assert code == 0 and "test accuracy" in out  # a reader is never blocked


def test_the_lock_of_a_killed_run_is_taken_over_and_auto_resume_continues_it(held_run, data_dir, capsys):
    run, holder = held_run
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert runlock.holder(run) == holder.pid  # its lock file stays, naming the dead process; the OS lock is gone
    argv = ["train", *TINY, "--epochs", "1", "--data-dir", data_dir, "--out", run, "--resume", "auto"]
    code, out, err = _cli(capsys, *argv, "--seed", "4")  # the same settings: continued (here: finished already)
    assert code == 0 and "had already finished all 1 epochs" in out, err
    assert not (run / runlock.LOCK_NAME).exists()
    code, out, err = _cli(capsys, *argv, "--seed", "5")
    assert code == 2 and "holds a run of other settings (seed: 4 there, 5 now)" in err
    assert load_checkpoint(run / "last.pt")["config"]["seed"] == 4  # untouched
    code, _, err = _cli(capsys, "train", *TINY, "--resume", "auto")
    assert code == 2 and "--resume auto continues the run in --out DIR" in err


def test_under_torchrun_a_folder_with_last_pt_is_continued_or_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = TrainConfig(model="lenet-relu", epochs=3, seed=5, out=str(run))
    RunFolder(run).create(config.to_dict()).release()
    assert folder_to_resume(config, None) is None  # one process, no --resume auto: a new run
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun starts (and restarts) each worker
    assert folder_to_resume(config, None) is None  # no last.pt yet: nothing finished to continue
    (run / "last.pt").write_bytes(b"an epoch")
    assert folder_to_resume(config, None) == run
    other = TrainConfig(model="lenet-relu", epochs=4, seed=5, out=str(run), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(epochs: 3 there, 4 now\)"):
        folder_to_resume(other, None)


def test_config_differences_ignore_display_and_later_decisions():
    stored = {"seed": 1, "image_size": 32, "progress": True, "out": "a", "lr": 0.1}
    assert config_differences(stored, {"seed": 1, "image_size": None, "progress": False, "out": "./a", "lr": 0.1}) == []
    assert config_differences(stored, {**stored, "lr": 0.2}) == ["lr: 0.1 there, 0.2 now"]


def test_what_a_budget_decided_is_not_a_difference_and_anything_else_is():
    # The same `--recipe fast --budget 60s` command again: the run recorded the net and batch the budget chose.
    stored = {"model": "fastnet-slim", "batch_size": 64, "threads": 1, "budget": 60.0, "seed": 0}
    given = {"model": "fastnet-flip", "batch_size": 256, "threads": None, "budget": 60.0, "seed": 0}
    assert config_differences(stored, given) == []
    assert config_differences(stored, {**given, "model": "fastnet-wide"}) == []  # two steps narrower
    assert config_differences(stored, {**given, "model": "lenet"}) == ["model: 'fastnet-slim' there, 'lenet' now"]
    assert config_differences(stored, {**given, "batch_size": 96}) == ["batch_size: 64 there, 96 now"]
    assert config_differences({**stored, "model": "fastnet-wide"}, given) == [
        "model: 'fastnet-wide' there, 'fastnet-flip' now"]  # wider than given: never a budget's choice
    unbudgeted = {**stored, "budget": None}
    assert len(config_differences(unbudgeted, {**given, "budget": None})) == 2  # model and batch: other settings


def test_holds_are_counted_in_a_process_and_the_last_release_removes_the_file(tmp_path):
    runlock.acquire(tmp_path)
    lock = Path(tmp_path) / runlock.LOCK_NAME
    assert lock.read_text() == f"{os.getpid()}\n"
    runlock.acquire(tmp_path)  # counted within this process
    runlock.release(tmp_path)
    assert lock.exists()
    runlock.release(tmp_path)
    assert not lock.exists()
