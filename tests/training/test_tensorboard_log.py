"""TensorBoardLogger on real short runs, read back with TensorBoard's own reader: scalars equal metrics.csv, the
graph and figures are there, a resumed run has one event per step, and only the main process writes."""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnlab import Callback, Display, FashionMNIST, Trainer, create_model
from cnnlab.errors import MissingExtra
from cnnlab.training.tensorboard import TensorBoardLogger, kernel_grid

QUIET = Display(progress=False, log=None)
SCALARS = {"train/loss": "train_loss", "val/loss": "val_loss", "val/accuracy": "val_acc", "lr": "lr",
           "images_per_s": "images_per_s", "time/epoch_s": "seconds", "time/elapsed_s": "elapsed"}


def _data(data_dir):
    return FashionMNIST(batch_size=64, root=data_dir, num_train=1000, num_val=300, seed=0)


def _fit(trainer, model, data, logger, resume_from=None, after_epoch=None):
    """Train with ``logger`` among the trainer's callbacks (after its run folder's), then ``after_epoch``."""

    class AfterEpoch(Callback):
        def on_train_epoch_end(self, tr, model, row):
            after_epoch(tr, row)

    trainer.callbacks += [logger] + ([AfterEpoch()] if after_epoch is not None else [])
    trainer.fit(model, data, resume_from=resume_from)


def _events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "graph": 0})  # 0: keep all
    acc.Reload()
    return acc


def _csv(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def _png_size(event):
    with Image.open(io.BytesIO(event.encoded_image_string)) as img:
        return img.size


def test_scalars_graph_and_figures(tmp_path, data_dir):
    run_dir, log_dir = tmp_path / "run", tmp_path / "run" / "tb"
    model = create_model("lenet")
    logger = TensorBoardLogger(log_dir)
    _fit(Trainer(max_epochs=2, run_dir=run_dir, display=QUIET, seed=0), model, _data(data_dir), logger)
    rows = _csv(run_dir)
    events = _events(log_dir)
    tags = events.Tags()
    assert set(tags["scalars"]) == set(SCALARS)
    for tag, column in SCALARS.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        # TensorBoard keeps float32: each value is the CSV's, rounded once to float32.
        assert got == [(int(r["epoch"]), float(np.float32(r[column]))) for r in rows], tag
    lr = float(np.float32(0.1))  # LeNet's SGD rate, from each epoch's row
    assert [(e.step, e.value) for e in events.Scalars("lr")] == [(1, lr), (2, lr)]
    assert tags["graph"] and len(events.Graph().node) > 5
    assert set(tags["images"]) == {"val/confusion_matrix", "kernels/net.0"}
    (confusion,) = events.Images("val/confusion_matrix")
    (kernels,) = events.Images("kernels/net.0")
    assert confusion.step == kernels.step == 2
    width, height = _png_size(confusion)
    assert width > 400 and height > 400
    assert _png_size(kernels) == (6 * (5 * 8 + 1) + 1, 5 * 8 + 2)  # LeNet's 6 kernels of 5x5, 8x enlarged
    assert logger.writer is None  # closed at fit end


def test_a_fit_that_raises_closes_the_writer_with_its_epochs_logged(tmp_path, data_dir):
    def fail_after_epoch_1(trainer, row):
        raise KeyboardInterrupt  # Ctrl-C, the commonest way a fit ends early

    logger = TensorBoardLogger(tmp_path / "tb", log_graph=False)
    data = FashionMNIST(batch_size=64, root=data_dir, num_train=128, num_val=64)
    with pytest.raises(KeyboardInterrupt):
        _fit(Trainer(max_epochs=2, display=QUIET), create_model("lenet"), data, logger,
             after_epoch=fail_after_epoch_1)
    assert logger.writer is None
    events = _events(tmp_path / "tb")
    assert [e.step for e in events.Scalars("val/loss")] == [1] and not events.Tags()["images"]


def test_resume_logs_each_step_once(tmp_path, data_dir):
    # A first run logs epochs 1-3 but "crashes" with only epoch 2's checkpoint kept, as a kill between the
    # event write and the checkpoint write would leave it; the resumed run trains epoch 3 again.
    run_dir, log_dir = tmp_path / "run", tmp_path / "tb"
    data = _data(data_dir)

    def keep_epoch_2(trainer, row):
        if row["epoch"] == 2:
            shutil.copy(run_dir / "last.pt", tmp_path / "epoch2.pt")

    first = TensorBoardLogger(log_dir)
    trainer = Trainer(max_epochs=3, run_dir=run_dir, display=QUIET, seed=0)
    _fit(trainer, create_model("lenet"), data, first, after_epoch=keep_epoch_2)
    assert [e.step for e in _events(log_dir).Scalars("val/loss")] == [1, 2, 3]

    resumed = TensorBoardLogger(log_dir)
    _fit(Trainer(max_epochs=3, run_dir=run_dir, display=QUIET, seed=0), create_model("lenet"), data,
         resumed, resume_from=tmp_path / "epoch2.pt")
    events = _events(log_dir)
    rows = _csv(run_dir)
    for tag, column in SCALARS.items():
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [1, 2, 3], tag
        if not tag.startswith("time/"):  # wall time differs between the runs; the metrics are exactly reproduced
            assert [e.value for e in scalars] == [float(np.float32(r[column])) for r in rows], tag
    assert [e.step for e in events.Images("val/confusion_matrix")] == [3]  # the purged run's figures are dropped
    # A finished run resumed again trains nothing and adds nothing.
    again = TensorBoardLogger(log_dir)
    _fit(Trainer(max_epochs=3, run_dir=run_dir, display=QUIET, seed=0), create_model("lenet"), data,
         again, resume_from=run_dir / "last.pt")
    events = _events(log_dir)
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2, 3]
    assert [e.step for e in events.Images("val/confusion_matrix")] == [3]


