"""DistributedDataParallel under torchrun, on the CPU with gloo over loopback: 2 processes against 1.

Two ranks at a global batch of 64 see, step by step, exactly the batch one process sees (the same seeded
permutation, split by position), and DDP averages their gradients, so losses and weights match single-process
training to float rounding over a few steps; resuming a 2-rank run reproduces the uninterrupted 2-rank run
exactly. All in fp32 (--no-bf16), whatever CNNLAB_BF16 says. The slow part is starting processes (~5 s each
on 2 cores).
"""

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from cnnlab.cli.main import main
from cnnlab.recipes import read_run_config
from cnnlab.training import distributed
from cnnlab.training.checkpoint import load_checkpoint

WORKER = str(Path(__file__).parents[1] / "_ddp_worker.py")  # the helpers live at tests/
RUN_FILES = {"config.json", "metrics.csv", "metrics.jsonl", "curves.png", "last.pt", "best.pt"}
FAILED = "another process of this distributed run failed or timed out"


def _args(data_dir, *extra):
    # --no-bf16: float32, so that 2 ranks of 32 match 1 process of 64 to float rounding (bf16 would not).
    return ["train", "--model", "lenet-relu", "--num-train", "1024", "--num-val", "256", "--batch-size", "64",
            "--epochs", "2", "--device", "cpu", "--no-progress", "--no-bf16", "--data-dir", str(data_dir), *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    return {**env, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _spawn(argv, world_size=2, cwd=None, **env):
    """Start the ranks by hand, as torchrun would but with no agent to kill the survivors when one dies."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, WORKER, *argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             env=_env(RANK=r, WORLD_SIZE=world_size, LOCAL_RANK=r, LOCAL_WORLD_SIZE=world_size,
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env))
            for r in range(world_size)]


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["train_loss"] for line in open(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """CNNLAB_CACHE for module-scoped runs (conftest's per-test one is not set up yet for them)."""
    return str(tmp_path_factory.getbasetemp() / "cnnlab-cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, cache):
    """The interrupted run's twin: the same two ranks, never stopped. Its folder."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    ranks = _spawn(_args(data_dir, "--out", str(out)), CNNLAB_CACHE=cache)
    outputs = [r.communicate(timeout=120) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], outputs[0][1][-3000:]
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, data_dir, cache):
    """Two ranks started by hand (no torchrun agent to kill the survivor); rank 1 exits early in epoch 2.

    No --out: the default runs/<model>-<timestamp> is rank 0's choice, which rank 1 must learn.
    """
    cwd = tmp_path_factory.mktemp("interrupted")
    # 16 steps per epoch: rank 1 exits in epoch 2, after epoch 1 is checkpointed.
    ranks = _spawn(_args(data_dir), cwd=cwd, CNNLAB_CACHE=cache, CNNLAB_DIST_TIMEOUT=20, CNNLAB_TEST_DIE_STEP=20)
    outputs = [r.communicate(timeout=120) for r in ranks]
    runs = list((cwd / "runs").iterdir()) if (cwd / "runs").is_dir() else []
    run = runs[0] if len(runs) == 1 else None
    return SimpleNamespace(
        cwd=cwd, runs=runs, codes=[r.returncode for r in ranks], stdout=[o[0] for o in outputs],
        stderr=[o[1] for o in outputs], files={p.name for p in run.iterdir()} if run else set(),
        epoch=load_checkpoint(run / "last.pt")["epoch"] if run and (run / "last.pt").is_file() else None)


def test_a_rank_that_dies_stops_the_other_with_a_clear_message(interrupted):
    assert interrupted.codes[1] == 1
    assert interrupted.codes[0] == 4, interrupted.stderr[0][-3000:]
    assert len(interrupted.runs) == 1 and interrupted.files == RUN_FILES
    message = interrupted.stderr[0].strip().splitlines()[-1]
    run = interrupted.runs[0].relative_to(interrupted.cwd)
    assert message.startswith(f"cnnlab: error: {FAILED} (") and f"cnnlab train --resume {run}`" in message
    # gloo sees the dead peer's sockets close: the survivor stops at once instead of waiting for the timeout.
    assert "Connection reset by peer" in message or "Connection closed by peer" in message, message
    assert interrupted.epoch == 1 and interrupted.stdout[1] == ""


def test_torchrun_resume_trains_like_the_uninterrupted_run(tmp_path, interrupted, uninterrupted):
    assert interrupted.epoch == 1
    run = interrupted.runs[0].relative_to(interrupted.cwd)
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", WORKER,
                           "train", "--resume", str(run)], cwd=interrupted.cwd, env=_env(CNNLAB_TEST_DUMP=tmp_path),
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = interrupted.cwd / run
    assert {p.name for p in run.iterdir()} == RUN_FILES and len(list(run.parent.iterdir())) == 1
    assert proc.stdout.count("resuming at epoch 2/2") == 1 and proc.stdout.count("test accuracy") == 1  # rank 0
    # Every rank restored last.pt, and DDP kept them in step: identical weights, equal to the checkpoint.
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]) and torch.equal(value, last["model_state"][name]), name
    # Exact, on any CPU: the same two fp32 processes, the same kernels and seeds, with or without the stop.
    assert _losses(run) == _losses(uninterrupted)
    reference = load_checkpoint(uninterrupted / "last.pt")
    for name, value in rank0.items():
        assert torch.equal(value, reference["model_state"][name]), name
    for group, ref_group in zip(last["optimizer_state"]["state"].values(),
                                reference["optimizer_state"]["state"].values(), strict=True):
        for key, value in group.items():
            assert torch.equal(value, ref_group[key]), key
    print(f"torchrun, 2 processes, resumed epoch 2: {seconds:.1f} s")


def test_two_processes_train_like_one_to_float_rounding(tmp_path, data_dir):
    """DDP over 2 ranks of 32 against 1 process of 64, both fp32: the same steps, up to the order of sums.

    Only over a few steps: fp32 sums taken in another order (two half-batch gradients averaged, other kernel
    blockings) differ by a few ulps, and a training run amplifies such differences without bound once a ReLU
    or a max-pool choice flips (measured on an AMD EPYC: 6e-8 after 4 steps, 2e-4 after 16). After 4 steps at
    lr 0.05 the weights (|w| < 1) agree to 1e-5, ~100 fp32 ulps; a wrong split of the batch (ranks sharing
    samples) or gradients summed instead of averaged moves them by 1e-3 or more.
    """
    short = ("--num-train", "256", "--epochs", "1")
    assert main([*_args(data_dir, "--out", str(tmp_path / "single")), *short]) == 0
    dump = tmp_path / "dump"
    dump.mkdir()
    ranks = _spawn([*_args(data_dir, "--out", str(tmp_path / "ddp")), *short], CNNLAB_TEST_DUMP=dump)
    outputs = [r.communicate(timeout=120) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], outputs[0][1][-3000:]
    single = load_checkpoint(tmp_path / "single" / "last.pt")["model_state"]
    ddp, ddp_rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert ddp.keys() == single.keys()
    for name, value in ddp.items():
        assert torch.equal(value, ddp_rank1[name]), name  # DDP keeps the ranks identical, bit for bit
        torch.testing.assert_close(value, single[name], atol=1e-5, rtol=0)
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), abs=1e-5)


def test_a_rank_that_hangs_makes_the_others_time_out(tmp_path, data_dir):
    ranks = _spawn(_args(data_dir, "--out", str(tmp_path / "run")), CNNLAB_DIST_TIMEOUT=5,
                   CNNLAB_TEST_DIE_STEP=3, CNNLAB_TEST_DIE_HOW="hang")
    try:
        _, err = ranks[0].communicate(timeout=60)
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert ranks[0].returncode == 4, err[-3000:]
    assert FAILED in err and "Timed out" in err


def test_batch_size_must_split_over_the_processes(monkeypatch, capsys, data_dir):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(_args(data_dir, "--batch-size", "64")) == 2
    err = capsys.readouterr().err
    assert "--batch-size 64 is the global batch" in err and "3 processes" in err and "63 or 66" in err
    assert err.count("\n") == 1 and not dist.is_initialized()


def test_threads_and_timeout_settings(monkeypatch):
    assert distributed.threads_per_process(16, 4) == 4
    assert distributed.threads_per_process(2, 4) == 1
    assert distributed.threads_per_process(8, 3) == 2
    monkeypatch.delenv("CNNLAB_DIST_TIMEOUT", raising=False)
    assert distributed.timeout_from_env() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("CNNLAB_DIST_TIMEOUT", "20")
    assert distributed.timeout_from_env() == 20.0
    for bad in ("0", "-5", "soon", "inf"):
        monkeypatch.setenv("CNNLAB_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match="CNNLAB_DIST_TIMEOUT"):
            distributed.timeout_from_env()


def test_the_thread_count_is_given_back_when_the_group_is_left(monkeypatch):
    # init_from_env shares the cores among the processes of a machine (torch's process-wide setting); leaving
    # the group gives the caller's count back. A one-process gloo group stands in for torchrun's.
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    for name, value in dict(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=64, MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=_free_port()).items():
        monkeypatch.setenv(name, str(value))
    try:
        distributed.init_from_env("cpu", timeout_s=30)
        assert dist.is_initialized() and torch.get_num_threads() == 1  # 64 processes share this machine
        distributed.shutdown(clean=True)
        assert not dist.is_initialized() and torch.get_num_threads() == 3
    finally:
        distributed.shutdown(clean=False)
        torch.set_num_threads(before)


def test_every_distributed_helper_has_a_caller():
    # Dead helpers rot (issue 24 found a barrier helper that nothing called): each public function is called
    # somewhere, in the package or its tests (torch's own dist.barrier() does not count).
    roots = [Path(distributed.__file__).parents[1], Path(__file__).parents[1]]  # src/cnnlab, tests/
    sources = "\n".join(p.read_text() for root in roots for p in root.rglob("*.py"))
    functions = [name for name in distributed.__all__ if inspect.isfunction(getattr(distributed, name))]
    uncalled = [name for name in functions if not re.search(rf"(?<!def )(?<!dist\.)\b{name}\(", sources)]
    assert uncalled == [], uncalled


# -- torchrun runs end cleanly, every time ------------------------------------------------------------------------

def _torchrun(cwd, *argv, nproc=2, entry=("-m", "cnnlab"), launcher=("--standalone",), timeout=300, **env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
                           *entry, *argv], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _assert_clean_run(proc, run_dir):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "SIGABRT" not in proc.stderr
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone prints it
    assert {p.name for p in Path(run_dir).iterdir()} == RUN_FILES
    assert load_checkpoint(Path(run_dir) / "last.pt")["epoch"] >= 1


def _torchrun_train(tmp_path, data_dir, i, *extra):
    run = tmp_path / f"run{i}"
    proc = _torchrun(tmp_path, "train", "--model", "lenet-relu", "--epochs", "1", "--seed", "3", "--out", str(run),
                     "--no-progress", "--data-dir", str(data_dir), *extra)
    _assert_clean_run(proc, run)


@pytest.mark.parametrize("i", range(3))
def test_torchrun_run_ends_cleanly(tmp_path, data_dir, i):
    # Rank 1 finishes first (rank 0 still evaluates and writes the run folder); it used to leave the process
    # group then, and die in gloo's teardown 1 time in 4 (SIGABRT, torchrun exit 1). A subset keeps it quick.
    _torchrun_train(tmp_path, data_dir, i, "--num-train", "2048", "--num-val", "2048")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(20))
def test_torchrun_full_run_ends_cleanly_20_times(tmp_path, data_dir, i):
    # The exact command (full data, ~15 s a run on 2 cores), 20 times.
    _torchrun_train(tmp_path, data_dir, i)


def _two_shades(root):
    """A folder of 8x8 grey images, 20 training and 4 test images of each of two shades."""
    from PIL import Image

    for split, n in (("train", 20), ("test", 4)):
        for k, name in enumerate(("dark", "light")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = torch.full((8, 8), 40 + 150 * k + i, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_torchrun_ranks_of_the_automatic_recipe_train_rank_zeros_plan(tmp_path):
    # Each rank plans alone (its range test, its timing of a step): skewed here so that rank 0 plans a short run
    # and rank 1 a long one at 4x the rate. Unreconciled, rank 1 trained apart and then hung at rank 0's end.
    _two_shades(tmp_path / "f")
    run, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    proc = _torchrun(tmp_path, "train", "--images", str(tmp_path / "f"), "--out", str(run), "--no-progress",
                     entry=(WORKER,), timeout=180, CNNLAB_TEST_SKEW_PLAN=1, CNNLAB_TEST_DUMP=dump,
                     CNNLAB_DIST_TIMEOUT=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # "decoded 48 images of F", or "48 images of F read from the cache" when the other rank wrote it first
    assert proc.stdout.count("automatic recipe:") == 1 and proc.stdout.count(f"48 images of {tmp_path / 'f'}") == 1
    assert "after 51 steps" in proc.stdout  # rank 0's plan: 50 steps at least, in whole passes of 3 steps
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_ranks_of_the_automatic_recipe_restart_together_after_a_divergence(tmp_path):
    # The restart at a quarter of the lr is a new run in the same --out folder; under torchrun that folder's last.pt
    # was taken for an elastic restart's, of other settings, and both ranks stopped with exit 2
    folder, run = _two_shades(tmp_path / "f"), tmp_path / "run"
    proc = _torchrun(tmp_path, "train", "--images", str(folder), "--lr", "0.04", "--out", str(run), "--no-progress",
                     entry=(WORKER,), timeout=180, CNNLAB_TEST_DIVERGE_ONCE=1, CNNLAB_DIST_TIMEOUT=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("restarting from epoch 1's weights (the last good state) with a quarter of the learning "
                             "rate, 0.01") == 1
    assert len(re.findall(r"^test accuracy", proc.stdout, re.M)) == 1  # rank 0 alone prints it
    assert read_run_config(run).lr == 0.01 and load_checkpoint(run / "last.pt")["epoch"] >= 1


def test_two_launchers_like_two_machines_train_write_once_and_resume(tmp_path, data_dir):
    """The README's two-machine command, simulated: two torchrun launchers, one process each, c10d on localhost."""
    port = _free_port()
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=cnnlab-two")

    def both(*argv, **env):
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node=1",
                                   WORKER, *argv], cwd=tmp_path, env=_env(**env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=240) for p in procs]
        return [p.returncode for p in procs], outputs

    # No --out: rank 0 names the folder (runs/<model>-<timestamp>) and tells the other machine. Rank 1 stops in
    # epoch 2 (after 20 of 32 steps), so there is something to resume.
    codes, _ = both(*_args(data_dir), CNNLAB_TEST_DIE_STEP=20, CNNLAB_DIST_TIMEOUT=30)
    assert codes != [0, 0]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and load_checkpoint(runs[0] / "last.pt")["epoch"] == 1
    run = runs[0].relative_to(tmp_path)
    codes, outputs = both("train", "--resume", str(run))
    assert codes == [0, 0], [o[1][-2000:] for o in outputs]
    stdout = "".join(o[0] for o in outputs)
    assert stdout.count("resuming at epoch 2/2") == 1 and stdout.count("test accuracy") == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1
    assert {p.name for p in runs[0].iterdir()} == RUN_FILES
    assert load_checkpoint(runs[0] / "last.pt")["epoch"] == 2


# -- what the README says about distributed runs ---------------------------------------------------------------------

def _spawn_in(cwds, argv, **env):
    """Two ranks by hand, each in its own folder: two machines whose run folders are not shared."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, WORKER, *argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             env=_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, **env))
            for r, cwd in enumerate(cwds)]


def test_batchnorm_statistics_are_rank_0s_and_validation_drops_num_val_mod_n(tmp_path, data_dir):
    dump = tmp_path / "dump"
    dump.mkdir()
    run = tmp_path / "run"
    argv = ["train", "--model", "fastnet", "--num-train", "256", "--num-val", "257", "--batch-size", "64",
            "--epochs", "1", "--device", "cpu", "--no-progress", "--no-bf16", "--data-dir", str(data_dir),
            "--out", str(run)]
    ranks = _spawn(argv, CNNLAB_TEST_DUMP=dump)
    outputs = [r.communicate(timeout=240) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], outputs[0][1][-3000:]
    rank0, rank1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    stats = [name for name in rank0 if name.endswith(("running_mean", "running_var"))]
    assert stats
    last = load_checkpoint(run / "last.pt")["model_state"]
    for name in stats:  # each rank updated them with its own batches; the epoch's end made them rank 0's
        assert torch.equal(rank0[name], rank1[name]) and torch.equal(rank0[name], last[name]), name
    # Per-epoch validation: 257 images over 2 ranks, so 256 are used (accuracy is a multiple of 1/256); the
    # final test accuracy is `cnnlab evaluate`'s, on rank 0 alone: the whole test set.
    val_acc = _losses_and(run, "val_acc")[0]
    assert val_acc * 256 == pytest.approx(round(val_acc * 256), abs=1e-9)
    assert "on 10,000 images" in outputs[0][0]


def _losses_and(run_dir, key) -> list[float]:
    return [json.loads(line)[key] for line in open(Path(run_dir) / "metrics.jsonl")]


def test_a_run_resumes_with_another_number_of_processes(tmp_path, data_dir):
    run = tmp_path / "run"
    # One process, stopped in epoch 2 (16 steps an epoch); then two processes finish it.
    one = subprocess.run([sys.executable, WORKER, *_args(data_dir, "--out", str(run))], capture_output=True,
                         text=True, env=_env(CNNLAB_TEST_DIE_STEP=20, CNNLAB_TEST_DIE_RANK=0), timeout=240)
    assert one.returncode == 1 and load_checkpoint(run / "last.pt")["epoch"] == 1
    ranks = _spawn(["train", "--resume", str(run)])
    outputs = [r.communicate(timeout=240) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], outputs[0][1][-3000:]
    assert "resuming at epoch 2/2" in outputs[0][0] and "test accuracy" in outputs[0][0]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert _losses_and(run, "epoch") == [1, 2] and _losses_and(run, "val_acc")[1] > 0.5
    # Three processes cannot split its global batch of 64: refused before anything runs.
    ranks = _spawn(["train", "--resume", str(run)], world_size=3)
    outputs = [r.communicate(timeout=240) for r in ranks]
    assert [r.returncode for r in ranks] == [2, 2, 2]
    assert "--batch-size 64 is the global batch" in outputs[0][1]


def test_processes_that_see_different_checkpoints_refuse_to_start(tmp_path, data_dir):
    # Two "machines" whose run folders are not one shared folder: at the same path, one holds epoch 1, the
    # other the same run at epoch 2. Training must not start from two different states.
    first, second = tmp_path / "a", tmp_path / "b"
    for cwd in (first, second):
        cwd.mkdir()
    argv = _args(data_dir, "--out", "run")
    assert main([*argv[:-2], "--out", str(first / "run"), "--epochs", "2"]) == 0
    assert main([*argv[:-2], "--out", str(second / "run"), "--epochs", "2"]) == 0
    from cnnlab.training.checkpoint import save_checkpoint

    state = load_checkpoint(first / "run" / "last.pt")
    save_checkpoint({**state, "epoch": 1}, first / "run" / "last.pt")
    ranks = _spawn_in([first, second], ["train", "--resume", "run"])
    outputs = [r.communicate(timeout=240) for r in ranks]
    assert [r.returncode for r in ranks] == [2, 2], [o[1][-1500:] for o in outputs]
    assert "found different checkpoints in run (epoch by rank: [1, 2])" in outputs[0][1]


# -- elastic restarts: torchrun --max-restarts starts the workers again, and they continue last.pt -----------------

def _assert_continued_like_the_uninterrupted_run(codes, outputs, run, uninterrupted):
    assert codes == [0] * len(codes), [o[1][-3000:] for o in outputs]
    stdout = "".join(o[0] for o in outputs)
    # Rank 1 was SIGKILLed in epoch 2, after epoch 1's checkpoint; the restarted workers loaded it.
    assert stdout.count("resuming at epoch 2/2") == 1 and stdout.count("test accuracy") == 1
    assert {p.name for p in run.iterdir()} == RUN_FILES  # and no lock file left behind
    last, reference = load_checkpoint(run / "last.pt"), load_checkpoint(uninterrupted / "last.pt")
    assert last["epoch"] == 2 and _losses(run) == _losses(uninterrupted)
    for name, value in reference["model_state"].items():
        assert torch.equal(last["model_state"][name], value), name


_ELASTIC = dict(CNNLAB_TEST_DIE_STEP=20, CNNLAB_TEST_DIE_HOW="kill", CNNLAB_DIST_TIMEOUT=30)


@pytest.mark.slow  # two starts of two processes: ~15 s on 2 idle cores
@pytest.mark.parametrize("i", range(20))
def test_elastic_restart_after_a_sigkill_gives_the_uninterrupted_weights(tmp_path, data_dir, uninterrupted, i):
    run = tmp_path / "run"
    proc = _torchrun(tmp_path, *_args(data_dir, "--out", str(run)), entry=(WORKER,), timeout=240,
                     launcher=("--standalone", "--max-restarts=1"), **_ELASTIC)
    # The kill happened and torchrun saw a worker fail (rank 1's -9, or rank 0's 4 when it noticed first).
    assert "failed (exitcode: " in proc.stderr
    _assert_continued_like_the_uninterrupted_run([proc.returncode], [(proc.stdout, proc.stderr)], run, uninterrupted)


@pytest.mark.slow
def test_elastic_restart_with_two_launchers_like_two_machines(tmp_path, data_dir):
    def both(run, **env):
        port = _free_port()
        launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-id=cnnlab-el", "--max-restarts=1", "--nproc_per_node=1")
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, WORKER,
                                   *_args(data_dir, "--out", str(run))], cwd=tmp_path, env=_env(**env),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        return [p.communicate(timeout=240) for p in procs], [p.returncode for p in procs]

    # The reference is the same two launchers never stopped: one process per launcher takes all the cores
    # (threads_per_process), so its float sums differ from the hand-started pair of the other tests.
    outputs, codes = both(tmp_path / "uninterrupted")
    assert codes == [0, 0], [o[1][-2000:] for o in outputs]
    outputs, codes = both(tmp_path / "run", **_ELASTIC)
    _assert_continued_like_the_uninterrupted_run(codes, outputs, tmp_path / "run", tmp_path / "uninterrupted")


def test_a_group_that_cannot_form_fails_within_the_timeout_with_one_line(tmp_path, data_dir):
    # A restarted worker whose peer never comes back: init_process_group gives up after CNNLAB_DIST_TIMEOUT
    # (here 3 s) and the rank says so in one line, exit 4, instead of waiting forever.
    alone = subprocess.run([sys.executable, WORKER, *_args(data_dir, "--out", str(tmp_path / "run"))], text=True,
                           capture_output=True, timeout=120,
                           env=_env(RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR="127.0.0.1",
                                    MASTER_PORT=_free_port(), CNNLAB_DIST_TIMEOUT=3))
    err = alone.stderr
    assert alone.returncode == 4, err[-2000:]
    assert err.count("\n") == 1 and err.startswith(f"cnnlab: error: {FAILED} (") and "start the run again" in err
    assert not (tmp_path / "run").exists()  # nothing was written: the folder comes after the group
