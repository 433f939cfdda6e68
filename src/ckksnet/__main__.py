"""``python -m ckksnet``: the ``ckksnet`` command line (where the console script is not on PATH)."""
import sys

from ckksnet.deploy.cli import main

if __name__ == "__main__":
    sys.exit(main())
