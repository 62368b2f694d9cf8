"""cnnlab's from-scratch operators against the book's loop and torch.nn.functional, in one run.

    python benchmarks/ops.py [--repeats 7]

Prints a table of median times and ratios: the seed's naive corr2d loop vs cnnlab.corr2d vs F.conv2d
(28x28 with 5x5, 224x224 with 3x3), and cnnlab.conv2d vs F.conv2d forward+backward on a LeNet-sized batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds  # noqa: E402
from cnnlab.nn import ops  # noqa: E402


def naive_corr2d(X, K):
    """The seed's loop (d2l §7.2.1), one Python iteration per output pixel."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<34} {'naive loop':>12} {'cnnlab':>12} {'F.conv2d':>12} {'loop/cnnlab':>12} {'cnnlab/F':>9}")
    for size, k in ((28, 5), (224, 3)):
        X, K = torch.randn(size, size), torch.randn(k, k)
        naive = median_seconds(lambda X=X, K=K: naive_corr2d(X, K), repeats=3 if size > 100 else args.repeats,
                               warmup=1)
        ours = median_seconds(lambda X=X, K=K: ops.corr2d(X, K), repeats=args.repeats, number=20)
        ref = median_seconds(lambda X=X, K=K: F.conv2d(X[None, None], K[None, None]), repeats=args.repeats,
                             number=20)
        print(f"{f'corr2d {size}x{size}, {k}x{k} kernel':<34} {naive * 1e3:>10.2f}ms {ours * 1e3:>10.3f}ms "
              f"{ref * 1e3:>10.3f}ms {naive / ours:>11.0f}x {ours / ref:>8.2f}x")

    X = torch.randn(128, 6, 14, 14, requires_grad=True)
    W = torch.randn(16, 6, 5, 5, requires_grad=True)
    b = torch.randn(16, requires_grad=True)

    def step(conv):
        def run():
            out = conv(X, W, b)
            out.backward(torch.ones_like(out))
        return run

    ours = median_seconds(step(ops.conv2d), repeats=args.repeats, number=10)
    ref = median_seconds(step(F.conv2d), repeats=args.repeats, number=10)
    print(f"{'conv2d fwd+bwd 128x6x14x14 -> 16, 5x5':<34} {'':>12} {ours * 1e3:>10.3f}ms {ref * 1e3:>10.3f}ms "
          f"{'':>12} {ours / ref:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
