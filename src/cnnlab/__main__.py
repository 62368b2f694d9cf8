"""``python -m cnnlab`` is ``cnnlab`` (and what torchrun launches: ``torchrun -m cnnlab train``)."""

from cnnlab.cli.main import run

if __name__ == "__main__":
    run()
