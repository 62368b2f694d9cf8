"""cnnlab.visual.board outside a notebook (inside one: tests/test_notebooks.py runs real kernels)."""

import subprocess
import sys

import pytest
import torch

import cnnlab as d2l
from cnnlab.training import Display, Trainer
from cnnlab.visual.board import ProgressBoard, TrainingBoard, in_notebook, live_board


def test_outside_a_notebook_nothing_is_drawn():
    assert not in_notebook()
    assert live_board("auto", 3, 10) is None and live_board(None, 3, 10) is None
    with pytest.raises(ValueError, match="board must be"):
        live_board("yes", 3, 10)


def test_progress_board_averages_every_n_points_as_d2l():
    board = ProgressBoard(display=True)  # no kernel: records, never draws
    for x, y in [(1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0), (5, 9.0)]:
        board.draw(x, torch.tensor(y), "train_loss", every_n=2)
    assert board.data["train_loss"] == [(1.5, 2.0), (3.5, 6.0)]
    assert board.raw_points["train_loss"] == [(5, 9.0)]  # waits for its partner
    board.flush()
    assert board.redraws == 0 and board.fig is None


class FakeBoard:
    def __init__(self):
        self.points = []

    def draw(self, x, y, label, every_n=1):
        self.points.append((label, x, y))

    def flush(self):
        self.points.append(("flush",))


def test_training_board_plots_what_d2l_plots():
    fake = FakeBoard()
    tb = TrainingBoard(max_epochs=2, num_batches=4, board=fake)
    for loss in [4.0, 2.0, 1.0, 3.0]:
        tb.step(torch.tensor(loss))
    tb.epoch({"epoch": 1, "val_loss": 0.5, "val_acc": 0.75})
    tb.close()
    # Two train points per epoch, each the mean of two batches at the mean of their fractional epochs.
    assert fake.points == [("train_loss", 0.375, 3.0), ("train_loss", 0.875, 2.0), ("val_loss", 1, 0.5),
                           ("val_acc", 1, 0.75), ("flush",)]


def test_a_resumed_run_continues_the_x_axis():
    fake = FakeBoard()
    tb = TrainingBoard(max_epochs=3, num_batches=2, board=fake, start_epoch=1)
    tb.step(torch.tensor(1.0))
    assert fake.points == [("train_loss", 1.5, 1.0)]


class CountingBoard:
    def __init__(self):
        self.steps, self.rows, self.closed = 0, [], 0

    def step(self, loss):
        assert loss.ndim == 0
        self.steps += 1

    def epoch(self, row):
        self.rows.append(row["epoch"])

    def close(self):
        self.closed += 1


def test_trainer_feeds_a_board(data_dir):
    data = d2l.FashionMNIST(batch_size=64, root=data_dir, num_train=256, num_val=64)
    board = CountingBoard()
    trainer = Trainer(max_epochs=2, display=Display(progress=False, log=None, board=board))
    model = d2l.LeNet(lr=0.1)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    trainer.fit(model, data)
    assert board.steps == 2 * 4 and board.rows == [1, 2] and board.closed == 1


def test_fit_outside_a_notebook_prints_only_its_epoch_lines(data_dir):
    code = f"""
import sys
import cnnlab as d2l
data = d2l.FashionMNIST(batch_size=64, root={str(data_dir)!r}, num_train=128, num_val=64)
model = d2l.LeNet(lr=0.1)
model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
d2l.Trainer(max_epochs=1).fit(model, data)
print('IPython' in sys.modules, 'matplotlib' in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/1  train loss") and lines[1] == "False False"
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal, no warnings
