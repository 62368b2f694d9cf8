"""The model zoo (d2l §7.6, §8.2, §8.6), the Classifier base and the registry."""

import contextlib
import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab.nn.classifier as d2l  # the seed's snippets run with cnnlab standing in for d2l
from cnnlab.data.fashion_mnist import load_fashion_mnist
from cnnlab.models import (
    RESNET18_ARCH,
    VGG,
    VGG11_ARCH,
    VGG_SMALL_ARCH,
    ResNet,
    ResNet18,
    create_model,
    list_models,
    register_model,
)
from cnnlab.models.lenet import LeNet
from cnnlab.nn.classifier import Classifier, init_cnn
from seed_tables import LENET_TABLE, RESNET18_TABLE, VGG_TABLE, table

UNINITIALIZED = nn.parameter.UninitializedParameter


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary_lines(model: Classifier, shape) -> list[str]:
    """`layer_summary`'s output, one whitespace-normalized string per line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.layer_summary(shape)
    return table(out.getvalue())


def test_lenet_layer_summary_matches_seed():
    assert summary_lines(LeNet(), (1, 1, 28, 28)) == table(LENET_TABLE)


def test_vgg_layer_summary_matches_seed():
    model = VGG(arch=((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)))
    assert summary_lines(model, (1, 1, 224, 224)) == table(VGG_TABLE)


def test_resnet18_layer_summary_matches_seed():
    assert summary_lines(ResNet18(), (1, 1, 96, 96)) == table(RESNET18_TABLE)


def test_layer_summary_restores_train_mode():
    # ResNet-18's book stem cuts 28x28 to 1x1 maps: BN in train mode would refuse a batch of one there.
    model = ResNet18()
    model.train()
    assert summary_lines(model, (1, 1, 28, 28))[-2] == "Sequential output shape: torch.Size([1, 512, 1, 1])"
    assert all(m.training for m in model.modules())
    bn = model.net.b1[1]
    assert int(bn.num_batches_tracked) == 0  # the dry run left the statistics alone


def test_resnet_small_stem_keeps_the_resolution():
    model = ResNet(RESNET18_ARCH, small_stem=True, in_channels=1)
    stem = model.net.b1
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert (stem[0].kernel_size, stem[0].stride) == ((3, 3), (1, 1))
    shapes = [" ".join(line.split()[-4:]) for line in summary_lines(model, (1, 1, 28, 28))]
    assert shapes[:5] == [
        "torch.Size([1, 64, 28, 28])",
        "torch.Size([1, 64, 28, 28])",
        "torch.Size([1, 128, 14, 14])",
        "torch.Size([1, 256, 7, 7])",
        "torch.Size([1, 512, 4, 4])",
    ]


def test_resnet_stem_width_follows_the_arch():
    # The book hard-codes a 64-wide stem; a narrower first stage needs a stem of its own width.
    model = ResNet(((1, 16), (1, 32)), num_classes=3, in_channels=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# --- parameter counts -----------------------------------------------------------------------------------


def test_seed_parameter_counts():
    assert n_params(create_model("lenet")) == 61_706
    assert n_params(create_model("resnet18", image_size=96)) == 11_178_378
    # ResNet has no lazy layer once in_channels is given, so no forward pass is needed to count.
    assert n_params(ResNet18(num_classes=1000, in_channels=3)) == 11_692_520


def vgg_param_count(arch, in_channels, image_size, num_classes):
    """VGG's parameters from its definition (d2l §8.2): 3x3 biased convs, then a 4096-4096-classes head."""
    total, c_in, size = 0, in_channels, image_size
    for num_convs, c in arch:
        total += (c_in * 9 * c + c) + (num_convs - 1) * (c * 9 * c + c)
        c_in, size = c, math.ceil(size / 2)
    flat = c_in * size * size
    return total + (flat * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)


@pytest.mark.parametrize(
    "name, arch, in_channels, image_size",
    [("vgg-small", VGG_SMALL_ARCH, 1, 224), ("vgg11", VGG11_ARCH, 3, 28), ("vgg-small", VGG_SMALL_ARCH, 3, 96)],
)
def test_vgg_parameter_count(name, arch, in_channels, image_size):
    model = create_model(name, in_channels=in_channels, image_size=image_size)
    assert n_params(model) == vgg_param_count(arch, in_channels, image_size, 10)


