"""The compiler: a trained torch model -> a :class:`~ckksnet.core.plan.Plan`.

It traces the model with torch.fx (``graph.py``; registered module types are leaves), lowers
each node with the rule registered for its type (``lowerings/``, one file per kernel family),
folds BatchNorm into the convolution before it (``affine.py``), fixes each activation's bound B
from calibration data (``calibrate.py``; times a safety margin, shared along identity shortcuts so
that residual additions need no rescaling), and folds every scale into the linear maps; the
phases in order are ``phases.py``.

Add a kernel for a new module type with :func:`register` (see ``examples/silu_kernel.py``, and
:mod:`ckksnet.compiler.lowerings` for one inside ckksnet).
"""
from __future__ import annotations

from ckksnet.compiler.phases import compile_model as compile
from ckksnet.kernels.registry import LOWERINGS, LoweringContext, register

__all__ = ["compile", "register", "LOWERINGS", "LoweringContext"]
