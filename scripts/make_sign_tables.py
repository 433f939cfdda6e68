"""Regenerate the shipped composite-sign tables (src/ckksnet/approx/tables/*.json).

    .venv/bin/python scripts/make_sign_tables.py                 # every shipped (alpha, eps)
    .venv/bin/python scripts/make_sign_tables.py --alpha 13 --eps-bits 9

Deterministic: the same command writes the same files. Takes about a minute per table.
"""
from __future__ import annotations

import argparse
import sys
import time

from ckksnet.approx.composite import (BUDGET_TABLES, SHIPPED_ALPHAS, SHIPPED_EPS_BITS, bits, design,
                                      measured_sign_error, search, write_table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=int, nargs="*", default=list(SHIPPED_ALPHAS))
    ap.add_argument("--eps-bits", type=int, nargs="*", default=list(SHIPPED_EPS_BITS))
    args = ap.parse_args(argv)
    todo = [(a, e) for e in args.eps_bits for a in args.alpha]
    if args.alpha == list(SHIPPED_ALPHAS) and args.eps_bits == list(SHIPPED_EPS_BITS):
        todo += [k for k in BUDGET_TABLES if k not in todo]  # everything shipped: level-budget tables too
    for alpha, eps_bits in todo:
        t = time.time()
        degrees = BUDGET_TABLES.get((alpha, eps_bits))
        comp = design(2.0 ** -eps_bits, degrees, alpha) if degrees else search(alpha, 2.0 ** -eps_bits)
        measured = measured_sign_error(comp)
        if measured > 2.0 ** -alpha:
            raise SystemExit(f"alpha {alpha}, eps 2^-{eps_bits}: measured error {measured:.3g} "
                             f"exceeds the bound {2.0 ** -alpha:.3g}")
        path = write_table(comp, eps_bits)
        print(f"alpha {alpha:2d} eps 2^-{eps_bits}: degrees {comp.degrees} depth {comp.depth} "
              f"products {comp.products} error 2^-{bits(measured):.2f} ({time.time() - t:.0f} s) -> {path.name}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