# --- the seed's snippets, with cnnlab standing in for d2l -----------------------------------------------


class SeedLeNet(d2l.Classifier):
    """The LeNet-5 model."""

    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120), nn.Sigmoid(),
            nn.LazyLinear(84), nn.Sigmoid(),
            nn.LazyLinear(num_classes))  # fmt: skip


def test_seed_lenet_snippet():
    model = SeedLeNet()
    assert summary_lines(model, (1, 1, 28, 28)) == table(LENET_TABLE)
    model = SeedLeNet(lr=0.1)
    assert model.hparams == {"lr": 0.1, "num_classes": 10} and model.lr == 0.1
    X = torch.randn(8, 1, 28, 28)
    model.apply_init([X], d2l.init_cnn)
    assert n_params(model) == 61_706
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1


# --- Classifier -------------------------------------------------------------------------------------------


def add_to_class(Class):
    """d2l's monkeypatching decorator, the way the seed's ResNet uses it."""

    def wrapper(obj):
        setattr(Class, obj.__name__, obj)

    return wrapper


def test_save_hyperparameters_through_add_to_class():
    class Net(Classifier):
        pass

    @add_to_class(Net)
    def __init__(self, arch, lr=0.1, num_classes=10):
        super(Net, self).__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(1, 1)

    model = Net(((1, 2),), lr=0.5)
    assert model.hparams == {"arch": ((1, 2),), "lr": 0.5, "num_classes": 10}
    assert (model.arch, model.lr, model.num_classes) == (((1, 2),), 0.5, 10)


def test_save_hyperparameters_under_a_decorator_and_in_subclasses():
    def logged(init):
        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            return init(self, *args, **kwargs)

        return wrapper

    class Base(Classifier):
        @logged
        def __init__(self, width, lr=0.1, **extra):
            super().__init__()
            scratch = 3  # locals that are not arguments stay out  # noqa: F841
            self.save_hyperparameters(ignore=["width"])

    class Child(Base):
        def __init__(self, lr=0.2):
            super().__init__(7, lr, dropout=0.5)

    model = Child()
    assert model.hparams == {"lr": 0.2, "dropout": 0.5}
    assert model.lr == 0.2 and model.dropout == 0.5 and not hasattr(model, "width")


def test_save_hyperparameters_needs_module_init_first():
    class Broken(Classifier):
        def __init__(self, lr=0.1):
            self.save_hyperparameters()

    with pytest.raises(RuntimeError, match=r"super\(\).__init__\(\)"):
        Broken()


def test_resnet_hparams_are_the_constructor_arguments():
    assert ResNet18(lr=0.3).hparams == {
        "arch": RESNET18_ARCH, "lr": 0.3, "num_classes": 10, "small_stem": False, "in_channels": None,
    }  # fmt: skip


def test_loss_accuracy_and_steps():
    torch.manual_seed(0)
    model = create_model("lenet")
    X, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    Y_hat = model(X)
    torch.testing.assert_close(model.loss(Y_hat, y), F.cross_entropy(Y_hat, y))
    torch.testing.assert_close(model.loss(Y_hat, y, averaged=False), F.cross_entropy(Y_hat, y, reduction="none"))
    model.label_smoothing = 0.1
    torch.testing.assert_close(model.loss(Y_hat, y), F.cross_entropy(Y_hat, y, label_smoothing=0.1))
    model.label_smoothing = 0.0

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    torch.testing.assert_close(model.accuracy(logits, labels), torch.tensor(2 / 3))
    torch.testing.assert_close(model.accuracy(logits, labels, averaged=False), torch.tensor([1.0, 0.0, 1.0]))

    torch.testing.assert_close(model.training_step((X, y)), model.loss(Y_hat, y))
    loss_sum, correct, count = model.validation_step((X, y))
    assert loss_sum.ndim == correct.ndim == count.ndim == 0
    torch.testing.assert_close(loss_sum, F.cross_entropy(Y_hat, y, reduction="sum"))
    assert int(correct) == int((Y_hat.argmax(1) == y).sum()) and int(count) == 6


