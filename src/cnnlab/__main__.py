"""``python -m cnnlab`` is ``cnnlab`` (and what torchrun launches: ``torchrun -m cnnlab train``)."""

import sys

from cnnlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
