"""Lowered to :class:`~ckksnet.kernels.ReluStep`: every spelling of ReLU (an activation: its
input range is calibrated, and the step picks its approximation once the bound B is known)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ckksnet.compiler.lowerings.deferred import materialize
from ckksnet.kernels.registry import register
from ckksnet.kernels.relu import ReluStep


@register(nn.ReLU, F.relu, torch.relu, torch.relu_, "method:relu", "method:relu_", activation=True)
def lower_relu(ctx, node, module, args):
    src = materialize(ctx, args[0])
    # the approximation is chosen once the bound B is known (phases.assign_scales / finalize)
    ext = ctx.options.relu_extension  # domain extension L (kernels/relu.py)
    return ctx.add_step(ReluStep(ctx.step_name(node), extension=ext), [src], ctx.new_value(src.layout))
