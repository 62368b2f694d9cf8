"""The ``cnnlab`` command: the argument parser, one small function per command, and the demos.
``run`` is the console entry point."""

from cnnlab.cli.main import run  # not `main`: that name is the submodule cnnlab.cli.main

__all__ = ["run"]
