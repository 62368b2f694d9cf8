"""d2l-only shims so the seed's snippets run as written with ``import cnnlab as d2l``.

The book grows classes after the fact with ``@d2l.add_to_class(Cls)``. cnnlab's own code never does
this (methods live in their classes); the helper exists only for readers' code copied from the book.
"""

from __future__ import annotations

__all__ = ["add_to_class"]


def add_to_class(Class):
    """Register the decorated function as a method of ``Class`` (d2l §3.2.1).

    Example:
        >>> class A: pass
        >>> @add_to_class(A)
        ... def hello(self): return "hi"
        >>> A().hello()
        'hi'
    """

    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
        return obj

    return wrapper
