"""Batch normalization from scratch (d2l §8.5.3) against torch's as the oracle, and the batch-norm LeNets.

Everything is compared in float64 with autocast off, so the tolerances do not depend on the CPU's kernels.
"""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from book_tables import BN_LENET_TABLE
from cnnlab.models import create_model
from cnnlab.models.lenet import BNLeNet, BNLeNetScratch
from cnnlab.nn.batchnorm import BatchNorm, batch_norm
from seed_tables import table

f64 = dict(dtype=torch.float64)
close = dict(rtol=1e-9, atol=1e-9)


@st.composite
def bn_case(draw):
    """A 2-D or 4-D input with random scale, shift and running statistics (variances > 0)."""
    ndim = draw(st.sampled_from([2, 4]))
    c = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    shape = (n, c) if ndim == 2 else (n, c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if n * (1 if ndim == 2 else shape[2] * shape[3]) < 2:
        shape = (n + 1, *shape[1:])  # training needs two values per channel
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(shape, generator=g, **f64) * draw(st.sampled_from([1e-2, 1.0, 30.0])) + 3 * torch.randn(
        (), generator=g, **f64)  # fmt: skip
    params = [torch.randn(c, generator=g, **f64) for _ in range(3)]
    running_var = torch.rand(c, generator=g, **f64) + 0.1
    momentum = draw(st.sampled_from([0.1, 0.5, 1.0]))
    return X, params, running_var, momentum


def as_book(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> the book's (1, C) or (1, C, 1, 1)."""
    return t.reshape(1, -1) if ndim == 2 else t.reshape(1, -1, 1, 1)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=bn_case(), training=st.booleans())
def test_batch_norm_matches_torch(case, training):
    """Values, input and parameter gradients and the updated running statistics, as F.batch_norm."""
    X, (gamma, beta, running_mean), running_var, momentum = case
    ndim = X.ndim
    # torch's side
    X1, g1, b1 = (t.clone().requires_grad_() for t in (X, gamma, beta))
    rm1, rv1 = running_mean.clone(), running_var.clone()
    Y1 = F.batch_norm(X1, rm1, rv1, g1, b1, training=training, momentum=momentum, eps=1e-5)
    # ours, with the book's (1, C[, 1, 1]) shapes
    X2 = X.clone().requires_grad_()
    g2, b2 = (as_book(t, ndim).clone().requires_grad_() for t in (gamma, beta))
    Y2, rm2, rv2 = batch_norm(X2, g2, b2, as_book(running_mean, ndim), as_book(running_var, ndim), eps=1e-5,
                              momentum=momentum, training=training)
    torch.testing.assert_close(Y2, Y1, **close)
    torch.testing.assert_close(rm2.flatten(), rm1, **close)
    torch.testing.assert_close(rv2.flatten(), rv1, **close)  # the unbiased variance, as torch
    assert not rm2.requires_grad and not rv2.requires_grad
    upstream = torch.randn_like(X)
    (Y1 * upstream).sum().backward()
    (Y2 * upstream).sum().backward()
    torch.testing.assert_close(X2.grad, X1.grad, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(g2.grad.flatten(), g1.grad, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(b2.grad.flatten(), b1.grad, rtol=1e-7, atol=1e-7)


def test_batch_norm_book_semantics():
    """unbiased=False is the book's update: moving = (1 - momentum) * moving + momentum * biased variance."""
    X = torch.tensor([[1.0, 10.0], [2.0, 20.0], [6.0, 0.0]], **f64)
    gamma, beta = torch.ones(1, 2, **f64), torch.zeros(1, 2, **f64)
    mm, mv = torch.zeros(1, 2, **f64), torch.ones(1, 2, **f64)
    mean = torch.tensor([[3.0, 10.0]], **f64)
    biased = torch.tensor([[(4 + 1 + 9) / 3, (0 + 100 + 100) / 3]], **f64)
    Y, mm_book, mv_book = batch_norm(X, gamma, beta, mm, mv, eps=0.0, momentum=0.1, unbiased=False)
    torch.testing.assert_close(Y, (X - mean) / biased.sqrt())
    torch.testing.assert_close(mm_book, 0.1 * mean)
    torch.testing.assert_close(mv_book, 0.9 + 0.1 * biased)
    _, _, mv_torch = batch_norm(X, gamma, beta, mm, mv, eps=0.0, momentum=0.1)
    torch.testing.assert_close(mv_torch, 0.9 + 0.1 * biased * 3 / 2)  # n / (n - 1) with n = 3


def test_batch_norm_mode_defaults_to_the_books_rule():
    X = torch.randn(4, 3, **f64) * 5 + 2
    args = (torch.ones(1, 3, **f64), torch.zeros(1, 3, **f64), torch.zeros(1, 3, **f64), torch.ones(1, 3, **f64))
    with torch.no_grad():
        Y, mm, _ = batch_norm(X, *args, eps=1e-5, momentum=0.1)  # prediction: moving statistics, unchanged
    torch.testing.assert_close(Y, X / (1 + 1e-5) ** 0.5)
    assert torch.equal(mm, args[2])
    Y, mm, _ = batch_norm(X, *args, eps=1e-5, momentum=0.1)  # grad on: training, batch statistics
    torch.testing.assert_close(Y.mean(0), torch.zeros(3, **f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(mm, 0.1 * X.mean(0, keepdim=True))


def test_batch_norm_gradcheck():
    X = torch.randn(3, 2, 2, 2, **f64, requires_grad=True)
    gamma = torch.randn(1, 2, 1, 1, **f64, requires_grad=True)
    beta = torch.randn(1, 2, 1, 1, **f64, requires_grad=True)
    stats = torch.zeros(1, 2, 1, 1, **f64), torch.ones(1, 2, 1, 1, **f64)

    def fn(X, gamma, beta):
        return batch_norm(X, gamma, beta, *stats, eps=1e-5, momentum=0.1, training=True)[0]

    assert torch.autograd.gradcheck(fn, (X, gamma, beta))
    assert torch.autograd.gradgradcheck(fn, (X, gamma, beta))


def test_batch_norm_refuses_what_it_cannot_normalize():
    one = torch.ones(1, 3)
    with pytest.raises(ValueError, match="2-D .* or 4-D"):
        batch_norm(torch.randn(2, 3, 4), one, one, one, one, eps=1e-5, momentum=0.1)
    with pytest.raises(ValueError, match="more than one value per channel"):
        batch_norm(torch.randn(1, 3), one, one, one, one, eps=1e-5, momentum=0.1, training=True)
    with pytest.raises(ValueError, match="num_dims must be 2"):
        BatchNorm(3, num_dims=3)
    with pytest.raises(ValueError, match="needs 4 dimensions with 3"):
        BatchNorm(3, num_dims=4)(torch.randn(2, 3))


@pytest.mark.parametrize("num_dims, reference", [(2, nn.BatchNorm1d), (4, nn.BatchNorm2d)])
def test_batchnorm_module_tracks_nn_batchnorm(num_dims, reference):
    """Five training steps, then prediction: outputs, gradients and statistics equal torch's layer's."""
    torch.manual_seed(0)
    ours = BatchNorm(5, num_dims=num_dims).double()
    theirs = reference(5).double()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.5)
    shape = (8, 5) if num_dims == 2 else (4, 5, 3, 2)
    for _ in range(5):
        X = torch.randn(shape, **f64) * 3 + 1
        target = torch.randn(shape, **f64)
        for layer, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((layer(X) - target) ** 2).sum().backward()
            opt.step()
        torch.testing.assert_close(ours.gamma.grad.flatten(), theirs.weight.grad, **close)
        torch.testing.assert_close(ours.beta.grad.flatten(), theirs.bias.grad, **close)
    torch.testing.assert_close(ours.moving_mean.flatten(), theirs.running_mean, **close)
    torch.testing.assert_close(ours.moving_var.flatten(), theirs.running_var, **close)
    ours.eval()
    theirs.eval()
    X = torch.randn(shape, **f64)
    torch.testing.assert_close(ours(X), theirs(X), **close)
    assert set(ours.state_dict()) == {"gamma", "beta", "moving_mean", "moving_var"}  # saved in checkpoints


def test_batchnorm_module_in_eval_mode_with_grad_uses_moving_statistics():
    # The book's function would see grad enabled and normalize with batch statistics (and update them).
    layer = BatchNorm(2, num_dims=2).eval()
    X = torch.randn(4, 2) + 5
    torch.testing.assert_close(layer(X), X / (1 + 1e-5) ** 0.5)
    assert torch.equal(layer.moving_mean, torch.zeros(1, 2))


def test_batchnorm_bf16_statistics_in_float32():
    layer = BatchNorm(3, num_dims=4)
    X = (torch.randn(4, 3, 5, 5) * 4 + 100).to(torch.bfloat16)
    Y = layer(X)
    assert Y.dtype == torch.bfloat16 and layer.moving_var.dtype == torch.float32
    rm, rv = torch.zeros(3), torch.ones(3)
    F.batch_norm(X.float(), rm, rv, training=True, momentum=0.1)  # the same bf16 values, in float32
    torch.testing.assert_close(layer.moving_mean.flatten(), rm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.moving_var.flatten(), rv, rtol=1e-4, atol=1e-5)


# --- the batch-norm LeNets (d2l §8.5.4-8.5.5) ------------------------------------------------------------


def summary_lines(model, shape):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.layer_summary(shape)
    return table(out.getvalue())


def test_bn_lenet_tables():
    assert summary_lines(BNLeNet(), (1, 1, 28, 28)) == table(BN_LENET_TABLE)
    scratch = table(BN_LENET_TABLE.replace("BatchNorm2d", "BatchNorm").replace("BatchNorm1d", "BatchNorm"))
    assert summary_lines(BNLeNetScratch(), (1, 1, 28, 28)) == scratch


def test_bn_lenet_parameter_count():
    # conv 1->6 5x5, conv 6->16 5x5, linear 256->120->84->10; a scale and a shift per BN feature.
    expected = (25 * 6 + 6) + (6 * 25 * 16 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    expected += 2 * (6 + 16 + 120 + 84)
    for name in ("lenet-bn", "lenet-bn-scratch"):
        assert sum(p.numel() for p in create_model(name).parameters()) == expected == 44_878


def test_scratch_and_concise_bn_lenets_train_alike():
    """Given the same weights, the two LeNets take identical SGD steps and keep identical statistics."""
    torch.manual_seed(0)
    scratch = create_model("lenet-bn-scratch").double()
    concise = create_model("lenet-bn").double()
    # Map the scratch names (gamma, beta, moving_*) onto nn.BatchNorm's and copy every weight across.
    mapping = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
    theirs = concise.state_dict()
    for name, value in scratch.state_dict().items():
        module, leaf = name.rsplit(".", 1)
        key = f"{module}.{mapping.get(leaf, leaf)}"
        theirs[key] = value.reshape(theirs[key].shape).clone()
    concise.load_state_dict(theirs)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (scratch, concise)]
    for _ in range(3):
        X, y = torch.randn(16, 1, 28, 28, **f64), torch.randint(0, 10, (16,))
        losses = []
        for model, opt in zip((scratch, concise), opts, strict=True):
            loss = model.loss(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss)
        torch.testing.assert_close(losses[0], losses[1], **close)
    theirs = concise.state_dict()
    for name, value in scratch.state_dict().items():  # weights after the steps, and running statistics
        module, leaf = name.rsplit(".", 1)
        torch.testing.assert_close(value.flatten(), theirs[f"{module}.{mapping.get(leaf, leaf)}"].flatten(),
                                   rtol=1e-8, atol=1e-8)
    scratch.eval()
    concise.eval()
    X = torch.randn(4, 1, 28, 28, **f64)
    torch.testing.assert_close(scratch(X), concise(X), rtol=1e-8, atol=1e-8)
