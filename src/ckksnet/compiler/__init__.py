"""The compiler: a trained torch model -> a :class:`~ckksnet.core.plan.Plan`.

It traces the model with torch.fx (registered module types are leaves), lowers each node with
the kernel registered for its type, folds BatchNorm into the convolution before it, fixes each
ReLU's bound B from calibration data (times a safety margin, shared along identity shortcuts so
that residual additions need no rescaling), and folds every scale into the linear maps.

Add a kernel for a new module type with :func:`register` (see ``examples/silu_kernel.py``).
"""
from __future__ import annotations

from ckksnet.compiler.phases import compile_model as compile
from ckksnet.kernels.registry import LOWERINGS, LoweringContext, register

__all__ = ["compile", "register", "LOWERINGS", "LoweringContext"]
