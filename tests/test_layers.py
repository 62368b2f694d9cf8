"""cnnlab.layers.Conv2D and the edge-detection experiment of d2l §7.2."""

import torch

from cnnlab import demo, ops
from cnnlab.layers import Conv2D


def test_conv2d_layer_is_corr2d_plus_bias_and_learnable():
    layer = Conv2D((1, 2))
    X = demo.edge_image()
    assert layer(X).shape == (6, 7)
    with torch.no_grad():
        layer.bias.fill_(0.5)
    torch.testing.assert_close(layer(X), ops.corr2d(X, layer.weight) + 0.5)
    layer(X).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad.item() == 42.0


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
