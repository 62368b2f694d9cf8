"""cnnlab.nn.ops against the seed's printed outputs (d2l §7.2-7.5) and against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.nn import ops


def seed_corr2d(X, K):
    """The book's loop, kept as the oracle for the vectorized version."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


# --- seed §7.2: the edge map -------------------------------------------------------------------------

def test_corr2d_edge_map_matches_seed():
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    Y = ops.corr2d(X, torch.tensor([[1.0, -1.0]]))
    row = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0])
    assert torch.equal(Y, row.expand(6, 7))
    # the transposed image has no vertical edges left for this kernel
    assert torch.equal(ops.corr2d(X.t(), torch.tensor([[1.0, -1.0]])), torch.zeros(8, 5))


def test_corr2d_matches_seed_loop_on_random_input():
    g = torch.Generator().manual_seed(0)
    X, K = torch.randn(9, 7, generator=g), torch.randn(3, 2, generator=g)
    torch.testing.assert_close(ops.corr2d(X, K), seed_corr2d(X, K))


# --- seed §7.3: output shapes -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kernel, padding, stride, expected",
    [(3, 1, 1, (8, 8)), ((5, 3), (2, 1), 1, (8, 8)), (3, 1, 2, (4, 4)), ((3, 5), (0, 1), (3, 4), (2, 2))],
)
def test_conv_output_shape_matches_seed_examples(kernel, padding, stride, expected):
    assert ops.conv_output_shape((8, 8), kernel, padding, stride) == expected
    # and the real layers agree with the formula
    conv = torch.nn.Conv2d(1, 1, kernel_size=kernel, padding=padding, stride=stride)
    assert tuple(conv(torch.rand(1, 1, 8, 8)).shape[2:]) == expected
    W = torch.rand(1, 1, *ops.pair(kernel))
    assert tuple(ops.conv2d(torch.rand(1, 1, 8, 8), W, stride=stride, padding=padding).shape[2:]) == expected


# --- seed §7.4: channels ------------------------------------------------------------------------------

def seed_channel_inputs():
    X = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
                      [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return X, K


def test_corr2d_multi_in_matches_book():
    X, K = seed_channel_inputs()
    assert torch.equal(ops.corr2d_multi_in(X, K), torch.tensor([[56.0, 72.0], [104.0, 120.0]]))


def test_corr2d_multi_in_out_matches_seed():
    X, K = seed_channel_inputs()
    K = torch.stack((K, K + 1, K + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    expected = torch.tensor([[[56.0, 72.0], [104.0, 120.0]],
                             [[76.0, 100.0], [148.0, 172.0]],
                             [[96.0, 128.0], [192.0, 224.0]]])
    assert torch.equal(ops.corr2d_multi_in_out(X, K), expected)


def test_1x1_convolution_equals_matrix_product():
    g = torch.Generator().manual_seed(1)
    X = torch.normal(0, 1, (3, 3, 3), generator=g)
    K = torch.normal(0, 1, (2, 3, 1, 1), generator=g)
    Y1 = ops.corr2d_multi_in_out_1x1(X, K)
    Y2 = ops.corr2d_multi_in_out(X, K)
    assert float(torch.abs(Y1 - Y2).sum()) < 1e-6
    assert Y1.shape == (2, 3, 3)


# --- seed §7.5: pooling -------------------------------------------------------------------------------

def test_pool2d_matches_seed():
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    assert torch.equal(ops.pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(ops.pool2d(X, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_max_pool2d_padding_and_stride_match_seed():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    assert torch.equal(ops.max_pool2d(X, 3), torch.tensor([[[[10.0]]]]))
    expected = torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]])
    assert torch.equal(ops.max_pool2d(X, 3, padding=1, stride=2), expected)
    assert torch.equal(ops.max_pool2d(X, (2, 3), stride=(2, 3), padding=(0, 1)), expected)


def test_max_pool2d_multi_channel_matches_seed():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    X = torch.cat((X, X + 1), 1)
    expected = torch.tensor([[[[5.0, 7.0], [13.0, 15.0]], [[6.0, 8.0], [14.0, 16.0]]]])
    assert torch.equal(ops.max_pool2d(X, 3, padding=1, stride=2), expected)


def test_avg_pool2d_counts_padding_zeros():
    X = torch.ones(1, 1, 2, 2)
    # each 2x2 window at the border covers one real 1 and three padded zeros
    assert torch.equal(ops.avg_pool2d(X, 2, stride=1, padding=1)[0, 0, 0, 0], torch.tensor(0.25))


# --- properties against torch.nn.functional -----------------------------------------------------------

@st.composite
def conv_cases(draw):
    k_h, k_w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    p_h, p_w = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, k_h - 2 * p_h), 20))
    w = draw(st.integers(max(1, k_w - 2 * p_w), 20))
    return dict(n=draw(st.integers(1, 4)), c_in=draw(st.integers(1, 8)), c_out=draw(st.integers(1, 8)),
                hw=(h, w), kernel=(k_h, k_w), padding=(p_h, p_w),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
                memory_format=draw(st.sampled_from([torch.contiguous_format, torch.channels_last])),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])))