def test_logging_does_not_change_training(tmp_path, data_dir):
    # The graph is traced in eval mode under no_grad: BatchNorm statistics and the RNG are untouched, so a run
    # with TensorBoard trains exactly as one without.
    def run(logger):
        torch.manual_seed(0)
        model = create_model("lenet-bn")
        trainer = Trainer(max_epochs=1, display=QUIET, seed=0)
        if logger is None:
            trainer.fit(model, _data(data_dir))
        else:
            _fit(trainer, model, _data(data_dir), logger)
        return [(r["train_loss"], r["val_loss"], r["val_acc"]) for r in trainer.history], model.state_dict()

    (plain, plain_state), (logged, logged_state) = run(None), run(TensorBoardLogger(tmp_path / "tb"))
    assert plain == logged
    assert all(torch.equal(plain_state[k], logged_state[k]) for k in plain_state)
    assert _events(tmp_path / "tb").Tags()["graph"]


# Each of 2 gloo ranks trains on its shard and validates on its half of the 300 validation images; the logger's
# final evaluation must count all 300 on every rank, and only rank 0 may write.
_DDP_WORKER = """
import json, os, sys
import torch
from cnnlab import Display, FashionMNIST, Trainer, create_model
from cnnlab.training import distributed
from cnnlab.training.tensorboard import TensorBoardLogger, _evaluate_everywhere
distributed.init_from_env("cpu")
rank, out = int(os.environ["RANK"]), sys.argv[1]
torch.manual_seed(0)
data = FashionMNIST(batch_size=64, root=sys.argv[2], num_train=256, num_val=300, seed=0)
model = create_model("lenet")
logger = TensorBoardLogger(os.path.join(out, "tb"))
QUIET = Display(progress=False, log=None)
trainer = Trainer(max_epochs=1, device="cpu", display=QUIET, seed=0, callbacks=[logger])
trainer.fit(model, data)  # the logger's on_fit_end draws its figures from a collective evaluation
result = _evaluate_everywhere(trainer, model, None)
shard = sum(len(y) for _, y in trainer.val_loader)
json.dump({"count": result.count, "sum": int(result.confusion.sum()), "shard": shard},
          open(os.path.join(out, f"rank{rank}.json"), "w"))
distributed.shutdown(clean=True)
"""