def test_apply_init_takes_a_tensor_or_a_list():
    for inputs in (torch.randn(2, 1, 28, 28), [torch.randn(2, 1, 28, 28)]):
        model = LeNet()
        model.apply_init(inputs, init_cnn)
        assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
        w = model.net[0].weight
        bound = math.sqrt(6 / (1 * 25 + 6 * 25))  # xavier-uniform for a 1->6 5x5 conv
        assert w.abs().max() <= bound and w.abs().max() > bound / 2


def test_configure_optimizers_without_lr_says_what_to_do():
    class NoLr(Classifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="save_hyperparameters"):
        NoLr().configure_optimizers()


# --- the registry -----------------------------------------------------------------------------------------

REQUIRED = {"lenet", "lenet-relu", "vgg11", "vgg-small", "resnet18", "resnet18-small", "resnet34", "alexnet",
            "alexnet-small", "nin", "nin-small", "googlenet", "lenet-bn", "lenet-bn-scratch", "densenet",
            "densenet-small", "regnetx32"}


def test_registry_lists_the_zoo():
    assert REQUIRED <= set(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet18-small", "resnet34"]
    assert list_models() == sorted(list_models())


def test_duplicate_name_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register_model("lenet")
        def another_lenet(**kwargs):
            return LeNet(**kwargs)

    assert create_model("lenet").__class__ is LeNet


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'lenet6'") as info:
        create_model("lenet6")
    assert all(name in str(info.value) for name in REQUIRED)


def test_every_way_of_naming_an_unknown_model_gives_the_registrys_one_message(capsys):
    from cnnlab.cli.main import main
    from cnnlab.errors import ConfigError
    from cnnlab.models import check_model_name, model_recipe
    from cnnlab.recipes import TrainConfig, resolve_config

    with pytest.raises(ConfigError) as info:
        check_model_name("lenet6")
    message = str(info.value)
    for call in (lambda: create_model("lenet6"), lambda: model_recipe("lenet6"),
                 lambda: resolve_config(TrainConfig(model="lenet6"))):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == message
    for argv in (["summary", "lenet6"], ["train", "--model", "lenet6"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"cnnlab: error: {message}\n"


def test_unknown_argument_refused():
    with pytest.raises(ValueError, match="takes no argument"):
        create_model("lenet", width=3)


def test_none_kwargs_are_dropped():
    model = create_model("lenet", num_classes=None, lr=None, in_channels=None, image_size=None)
    assert model.model_kwargs == {"in_channels": 1, "image_size": 28, "num_classes": 10, "lr": 0.1}
    assert model.lr == 0.1


@pytest.mark.parametrize("bad", [0, -28, (28,), (28, "28"), 2.5, True])
def test_bad_image_size_refused(bad):
    with pytest.raises(ValueError, match="image_size"):
        create_model("lenet", image_size=bad)


def test_too_small_image_explained():
    with pytest.raises(ValueError, match="too small|larger image_size"):
        create_model("lenet", image_size=8)


def test_rebuild_from_recorded_kwargs():
    model = create_model("resnet18-small", num_classes=7, in_channels=3, image_size=(20, 24), lr=0.05)
    assert model.model_name == "resnet18-small"
    assert model.model_kwargs == {"in_channels": 3, "image_size": (20, 24), "num_classes": 7, "lr": 0.05}
    twin = create_model(model.model_name, **model.model_kwargs)
    twin.load_state_dict(model.state_dict())
    X = torch.randn(2, 3, 20, 24)
    model.eval()
    twin.eval()
    torch.testing.assert_close(twin(X), model(X))


# --- every registered model -------------------------------------------------------------------------------


# The book's AlexNet and NiN (11x11 stride-4 first conv, three 3x3/2 pools) and DenseNet (stem /4, three
# transitions /2) cannot take 28x28 images; these are the smallest sides they take (see test_zoo.py).
MIN_SIZE = {"alexnet": 65, "nin": 67, "densenet": 29}
# AlexNet-small keeps the book's flatten-then-4096 head, so at 224 its first Linear alone holds 186,624 x
# 4,096 weights (3 GB): a 224 input is what the book's stem is for. The small stems at large sizes cost
# seconds each (147M weights at 96; 27 GFLOP per image at 224) and test nothing 28x28 does not.
TOO_BIG = {("alexnet-small", 224)}
SLOW_SIZES = {("alexnet-small", 96), ("alexnet-small", (40, 56)), ("nin-small", 224)}


def _check_too_small(name, size, **kwargs) -> bool:
    """True (after checking the refusal) when `size` is below the model's smallest input."""
    side = min(size) if isinstance(size, tuple) else size
    if side >= MIN_SIZE.get(name, 0):
        return False
    with pytest.raises(ValueError, match="larger image_size"):
        create_model(name, image_size=size, **kwargs)
    return True


@pytest.mark.parametrize("name", list_models())
def test_model_builds_materialized(name):
    size = 28
    if _check_too_small(name, size):
        size = MIN_SIZE[name]
    model = create_model(name, image_size=size)
    assert model.model_name == name
    assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
    assert n_params(model) > 0
    assert all(m.training for m in model.modules())  # the dry forward ran in eval mode and restored it
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, in_channels, size",
    [
        pytest.param(name, c, size, marks=[pytest.mark.slow] if (name, size) in SLOW_SIZES else [])
        for name in list_models()
        for c, size in [(3, 96), (1, 224), (3, (40, 56))]
    ],
)
def test_model_any_channels_and_resolution(name, in_channels, size):
    if (name, size) in TOO_BIG:
        pytest.skip(f"{name} at {size}x{size} needs gigabytes of weights")
    if _check_too_small(name, size, num_classes=5, in_channels=in_channels):
        return
    model = create_model(name, num_classes=5, in_channels=in_channels, image_size=size)
    assert not any(isinstance(p, UNINITIALIZED) for p in model.parameters())
    assert model.model_kwargs["image_size"] == size and model.model_kwargs["num_classes"] == 5
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = model.eval()(torch.randn(2, in_channels, h, w))
    assert out.shape == (2, 5) and torch.isfinite(out).all()  # one logit per class asked for, not 10


# Per model: (image size, Adam learning rate). The plain VGGs need the most steps: with the book's
# xavier init their activations shrink layer by layer, so Adam first has to climb off a loss plateau.
OVERFIT = {
    "lenet": (28, 1e-2),
    "lenet-relu": (28, 1e-2),
    "vgg-small": (28, 5e-4),
    "vgg11": (16, 5e-4),
    "resnet18": (32, 1e-3),
    "resnet18-small": (16, 1e-3),
    "resnet34": (32, 1e-3),
    # The chapter-8 networks at small sides they take (MIN_SIZE above; the -small stems take 16).
    "alexnet": (67, 1e-4),
    "alexnet-small": (16, 1e-4),
    "googlenet": (28, 1e-3),
    "densenet": (32, 1e-3),
    "densenet-small": (16, 1e-3),
    "regnetx32": (28, 1e-3),
    "lenet-bn": (28, 1e-2),
    "lenet-bn-scratch": (28, 1e-2),
}
# vgg11: about a minute on two cores, and vgg-small covers the same code. The book's AlexNet and its
# small-stem variant cost 0.1-0.2 GFLOP per 16-67 pixel image, and GoogLeNet (no BN) needs ~150
# Adam steps to leave its loss plateau: tens of seconds each.
SLOW_OVERFIT = {"vgg11", "alexnet", "alexnet-small", "googlenet"}
# Likewise the larger twins of a class whose smaller model stays in the default run (the same code, more
# weights): densenet (densenet-small), resnet18 and resnet34 (resnet18-small), fastnet-flip (fastnet; the flip
# only averages at evaluation) and fastnet-wide (fastnet). 50-60 s on two cores together.
SAME_CODE_OVERFIT = {"densenet": "densenet-small", "resnet18": "resnet18-small", "resnet34": "resnet18-small",
                     "fastnet-flip": "fastnet", "fastnet-wide": "fastnet"}
SLOW_OVERFIT |= set(SAME_CODE_OVERFIT)
# NiN's logits come out of a ReLU (its last block, then the global pool): its own tests are below.
RELU_LOGITS = {"nin", "nin-small"}


@pytest.fixture(scope="module")
def fashion64(data_dir):
    images, labels = load_fashion_mnist(data_dir, train=False, verify=False)
    X = (images[:64].float() / 255 - 0.2860) / 0.3530  # the training set's mean and std
    return X[:, None], labels[:64]


def _model_without_dropout(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, image_size=size)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # dropout fights memorization; capacity is what is tested here
    return model


def _adam_full_batch(model, X, y, lr: float, steps: int, stop_below: float | None = None) -> list[float]:
    """Adam on the one batch (X, y); the loss of every step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.training_step((X, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if stop_below is not None and losses[-1] < stop_below:
            break
    return losses


def test_each_slow_overfit_twin_has_a_default_model_of_its_class():
    import inspect

    from cnnlab.models.registry import _MODELS

    for slow, twin in SAME_CODE_OVERFIT.items():  # the builders' declared classes, without building them
        kinds = {inspect.signature(_MODELS[name]).return_annotation for name in (slow, twin)}
        assert twin not in SLOW_OVERFIT and len(kinds) == 1, (slow, kinds)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] * (n in SLOW_OVERFIT))
        for n in list_models()
        if n not in RELU_LOGITS
    ],
)
def test_model_overfits_64_images(name, fashion64):
    """Memorizing 64 real images shows that gradients reach every layer and the model has the capacity."""
    size, lr = OVERFIT.get(name, (28, 1e-3))
    X, y = fashion64
    if size != 28:
        X = F.interpolate(X, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    losses = _adam_full_batch(_model_without_dropout(name, size), X, y, lr, steps=300, stop_below=0.05)
    assert losses[-1] < 0.05, f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps"


def _last_nin_conv(model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]  # the last block's second 1x1 conv: one channel per class, then ReLU and the global pool


def test_a_dead_nin_class_channel_gets_no_gradient_so_it_cannot_come_back():
    """Why NiN cannot memorize 64 images (and is left out of the overfitting test above).

    NiN's logits are ReLU outputs averaged over the image: never negative, and zero for a class whose last
    conv channel is negative at every pixel. Such a class gets no gradient, even from images of that class,
    so it never comes back. Memorizing pushes each class's channel down on the ~90% of images of other
    classes, and channels die on the way: on an H200, 14 settings of Adam and SGD (lr 1e-5 to 0.1, 2,000
    full-batch steps each, nin at 67 px and nin-small at 16 and 28) memorized none of them; the best reached
    loss 0.25 (benchmarks/results/nin_overfit_probe_h200.log). On the full data it trains (the README's GPU
    table: 0.79 after the book's 10 epochs).
    """
    torch.manual_seed(0)
    model = create_model("nin-small", image_size=16)
    last = _last_nin_conv(model)
    assert last.out_channels == 10
    with torch.no_grad():
        last.bias[3] = -1e3  # channel 3 negative everywhere: class 3 is dead
    X, y = torch.randn(8, 1, 16, 16), torch.full((8,), 3)  # and every image is of class 3
    logits = model(X)
    assert (logits[:, 3] == 0).all() and (logits >= 0).all()
    model.loss(logits, y).backward()
    assert last.weight.grad[3].abs().sum() == 0 and last.bias.grad[3] == 0
    assert last.weight.grad.abs().sum() > 0  # the live classes still learn: only class 3 is stuck


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("nin-small", 16)])  # about a minute on 2 cores; the 67 px nin ~5x that
def test_nin_learns_64_images_far_below_chance(name, size, fashion64):
    """NiN learns (every layer gets gradient), though dying class channels stop it short of memorizing."""
    X, y = fashion64
    X = F.interpolate(X, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    model = _model_without_dropout(name, size)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = _adam_full_batch(model, X, y, lr=1e-4, steps=400)
    assert losses[0] > 2.2  # chance is ln 10 = 2.30
    # Where it ends depends on which class channels die on the way, which differs between machines: measured
    # 1.55 (AMD EPYC, 2 cores) and 0.94 (H200). A network whose gradient does not get through stays at 2.30.
    assert min(losses) < 2.0, f"{name}: loss {losses[0]:.3f} -> best {min(losses):.3f} in 400 steps"
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()), "a layer did not move"