def _tensors(case, dtype, memory_format=torch.contiguous_format):
    g = torch.Generator().manual_seed(case["seed"])
    X = torch.randn(case["n"], case["c_in"], *case["hw"], generator=g, dtype=dtype)
    X = X.contiguous(memory_format=memory_format).requires_grad_()
    W = torch.randn(case["c_out"], case["c_in"], *case["kernel"], generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(case["c_out"], generator=g, dtype=dtype).requires_grad_() if case["bias"] else None
    return X, W, b


def _grads(out, inputs, seed):
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    live = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, live, upstream)


def _assert_within_rounding(got, exact, magnitude, terms, dtype, what):
    """|got - exact| <= (terms + 2) * eps(dtype) * magnitude, elementwise, plus one eps for exact zeros.

    ``exact`` is the float64 oracle and ``magnitude`` the same sum over absolute values: a sum of ``terms``
    products rounded in ``dtype`` is off by at most ~terms * eps/2 times that (the classic bound for
    floating-point dot products), whatever order or blocking a CPU's kernels use.
    """
    eps = torch.finfo(dtype).eps
    bound = (terms + 2) * eps * magnitude + eps
    error = (got.double() - exact).abs()
    assert got.shape == exact.shape and (error <= bound).all(), (
        f"{what}: error {float(error.max()):.3g} over the rounding bound at {int((error > bound).sum())} places")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_conv2d_matches_torch_values_and_gradients(case):
    """ops.conv2d against F.conv2d in float64, for contiguous and channels-last inputs, float32 and float64:
    values and input, weight and bias gradients within the rounding bound of the dtype, and the output and
    input gradient in the input's memory layout."""
    dtype = case["dtype"]
    X, W, b = _tensors(case, dtype, case["memory_format"])
    kw = dict(stride=case["stride"], padding=case["padding"])
    ours = ops.conv2d(X, W, b, **kw)
    # X's layout: channels-last unless X is also plain contiguous (one channel, or 1x1 images).
    layout = torch.contiguous_format if X.is_contiguous() else torch.channels_last
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=layout)
    # The oracle: the same values in float64, and each result's magnitude (the same sums over |terms|).
    X64, W64 = X.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    ref = F.conv2d(X64, W64, b64, **kw)
    size = F.conv2d(X64.abs(), W64.abs(), b64.abs() if b is not None else None, **kw)
    c_out, c_in, k_h, k_w = W.shape
    _assert_within_rounding(ours, ref, size, c_in * k_h * k_w + 1, dtype, "output")

    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    live = [t for t in (X, W, b) if t is not None]
    grads = torch.autograd.grad(ours, live, upstream)
    assert grads[0].is_contiguous(memory_format=layout)
    G64 = upstream.double()
    refs = torch.autograd.grad(ref, [t for t in (X64, W64, b64) if t is not None], G64)
    X_abs, W_abs = X64.detach().abs().requires_grad_(), W64.detach().abs().requires_grad_()
    size_X = torch.autograd.grad(F.conv2d(X_abs, W64.detach().abs(), **kw), X_abs, G64.abs())[0]
    size_W = torch.autograd.grad(F.conv2d(X64.detach().abs(), W_abs, **kw), W_abs, G64.abs())[0]
    pixels = ours.shape[0] * ours.shape[2] * ours.shape[3]
    _assert_within_rounding(grads[0], refs[0], size_X, c_out * k_h * k_w, dtype, "input gradient")
    _assert_within_rounding(grads[1], refs[1], size_W, pixels, dtype, "weight gradient")
    if b is not None:
        _assert_within_rounding(grads[2], refs[2], G64.abs().sum((0, 2, 3)), pixels, dtype, "bias gradient")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(), st.sampled_from(["max", "avg"]))
def test_pooling_matches_torch_values_and_gradients(case, mode):
    X, _, _ = _tensors(case, torch.float32)
    k = case["kernel"]
    padding = (min(case["padding"][0], k[0] // 2), min(case["padding"][1], k[1] // 2))
    if k[0] > case["hw"][0] + 2 * padding[0] or k[1] > case["hw"][1] + 2 * padding[1]:
        return
    ours_fn, ref_fn = (ops.max_pool2d, F.max_pool2d) if mode == "max" else (ops.avg_pool2d, F.avg_pool2d)
    ours, ref = ours_fn(X, k, case["stride"], padding), ref_fn(X, k, case["stride"], padding)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_grads(ours, (X,), 3)[0], _grads(ref, (X,), 3)[0], atol=1e-5, rtol=1e-5)


def test_default_stride_is_kernel_size_like_torch():
    X = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ops.max_pool2d(X, 3), F.max_pool2d(X, 3))
    torch.testing.assert_close(ops.avg_pool2d(X, (2, 3)), F.avg_pool2d(X, (2, 3)))


