"""Execute a notebook top to bottom and save it with its outputs (needs the `notebook` extra:
``pip install -e .[notebook]``).

    python examples/run_notebook.py examples/encrypted_cifar.ipynb
"""
from __future__ import annotations

import sys
import time

import nbclient
import nbformat


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    t = time.time()
    nbclient.NotebookClient(nb, timeout=7200, kernel_name="python3").execute()
    nbformat.write(nb, path)
    print(f"{path}: all {len(nb.cells)} cells ran in {time.time() - t:.0f} s; outputs saved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/encrypted_cifar.ipynb"))
