"""Convolution and pooling from scratch (d2l §7.2-7.5), vectorized on torch tensors.

Every operator here is built on one primitive, a strided *view* that exposes each kh x kw window as two
trailing axes (:func:`sliding_windows`, ``Tensor.unfold`` twice). A cross-correlation is then one matrix
product over those axes and a pooling is one reduction over them: no Python loop per output pixel.
Autograd differentiates the pooling and ``corr2d`` through the view. The batched ``conv2d`` takes
its windows over a batch-innermost copy and has its backward written out (one matrix product per gradient,
col2im as kh*kw slice additions): fwd+bwd 1.6-1.8x ``F.conv2d`` on a LeNet batch, where autograd's route
back through the view was 3.5x (benchmarks/ops.py).

The d2l functions keep their names and signatures (``corr2d``, ``corr2d_multi_in``, ``corr2d_multi_in_out``,
``corr2d_multi_in_out_1x1``, ``pool2d``); the batched ``conv2d``, ``max_pool2d`` and ``avg_pool2d`` follow
``torch.nn.functional`` so that they can be checked against it value for value and gradient for gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "pair",
    "size_pair",
    "conv_output_shape",
    "sliding_windows",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "conv2d",
    "pool2d",
    "max_pool2d",
    "avg_pool2d",
]


def pair(value: int | tuple[int, int] | list[int], name: str = "value") -> tuple[int, int]:
    """Return ``value`` as an (h, w) pair, as torch.nn does for ``kernel_size=3`` or ``(5, 3)``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_stride_padding(stride: tuple[int, int], padding: tuple[int, int]) -> None:
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1 on both axes, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0 on both axes, got {padding}")


