"""cnnlab.nn.layers: Conv2D and the edge-detection experiment of d2l §7.2; white_balance; shifted_views."""

import torch
import torch.nn.functional as F

from cnnlab.cli import demo
from cnnlab.nn import ops
from cnnlab.nn.layers import Conv2D, shifted_views, white_balance


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


def _grey_and_tinted(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(4, 1, 8, 8, generator=g)
    gains, shifts = torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1), torch.tensor([0.1, -0.3, 0.0]).view(1, 3, 1, 1)
    return grey, grey * gains + shifts  # each channel an affine map of the one grey image: a tint


def test_white_balance_makes_a_tinted_grey_images_channels_equal():
    _, tinted = _grey_and_tinted()
    balanced = white_balance(tinted)
    assert torch.allclose(balanced[:, 0], balanced[:, 1], atol=1e-4)  # eps keeps a flat channel finite
    assert torch.allclose(balanced[:, 1], balanced[:, 2], atol=1e-4)
    assert not torch.allclose(tinted[:, 0], tinted[:, 1], atol=1e-2)  # the tint was there to remove


def test_white_balance_keeps_brightness_and_contrast_and_leaves_grey_images_alone():
    grey, tinted = _grey_and_tinted()
    as_colour = grey.expand(-1, 3, -1, -1)
    assert torch.allclose(white_balance(as_colour), as_colour, atol=1e-4)  # no cast: nothing to remove
    # The same change to every channel stays: a brighter, flatter image is balanced to a brighter, flatter one
    assert torch.allclose(white_balance(0.5 * tinted + 0.2), 0.5 * white_balance(tinted) + 0.2, atol=1e-5)
    assert torch.allclose(white_balance(white_balance(tinted)), white_balance(tinted), atol=1e-4)
    assert white_balance(tinted.bfloat16()).dtype == torch.bfloat16


def test_shifted_views_are_every_shift_with_the_edge_repeated():
    X = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    views = shifted_views(X, 2)
    assert len(views) == 25 and all(view.shape == X.shape for view in views)
    assert torch.equal(views[12], X)  # the middle view is the image itself
    rows, cols = torch.arange(5), torch.arange(6)
    for view, (dy, dx) in zip(views, [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)], strict=True):
        # pixel (i, j) of view (dy, dx) is the image's pixel (i + dy, j + dx), clamped to the image
        assert torch.equal(view, X[:, :, (rows + dy).clamp(0, 4)][:, :, :, (cols + dx).clamp(0, 5)]), (dy, dx)
