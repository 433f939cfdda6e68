"""Polynomial approximations for encrypted activations: the minimax composite sign and ReLU.

``ReluApprox.from_table(alpha, B)`` loads a shipped table (nothing runs Remez at inference);
``composite.search`` / ``composite.design`` generate new ones (``scripts/make_sign_tables.py``).
"""
from ckksnet.approx.composite import (BUDGET_TABLES, DEFAULT_ALPHA, DEFAULT_EPS_BITS, SHIPPED_ALPHAS, SHIPPED_EPS_BITS, CompositeSign,
                                      design, load_table, measured_sign_error, search)
from ckksnet.approx.evaluate import count_products, count_relinearizations, depth_of, eval_odd
from ckksnet.approx.relu import RangeReport, ReluApprox

__all__ = ["BUDGET_TABLES", "DEFAULT_ALPHA", "DEFAULT_EPS_BITS", "SHIPPED_ALPHAS", "SHIPPED_EPS_BITS", "CompositeSign", "design",
           "load_table", "measured_sign_error", "search", "count_products",
           "count_relinearizations", "depth_of", "eval_odd", "RangeReport", "ReluApprox"]
