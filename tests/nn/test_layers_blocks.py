"""The blocks of d2l's models: `vgg_block` (§8.2.1) and `Residual` (§8.6.2)."""

import pytest
import torch
from torch import nn

from cnnlab.nn.layers import Residual, vgg_block


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- Residual --------------------------------------------------------------------------------------------


def test_residual_seed_shapes():
    # d2l §8.6.2: the identity block keeps the shape, the projection block halves it and changes width.
    X = torch.randn(4, 3, 6, 6)
    assert Residual(3)(X).shape == (4, 3, 6, 6)
    assert Residual(6, use_1x1conv=True, strides=2)(X).shape == (4, 6, 3, 3)


@pytest.mark.parametrize("use_1x1conv, strides, num_channels", [(False, 1, 3), (True, 1, 5), (True, 2, 6)])
def test_residual_explicit_matches_lazy(use_1x1conv, strides, num_channels):
    X = torch.randn(2, 3, 7, 7)
    lazy = Residual(num_channels, use_1x1conv=use_1x1conv, strides=strides)
    explicit = Residual(num_channels, use_1x1conv=use_1x1conv, strides=strides, in_channels=3)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in explicit.parameters())
    Y = lazy(X)
    explicit.load_state_dict(lazy.state_dict())  # same names and shapes, so the weights transfer
    torch.testing.assert_close(explicit(X), Y)
    assert n_params(explicit) == n_params(lazy)


def test_residual_parameter_count():
    # Two biased 3x3 convs, two BNs (weight, bias) and a biased 1x1 projection, as d2l builds it.
    c_in, c = 4, 8
    expected = (c_in * c * 9 + c) + (c * c * 9 + c) + 2 * 2 * c + (c_in * c + c)
    assert n_params(Residual(c, use_1x1conv=True, strides=2, in_channels=c_in)) == expected


def test_residual_is_identity_plus_branch():
    # With the residual branch zeroed the block is relu(x): the shortcut carries the input unchanged.
    blk = Residual(3, in_channels=3).eval()
    nn.init.zeros_(blk.bn2.weight)
    nn.init.zeros_(blk.bn2.bias)
    X = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(blk(X), torch.relu(X))


def test_residual_gradients_reach_every_parameter():
    blk = Residual(6, use_1x1conv=True, strides=2, in_channels=3)
    blk(torch.randn(4, 3, 6, 6)).sum().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs", [dict(strides=2), dict(in_channels=4)])
def test_residual_refuses_a_shortcut_that_cannot_be_added(kwargs):
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        Residual(3, **kwargs)


# --- vgg_block -------------------------------------------------------------------------------------------


def test_vgg_block_first_conv_takes_the_block_input():
    # The seed's vgg_block gives every conv out_channels inputs; the first must take the block's input.
    blk = vgg_block(2, 8, in_channels=3)
    convs = [m for m in blk if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 8), (8, 8)]
    assert blk(torch.randn(1, 3, 6, 6)).shape == (1, 8, 3, 3)


def test_vgg_block_lazy_and_explicit_agree():
    X = torch.randn(2, 5, 9, 9)
    lazy, explicit = vgg_block(3, 4), vgg_block(3, 4, in_channels=5)
    Y = lazy(X)
    explicit.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(explicit(X), Y)
    assert n_params(explicit) == 5 * 4 * 9 + 4 + 2 * (4 * 4 * 9 + 4)


@pytest.mark.parametrize(
    "size, sizes",
    [
        (224, [112, 56, 28, 14, 7]),  # the book's shapes are unchanged by ceil_mode
        (96, [48, 24, 12, 6, 3]),
        (28, [14, 7, 4, 2, 1]),  # floor mode would reach 0 at the fifth block
    ],
)
def test_vgg_block_halves_with_ceil(size, sizes):
    X = torch.zeros(1, 1, size, size)
    for out in sizes:
        X = vgg_block(1, 2)(X)
        assert X.shape[-2:] == (out, out)
