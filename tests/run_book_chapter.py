"""Run one chapter of tests/book/ cell by cell, as a Jupyter kernel runs the book's notebook.

Usage: ``python tests/run_book_chapter.py tests/book/lenet.py [--skip-fit]``

All cells share one namespace, in order. Before cell ``n`` runs, ``# %% [n]`` is printed; when a cell ends
with an expression whose value is not None, ``Out[n]: <repr>`` is printed, which is what the book shows below
the cell (``comp_conv2d(conv2d, X).shape`` -> ``Out[2]: torch.Size([8, 8])``). Tracebacks point to the
chapter file's own lines. The exit status is 1 at the first cell that raises.

``torch.manual_seed(0)`` runs first, so that every run draws the same random numbers: what the cells print
(e.g. §7.2's learned kernel) and §7.4's last cell, which bounds a float32 difference by a fixed 1e-6, do not
depend on the draw (tried: 200 seeds all pass that bound with cnnlab's corr2d). With ``--skip-fit`` the cells
that call ``trainer.fit`` are left out (``# %% [n] skipped`` is printed), for a quick run of the rest.
"""

import ast
import re
import sys
import traceback

MARKER = re.compile(r"^# %% \[(\d+)\]$", re.M)


def cells(source: str):
    """``(n, first_line, code)`` for each ``# %% [n]`` cell; ``first_line`` is 1-based in the file."""
    marks = list(MARKER.finditer(source))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(source)
        yield int(m.group(1)), source.count("\n", 0, m.end()) + 2, source[m.end() + 1:end]


def run_cell(n: int, first_line: int, code: str, namespace: dict, filename: str) -> None:
    tree = ast.parse(code, filename)
    ast.increment_lineno(tree, first_line - 1)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
        if value is not None:
            print(f"Out[{n}]: {value!r}")


def main(path: str, skip_fit: bool = False) -> int:
    import torch

    torch.manual_seed(0)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__file__": path}
    for n, first_line, code in cells(source):
        if skip_fit and "trainer.fit(" in code:
            print(f"# %% [{n}] skipped", flush=True)
            continue
        print(f"# %% [{n}]", flush=True)
        try:
            run_cell(n, first_line, code, namespace, path)
        except Exception:
            traceback.print_exc()
            print(f"cell {n} of {path} failed", file=sys.stderr)
            return 1
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], skip_fit="--skip-fit" in sys.argv[2:]))
