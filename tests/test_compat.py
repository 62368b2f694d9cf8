"""The book's conventions (cnnlab.compat): d2l's aliases, devices, base classes, and apply_init as the book runs it."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import cnnlab
import cnnlab as d2l
from cnnlab.nn.classifier import Classifier

# The alias block that ends d2l/torch.py in d2l-en 23d7a5ae ("Alias defined in config.ini"), name for name.
D2L_ALIASES = """nn_Module ones_like ones zeros_like zeros tensor arange meshgrid sin sinh cos cosh tanh linspace exp
log normal rand randn matmul int32 int64 float32 concat stack abs eye sigmoid batch_matmul numpy size reshape to
reduce_sum argmax astype transpose reduce_mean expand_dims swapaxes repeat""".split()


def test_every_d2l_alias_is_a_top_level_name():
    assert sorted(d2l.compat.ALIASES) == sorted(D2L_ALIASES)
    for name in D2L_ALIASES:
        assert hasattr(cnnlab, name), name


def test_aliases_do_what_d2l_does():
    X = d2l.arange(6, dtype=d2l.float32)
    assert torch.equal(d2l.reshape(X, (2, 3)), X.reshape(2, 3))
    assert float(d2l.reduce_sum(X)) == 15.0 and float(d2l.reduce_mean(X)) == 2.5
    M = d2l.reshape(X, (2, 3))
    assert d2l.transpose(M).shape == (3, 2) and d2l.swapaxes(M, 0, 1).shape == (3, 2)
    assert torch.equal(d2l.concat((M, M), 1), torch.cat((M, M), 1))
    assert d2l.stack([M, M], 0).shape == (2, 2, 3) and d2l.expand_dims(X, 0).shape == (1, 6)
    assert d2l.size(M) == 6 and int(d2l.argmax(X)) == 5
    assert d2l.astype(X, torch.int64).dtype == d2l.int64
    assert d2l.numpy(M).shape == (2, 3) and d2l.to(X, torch.float64).dtype == torch.float64
    assert torch.equal(d2l.abs(d2l.tensor([-1.0, 2.0])), d2l.tensor([1.0, 2.0]))
    assert d2l.normal(0, 1, (3, 3, 3)).shape == (3, 3, 3) and d2l.randn(2, 5).shape == (2, 5)
    assert torch.equal(d2l.matmul(d2l.eye(3), d2l.ones((3, 2))), d2l.ones((3, 2)))
    assert d2l.repeat(d2l.zeros(2), 3).shape == (6,) and d2l.nn_Module is nn.Module


def test_star_import_keeps_pythons_abs():
    namespace = {}
    exec("from cnnlab import *\nresult = abs(-3)", namespace)
    assert namespace["result"] == 3
    assert "abs" not in cnnlab.__all__ and set(D2L_ALIASES).isdisjoint(cnnlab.__all__)


def test_devices():
    assert d2l.cpu() == torch.device("cpu") and d2l.gpu(1) == torch.device("cuda:1")
    assert d2l.num_gpus() == torch.cuda.device_count()
    assert d2l.try_gpu() == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    assert d2l.try_gpu(10_000) == torch.device("cpu")
    assert d2l.try_all_gpus() == ([torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
                                  or [torch.device("cpu")])


def test_hyperparameters_and_datamodule_the_d2l_way():
    class Data(d2l.DataModule):
        def __init__(self, n=10, batch_size=4):
            super().__init__()
            self.save_hyperparameters()
            self.X, self.y = torch.arange(n * 2.0).reshape(n, 2), torch.arange(n)

        def get_dataloader(self, train):
            i = slice(0, 8) if train else slice(8, None)
            return self.get_tensorloader((self.X, self.y), train, i)

    data = Data(batch_size=4)
    assert data.hparams == {"n": 10, "batch_size": 4} and data.root == "../data"
    assert [len(y) for _, y in data.train_dataloader()] == [4, 4]
    assert [y.tolist() for _, y in data.val_dataloader()] == [[8, 9]]
    with pytest.raises(NotImplementedError, match="get_dataloader"):
        d2l.DataModule().get_dataloader(True)


def test_module_is_the_classifier_base_a_trainer_fits():
    class Regression(d2l.Module):
        def __init__(self, lr):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Linear(2, 1)

        def loss(self, y_hat, y):
            return ((y_hat.squeeze(-1) - y) ** 2).mean()

    model = Regression(lr=0.5)
    assert model.lr == 0.5 and isinstance(model.configure_optimizers(), torch.optim.SGD)
    assert issubclass(d2l.Module, nn.Module)


def test_timer_measures():
    readings = iter([10.0, 11.5, 20.0, 20.25])  # a fake clock: start, stop, start, stop
    timer = d2l.Timer(clock=lambda: next(readings))
    assert timer.stop() == 1.5
    timer.start()
    assert timer.stop() == 0.25
    assert timer.times == [1.5, 0.25] and timer.sum() == 1.75 and timer.avg() == 0.875
    assert timer.cumsum() == [1.5, 1.75]
    assert d2l.Timer().stop() >= 0  # the real clock by default


def test_add_to_class_overrides_layer_summary_as_the_lenet_section_does(capsys):
    saved = Classifier.layer_summary
    try:
        @d2l.add_to_class(d2l.Classifier)
        def layer_summary(self, X_shape):
            X = d2l.randn(*X_shape)
            for layer in self.net:
                X = layer(X)
                print(layer.__class__.__name__, "output shape:\t", X.shape)

        d2l.LeNet().layer_summary((1, 1, 28, 28))
        assert capsys.readouterr().out.splitlines()[0] == "Conv2d output shape:\t torch.Size([1, 6, 28, 28])"
    finally:
        Classifier.layer_summary = saved


class _Recorder(nn.Module):
    def forward(self, X):
        self.seen = (self.training, torch.is_grad_enabled())
        return X


class _BNNet(Classifier):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.LazyConv2d(4, kernel_size=3), _Recorder(), nn.LazyBatchNorm2d(), nn.Flatten(),
                                 nn.LazyLinear(10))


def test_apply_init_runs_the_dry_forward_as_the_book_does():
    # d2l's apply_init calls forward in the model's own (train) mode with gradients on, so BatchNorm's running
    # statistics take one step towards the first batch, and §8.5's batch_norm takes its training branch.
    torch.manual_seed(0)
    model, X = _BNNet(), torch.randn(8, 1, 10, 10)
    model.apply_init([X])
    assert model.net[1].seen == (True, True) and model.training
    bn = model.net[2]
    assert int(bn.num_batches_tracked) == 1
    Y = model.net[0](X).detach()
    torch.testing.assert_close(bn.running_mean, 0.1 * Y.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * Y.var(dim=(0, 2, 3), unbiased=True))


def test_apply_init_in_eval_mode_keeps_the_statistics():
    model = _BNNet()
    model.apply_init([torch.randn(8, 1, 10, 10)])  # materialize
    model.eval()
    before = model.net[2].running_mean.clone()
    model.apply_init([torch.randn(8, 1, 10, 10)], d2l.init_cnn)
    assert torch.equal(model.net[2].running_mean, before) and int(model.net[2].num_batches_tracked) == 1


def test_importing_cnnlab_loads_no_ipython_or_matplotlib():
    code = "import sys, cnnlab; print('IPython' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