def test_two_ranks_count_the_whole_validation_set_and_only_rank_0_writes(tmp_path, data_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(tmp_path), str(data_dir)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "OMP_NUM_THREADS": "1", "RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)})
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert [r["shard"] for r in ranks] == [150, 150]  # each rank validates half...
    assert [(r["count"], r["sum"]) for r in ranks] == [(300, 300), (300, 300)]  # ...and the matrix counts all
    files = [p.name for p in (tmp_path / "tb").iterdir()]
    assert len(files) == 1 and files[0].startswith("events.out.tfevents")  # one writer: rank 0's
    events = _events(tmp_path / "tb")
    assert [e.step for e in events.Scalars("val/loss")] == [1]
    assert [e.step for e in events.Images("val/confusion_matrix")] == [1]


def _fake_trainer(**kw):
    return SimpleNamespace(epoch=0, data=SimpleNamespace(image_shape=(1, 28, 28)), **kw)


def test_rows_with_lr_and_elapsed_and_other_ranks(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb", log_graph=False)
    trainer = _fake_trainer(is_main=True)
    logger.on_fit_start(trainer, create_model("lenet-bn"))
    row = dict(epoch=1, train_loss=1.0, val_loss=2.0, val_acc=0.5, images_per_s=100.0, seconds=3.0, elapsed=3.0,
               lr=0.0)
    logger.on_train_epoch_end(trainer, None, row)
    logger.on_train_epoch_end(trainer, None, {**row, "epoch": 2, "lr": 0.25, "elapsed": 7.5})
    logger.close()
    events = _events(tmp_path / "tb")
    assert [e.value for e in events.Scalars("lr")] == [0.0, 0.25]
    assert [e.value for e in events.Scalars("time/elapsed_s")] == [3.0, 7.5]
    assert not events.Tags()["graph"]
    # A process other than the main one writes nothing at all.
    quiet = TensorBoardLogger(tmp_path / "other")
    trainer = _fake_trainer(is_main=False)
    quiet.on_fit_start(trainer, create_model("lenet-bn"))
    quiet.on_train_epoch_end(trainer, None, row)
    trainer.epoch = 1
    quiet.on_fit_end(trainer, None)
    assert not (tmp_path / "other").exists()


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here\nsecond line")
        return self.conv(x)


def test_a_graph_that_cannot_be_traced_is_a_warning(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    model = _Untraceable()
    with pytest.warns(RuntimeWarning, match=r"^TensorBoard: the model graph was left out \(RuntimeError: no tracing "
                                            r"here\)$"):
        logger.on_fit_start(_fake_trainer(is_main=True), model)
    assert logger.writer is not None and model.training
    logger.close()


def test_kernel_grid_colours_and_layout():
    weight = torch.zeros(3, 2, 2, 2)
    weight[0, 0, 0, 0], weight[2, 1, 1, 1] = 2.0, -1.0  # one red, one half-blue pixel; the rest white
    grid = kernel_grid(weight, tile_pixels=2)  # 3 outputs x 2 inputs = 6 tiles, 1x enlarged
    assert grid.shape == (3, 3 * 3 + 1, 2 * 3 + 1)
    assert grid[:, 1, 1].tolist() == [1.0, 0.0, 0.0]  # (out 0, in 0) top-left: +max is red
    assert grid[:, 2 * 3 + 2, 3 + 2].tolist() == [0.5, 0.5, 1.0]  # (out 2, in 1) bottom-right: -max/2
    assert grid[:, 0, :].eq(0.5).all() and grid[:, 4, 4].tolist() == [1.0, 1.0, 1.0]  # grey lines, white zeros


def test_missing_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtra, match=r"^TensorBoard logging needs the 'tensorboard' extra \(tensorboard is "
                                           r"not installed\): pip install 'cnnlab\[tensorboard\]'$"):
        TensorBoardLogger(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
