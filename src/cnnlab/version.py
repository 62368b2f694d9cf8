"""The version of cnnlab, in a module of its own so that any layer may name it without importing the package."""

__version__ = "0.1.0"
