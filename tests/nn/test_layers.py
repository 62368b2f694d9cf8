"""cnnlab.nn.layers.Conv2D and the edge-detection experiment of d2l §7.2."""

import torch
import torch.nn.functional as F

from cnnlab.cli import demo
from cnnlab.nn import ops
from cnnlab.nn.layers import Conv2D


def test_conv2d_layer_matches_f_conv2d_in_value_and_every_gradient():
    # F.conv2d is the oracle, in float64 so that the default tolerances (~1e-7) are a sharp test.
    g = torch.Generator().manual_seed(0)
    layer = Conv2D((3, 2)).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
    X = torch.randn(7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    ours = layer(X)
    ref = F.conv2d(X[None, None], layer.weight[None, None], layer.bias)[0, 0]
    assert ours.shape == ref.shape == (5, 8)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    inputs = (X, layer.weight, layer.bias)
    names = ("input", "weight", "bias")
    for name, mine, theirs in zip(names, torch.autograd.grad(ours, inputs, upstream),
                                  torch.autograd.grad(ref, inputs, upstream), strict=True):
        torch.testing.assert_close(mine, theirs, msg=lambda m, name=name: f"{name} gradient: {m}")


def test_conv2d_layer_on_the_edge_image():
    layer = Conv2D((1, 2))
    X = demo.edge_image()
    assert layer(X).shape == (6, 7)
    layer(X).sum().backward()
    # d(sum Y)/dK[0, j] is the sum of the pixels the tap j sees: columns j..j+6 of X; the bias sees 42 outputs.
    torch.testing.assert_close(layer.weight.grad, torch.stack([X[:, :7].sum(), X[:, 1:].sum()])[None])
    assert layer.bias.grad.item() == 42.0


def test_conv2d_layer_learns_edge_kernel():
    torch.manual_seed(0)
    layer = Conv2D((1, 2))
    X = demo.edge_image()
    Y = ops.corr2d(X, torch.tensor([[1.0, -1.0]]))
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        ((layer(X) - Y) ** 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[1.0, -1.0]]), atol=1e-2, rtol=0)


def test_edge_demo_recovers_kernel_and_prints_every_two_epochs():
    lines = []
    kernel, losses = demo.learn_edge_kernel(log=lines.append)
    assert [line.split(",")[0] for line in lines] == ["epoch 2", "epoch 4", "epoch 6", "epoch 8", "epoch 10"]
    assert losses[-1] < losses[0] / 10
    torch.testing.assert_close(kernel, torch.tensor([[1.0, -1.0]]), atol=0.15, rtol=0)