def conv_output_shape(in_hw, kernel, padding=0, stride=1) -> tuple[int, int]:
    """Output height and width of a convolution or pooling (d2l §7.3).

    Per axis: ``floor((n - k + 2p) / s) + 1``.

    Args:
        in_hw: input (height, width), or one int for a square input.
        kernel: kernel (height, width) or an int.
        padding: padding added on *each* side, int or pair.
        stride: step between windows, int or pair.

    Returns:
        (out_height, out_width).
    """
    (n_h, n_w), (k_h, k_w) = pair(in_hw, "in_hw"), pair(kernel, "kernel")
    p, s = pair(padding, "padding"), pair(stride, "stride")
    _check_stride_padding(s, p)
    if k_h < 1 or k_w < 1:
        raise ValueError(f"kernel must be at least 1x1, got {(k_h, k_w)}")
    if k_h > n_h + 2 * p[0] or k_w > n_w + 2 * p[1]:
        raise ValueError(
            f"kernel {(k_h, k_w)} is larger than the padded input "
            f"{(n_h + 2 * p[0], n_w + 2 * p[1])} (input {(n_h, n_w)}, padding {p})"
        )
    return ((n_h - k_h + 2 * p[0]) // s[0] + 1, (n_w - k_w + 2 * p[1]) // s[1] + 1)


def sliding_windows(X: Tensor, kernel, stride=1) -> Tensor:
    """A strided view of every kernel-sized window of ``X`` over its last two axes.

    Shape:
        X: (..., H, W) -> (..., H_out, W_out, kh, kw), with H_out = (H - kh) // sh + 1.

    No data is copied: the view shares X's storage, which is what makes the operators vectorized.
    """
    (k_h, k_w), (s_h, s_w) = pair(kernel, "kernel"), pair(stride, "stride")
    if X.ndim < 2:
        raise ValueError(f"input must have at least 2 dims (H, W), got shape {tuple(X.shape)}")
    if k_h > X.shape[-2] or k_w > X.shape[-1]:
        raise ValueError(f"kernel {(k_h, k_w)} is larger than the input {tuple(X.shape[-2:])}")
    return X.unfold(-2, k_h, s_h).unfold(-2, k_w, s_w)  # (..., H_out, W_out, kh, kw)


def _float_pair(X: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Bring X and K to one floating dtype (the seed mixes float images and float kernels freely)."""
    dtype = torch.promote_types(X.dtype, K.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return X.to(dtype), K.to(dtype)


def _require_ndim(name: str, T: Tensor, ndim: int, layout: str) -> None:
    if T.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(T.shape)}")


def corr2d(X: Tensor, K: Tensor) -> Tensor:
    """2-D cross-correlation of one image with one kernel (d2l §7.2, ``corr2d``).

    Shape:
        X: (H, W), K: (kh, kw) -> (H - kh + 1, W - kw + 1).
    """
    _require_ndim("X", X, 2, "(H, W)")
    _require_ndim("K", K, 2, "(kh, kw)")
    X, K = _float_pair(X, K)
    windows = sliding_windows(X, K.shape)  # (H_out, W_out, kh, kw)
    h_out, w_out = windows.shape[:2]
    return (windows.reshape(h_out * w_out, -1) @ K.reshape(-1)).reshape(h_out, w_out)


def corr2d_multi_in(X: Tensor, K: Tensor) -> Tensor:
    """Cross-correlation summed over input channels (d2l §7.4.1).

    Shape:
        X: (C_in, H, W), K: (C_in, kh, kw) -> (H_out, W_out).
    """
    _require_ndim("X", X, 3, "(C_in, H, W)")
    _require_ndim("K", K, 3, "(C_in, kh, kw)")
    if X.shape[0] != K.shape[0]:
        raise ValueError(
            f"X has {X.shape[0]} input channels but K has {K.shape[0]} "
            f"(X {tuple(X.shape)}, K {tuple(K.shape)})"
        )
    return conv2d(X.unsqueeze(0), K.unsqueeze(0)).reshape(X.shape[1] - K.shape[1] + 1, -1)


def corr2d_multi_in_out(X: Tensor, K: Tensor) -> Tensor:
    """One multi-input cross-correlation per output channel, stacked (d2l §7.4.2).

    Shape:
        X: (C_in, H, W), K: (C_out, C_in, kh, kw) -> (C_out, H_out, W_out).
    """
    _require_ndim("X", X, 3, "(C_in, H, W)")
    _require_ndim("K", K, 4, "(C_out, C_in, kh, kw)")
    return conv2d(X.unsqueeze(0), K).squeeze(0)


def corr2d_multi_in_out_1x1(X: Tensor, K: Tensor) -> Tensor:
    """A 1x1 convolution is a fully connected layer applied at every pixel (d2l §7.4.3).

    Shape:
        X: (C_in, H, W), K: (C_out, C_in, 1, 1) -> (C_out, H, W).
    """
    _require_ndim("X", X, 3, "(C_in, H, W)")
    _require_ndim("K", K, 4, "(C_out, C_in, 1, 1)")
    if K.shape[2:] != (1, 1) or K.shape[1] != X.shape[0]:
        raise ValueError(
            f"K must be (C_out, {X.shape[0]}, 1, 1) for X of shape {tuple(X.shape)}, got {tuple(K.shape)}"
        )
    X, K = _float_pair(X, K)
    c_i, h, w = X.shape
    Y = torch.matmul(K.reshape(K.shape[0], c_i), X.reshape(c_i, h * w))  # (C_out, H*W)
    return Y.reshape(K.shape[0], h, w)


def _zero_pad(X: Tensor, padding: tuple[int, int], value: float = 0.0) -> Tensor:
    p_h, p_w = padding
    if p_h == 0 and p_w == 0:
        return X
    return torch.nn.functional.pad(X, (p_w, p_w, p_h, p_h), value=value)


def conv2d(X: Tensor, W: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """Batched multi-channel 2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    im2col: the windows view, copied once into columns, is contracted with the kernel in one matrix product
    over (kh, kw, C_in). The backward pass is written out (:class:`_Conv2dFunction`) rather than left to
    autograd, whose route back through the two unfolds scatter-adds every window gradient. The output comes
    in X's memory layout (contiguous or channels-last).

    Args:
        X: input batch.
        W: kernels.
        bias: one value per output channel, or None.
        stride: int or (h, w).
        padding: zeros added on each side, int or (h, w).

    Shape:
        X: (N, C_in, H, W), W: (C_out, C_in, kh, kw), bias: (C_out,) -> (N, C_out, H_out, W_out),
        H_out = floor((H + 2 p_h - kh) / s_h) + 1 (see :func:`conv_output_shape`).
    """
    _require_ndim("X", X, 4, "(N, C_in, H, W)")
    _require_ndim("W", W, 4, "(C_out, C_in, kh, kw)")
    s, p = pair(stride, "stride"), pair(padding, "padding")
    _check_stride_padding(s, p)
    if X.shape[1] != W.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} input channels but W expects {W.shape[1]} "
            f"(X {tuple(X.shape)}, W {tuple(W.shape)})"
        )
    if bias is not None and tuple(bias.shape) != (W.shape[0],):
        raise ValueError(f"bias must have shape ({W.shape[0]},), got {tuple(bias.shape)}")
    out_hw = conv_output_shape(X.shape[-2:], W.shape[-2:], p, s)  # raises if the kernel does not fit
    X, W = _float_pair(X, W)
    return _Conv2dFunction.apply(X, W, bias, s, p, out_hw)


def _batch_last(X: Tensor, padding: tuple[int, int]) -> Tensor:
    """X as a contiguous, zero-padded (C, H, W, N) tensor: batch innermost (see :class:`_Conv2dFunction`)."""
    p_h, p_w = padding
    X_last = X.permute(1, 2, 3, 0)
    if p_h or p_w:
        X_last = torch.nn.functional.pad(X_last, (0, 0, p_w, p_w, p_h, p_h))
    return X_last.contiguous()


def _conv_columns(X: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """im2col, transposed: one row per kernel tap (i, j, c), one column per output pixel (y, x, n).

    Taken over the batch-innermost copy of X, each row is Ho runs of Wo*N contiguous values (Wo*N = 1,280 on a
    LeNet batch), so the one copy moves long runs: 4x faster than windows over NCHW or channels-last.
    """
    windows = _batch_last(X, padding).unfold(1, kernel[0], stride[0]).unfold(2, kernel[1], stride[1])
    c_in, h_out, w_out, n, k_h, k_w = windows.shape
    return windows.permute(4, 5, 0, 1, 2, 3).reshape(k_h * k_w * c_in, h_out * w_out * n)  # the one copy


def _kernel_taps(W: Tensor) -> Tensor:
    """W as (C_out, kh*kw*C_in): one column per kernel tap (i, j, c), the row order of the columns."""
    return W.permute(0, 2, 3, 1).reshape(W.shape[0], -1)


def _in_layout_of(T: Tensor, X: Tensor) -> Tensor:
    """T copied into X's memory layout (channels-last or contiguous), what the next layer expects."""
    if X.is_contiguous(memory_format=torch.channels_last) and not X.is_contiguous():
        return T.contiguous(memory_format=torch.channels_last)
    return T.contiguous()


def _conv_input_grad(G_last: Tensor, W: Tensor, X: Tensor, out_hw, stride, padding) -> Tensor:
    """col2im of the window gradients, as kh*kw strided slice additions (one per kernel offset).

    The window gradients come out of one matrix product ordered (kh, kw, C_in, Ho, Wo, N), so each kernel
    offset adds one contiguous block into a slice of the padded (C_in, H, W, N) gradient whose rows are runs
    of Wo*N contiguous values. No scatter, and every addition is long and vectorized.
    """
    _, c_in, k_h, k_w = W.shape
    n, _, h, w = X.shape
    (h_out, w_out), (s_h, s_w), (p_h, p_w) = out_hw, stride, padding
    window_grads = (_kernel_taps(W).t() @ G_last).reshape(k_h, k_w, c_in, h_out, w_out, n)
    grad = G_last.new_zeros(c_in, h + 2 * p_h, w + 2 * p_w, n)
    rows, cols = s_h * (h_out - 1) + 1, s_w * (w_out - 1) + 1
    for i in range(k_h):
        for j in range(k_w):
            grad[:, i:i + rows:s_h, j:j + cols:s_w] += window_grads[i, j]
    return _in_layout_of(grad[:, p_h:p_h + h, p_w:p_w + w].permute(3, 0, 1, 2), X)  # (N, C_in, H, W)


class _Conv2dFunction(torch.autograd.Function):
    """conv2d as one matrix product, with its backward written out.

    Everything runs batch-innermost: X as (C, H, W, N), columns as (kh*kw*C_in, Ho*Wo*N), the output and its
    gradient G as (C_out, Ho*Wo*N). Then forward Y = W @ columns (+ bias), and the gradients are
    weight = G @ columns^T, bias = G summed over pixels, input = col2im(W^T G) (:func:`_conv_input_grad`).
    Each is a plain differentiable torch expression, so double backward works too.
    """

    @staticmethod
    def forward(ctx, X, W, bias, stride, padding, out_hw):
        (c_out, n), (h_out, w_out) = (W.shape[0], X.shape[0]), out_hw
        cols = _conv_columns(X, W.shape[-2:], stride, padding)
        W_taps = _kernel_taps(W)
        if bias is None:
            Y_last = W_taps @ cols
        else:
            Y_last = torch.addmm(bias.to(cols.dtype)[:, None], W_taps, cols)
        ctx.conf = (stride, padding, out_hw, None if bias is None else bias.dtype)
        # The columns are kept for the weight gradient: recomputing them would repeat the forward's copy.
        ctx.save_for_backward(X, W, cols if ctx.needs_input_grad[1] else None)
        return _in_layout_of(Y_last.reshape(c_out, h_out, w_out, n).permute(3, 0, 1, 2), X)

    @staticmethod
    def backward(ctx, grad_Y):
        X, W, cols = ctx.saved_tensors
        stride, padding, out_hw, bias_dtype = ctx.conf
        if ctx.needs_input_grad[1] and torch.is_grad_enabled():  # double backward: columns must depend on X
            cols = _conv_columns(X, W.shape[-2:], stride, padding)
        c_out, c_in, k_h, k_w = W.shape
        # X, W and the columns share one dtype (conv2d promotes them); under autocast only grad_Y differs.
        G_last = grad_Y.to(W.dtype).permute(1, 2, 3, 0).reshape(c_out, -1)  # (C_out, Ho*Wo*N)
        grad_X = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_X = _conv_input_grad(G_last, W, X, out_hw, stride, padding).to(X.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = (G_last @ cols.t()).reshape(c_out, k_h, k_w, c_in).permute(0, 3, 1, 2)
            grad_W = grad_W.to(W.dtype).contiguous()
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = G_last.sum(1).to(bias_dtype)
        return grad_X, grad_W, grad_b, None, None, None


_POOL_MODES = ("max", "avg")


def pool2d(X: Tensor, pool_size, mode: str = "max") -> Tensor:
    """Max or average pooling of one 2-D input with stride 1 and no padding (d2l §7.5, ``pool2d``).

    Shape:
        X: (H, W) -> (H - p_h + 1, W - p_w + 1).
    """
    if mode not in _POOL_MODES:
        raise ValueError(f"mode must be one of {_POOL_MODES}, got {mode!r}")
    _require_ndim("X", X, 2, "(H, W)")
    windows = sliding_windows(X if X.is_floating_point() else X.float(), pool_size)
    return _reduce_windows(windows, mode)


def _reduce_windows(windows: Tensor, mode: str) -> Tensor:
    flat = windows.flatten(-2)  # (..., H_out, W_out, kh*kw)
    if mode == "max":
        # max over a dim routes the gradient to one element (the first maximum), as F.max_pool2d does;
        # amax would split it between ties.
        return flat.max(dim=-1).values
    return flat.mean(dim=-1)


def _pool(X: Tensor, kernel_size, stride, padding, mode: str) -> Tensor:
    if X.ndim not in (3, 4):
        raise ValueError(f"X must be (N, C, H, W) or (C, H, W), got shape {tuple(X.shape)}")
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None or stride == [] else pair(stride, "stride")
    p = pair(padding, "padding")
    _check_stride_padding(s, p)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        # Same rule as torch: more padding than half a window would make windows of padding only.
        raise ValueError(f"padding {p} must be at most half of kernel_size {k}")
    conv_output_shape(X.shape[-2:], k, p, s)
    if not X.is_floating_point():
        X = X.float()
    fill = float("-inf") if mode == "max" else 0.0
    return _reduce_windows(sliding_windows(_zero_pad(X, p, fill), k, s), mode)


def max_pool2d(X: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Batched max pooling, as ``torch.nn.functional.max_pool2d`` (d2l §7.5.2-7.5.3).

    Each channel is pooled on its own. Padding contributes -inf, so a padded cell never wins the max.
    ``stride`` defaults to ``kernel_size``; padding may be at most half the kernel, as in torch.

    Shape:
        X: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return _pool(X, kernel_size, stride, padding, "max")


def avg_pool2d(X: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Batched average pooling, as ``torch.nn.functional.avg_pool2d`` with its defaults.

    Padding contributes zeros that *are* counted in the mean (torch's ``count_include_pad=True``),
    so border windows average over the full kernel area. ``stride`` defaults to ``kernel_size``.

    Shape:
        X: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return _pool(X, kernel_size, stride, padding, "avg")


def size_pair(size: int | tuple[int, int] | list[int], what: str = "image_size") -> tuple[int, int]:
    """An image size given as one int or an ``(h, w)`` pair, as the pair of positive ints.

    Raises:
        ValueError: not a positive int nor a pair of them; the message names ``what``.
    """
    try:
        h, w = pair(size, what)
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be a positive int or an (h, w) pair of them, got {size!r}.")
    return h, w