def _float64_conv_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, 2, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(3, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    return X, W, b


def _strided_padded_conv(x, w, b):
    return ops.conv2d(x, w, b, stride=(2, 1), padding=1)


def test_gradcheck_float64():
    X, W, b = _float64_conv_inputs(3)
    assert torch.autograd.gradcheck(_strided_padded_conv, (X, W, b))
    assert torch.autograd.gradcheck(lambda x: ops.avg_pool2d(x, 3, 2, 1), (X,))
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, 2, 1), (X,))
    K = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.corr2d, (X[0, 0].detach().requires_grad_(), K))


def test_conv2d_second_derivatives_match_gradgradcheck():
    # The backward is hand-written; it must itself be differentiable (gradient penalties, Hessian products).
    assert torch.autograd.gradgradcheck(_strided_padded_conv, _float64_conv_inputs(5))


def test_conv2d_gradient_of_one_argument_only():
    X, W = torch.randn(2, 3, 7, 7), torch.randn(4, 3, 3, 3)
    X_grad = X.clone().requires_grad_()
    (ops.conv2d(X_grad, W, stride=2) ** 2).sum().backward()
    X_ref = X.clone().requires_grad_()
    (F.conv2d(X_ref, W, stride=2) ** 2).sum().backward()
    torch.testing.assert_close(X_grad.grad, X_ref.grad, atol=1e-4, rtol=1e-4)
    W_grad = W.clone().requires_grad_()
    ops.conv2d(X, W_grad, padding=2).square().sum().backward()
    W_ref = W.clone().requires_grad_()
    F.conv2d(X, W_ref, padding=2).square().sum().backward()
    torch.testing.assert_close(W_grad.grad, W_ref.grad, atol=1e-3, rtol=1e-4)


def test_conv2d_under_bf16_autocast_keeps_parameter_dtypes():
    X = torch.randn(4, 3, 10, 10, requires_grad=True)
    W = torch.randn(5, 3, 3, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = ops.conv2d(X, W, b, padding=1), F.conv2d(X, W, b, padding=1)
    assert ours.dtype == ref.dtype == torch.bfloat16
    # The tolerance is bf16's, not one CPU's: bf16 keeps 8 significant bits, so one rounding of the output is
    # off by up to 2**-8 = 0.0039 relative; rtol 0.02 allows ~5 such ulps between two kernels that round inputs,
    # partial sums and output differently (Intel's AMX and AMD's AVX512-BF16 do). Near zero, where outputs
    # cancel, the error is absolute: each of the 27 products x*w (unit normals, E|x*w| = 2/pi) may be rounded
    # by 2**-8, so up to 27 * 0.64 * 0.0039 = 0.07; atol 0.1.
    torch.testing.assert_close(ours.float(), ref.float(), atol=0.1, rtol=0.02)
    ours.float().sum().backward()
    assert (X.grad.dtype, W.grad.dtype, b.grad.dtype) == (torch.float32,) * 3
    torch.testing.assert_close(b.grad, torch.full((5,), 4 * 10 * 10.0))  # one per output pixel


def test_float64_is_kept():
    X = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    assert ops.conv2d(X, torch.randn(3, 2, 3, 3, dtype=torch.float64)).dtype == torch.float64
    assert ops.max_pool2d(X, 2).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_torch():
    X, W = torch.randn(4, 3, 16, 16, device="cuda"), torch.randn(8, 3, 3, 3, device="cuda")
    torch.testing.assert_close(ops.conv2d(X, W, padding=1), F.conv2d(X, W, padding=1), atol=1e-4, rtol=1e-4)


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: ops.corr2d(torch.ones(1, 4, 4), torch.ones(2, 2)), "(1, 4, 4)"),
        (lambda: ops.corr2d(torch.ones(2, 2), torch.ones(3, 3)), "larger than the input"),
        (lambda: ops.corr2d_multi_in(torch.ones(2, 4, 4), torch.ones(3, 2, 2)), "3"),
        (lambda: ops.conv2d(torch.ones(1, 3, 5, 5), torch.ones(4, 2, 3, 3)), "(4, 2, 3, 3)"),
        (lambda: ops.conv2d(torch.ones(3, 5, 5), torch.ones(4, 3, 3, 3)), "(3, 5, 5)"),
        (lambda: ops.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 5, 5), padding=0), "larger than the padded"),
        (lambda: ops.conv2d(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 3, 3), stride=0), "stride"),
        (lambda: ops.conv2d(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 3, 3), padding=-1), "padding"),
        (lambda: ops.conv2d(torch.ones(1, 1, 5, 5), torch.ones(2, 1, 3, 3), bias=torch.ones(3)), "bias"),
        (lambda: ops.pool2d(torch.ones(3, 3), (2, 2), mode="median"), "median"),
        (lambda: ops.max_pool2d(torch.ones(1, 1, 4, 4), 2, padding=2), "half"),
        (lambda: ops.avg_pool2d(torch.ones(4, 4), 2), "(4, 4)"),
        (lambda: ops.conv_output_shape((8, 8), 3, stride=(1, 0)), "stride"),
        (lambda: ops.pair(2.5, "kernel_size"), "kernel_size"),
    ],
)
def test_invalid_input_raises_clear_value_error(call, words):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert words in str(info.value)
