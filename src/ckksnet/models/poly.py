"""The bundled ResNet family with polynomial activations (issue 37).

A checkpoint's ``config["activation"]`` names the activation of every ReLU position:
``"relu"`` (the default, and what a config without the key means) or ``"polyD"`` (a
:class:`ckksnet.nn.PolyAct` of degree D = 2, 3 or 4, its coefficients and bound in the state
dict). A kind this version does not know is refused by name (:func:`activation_degree`).
"""
from __future__ import annotations

import torch.nn as nn

from ckksnet.nn import PolyAct

ACTIVATIONS = ("relu", "poly2", "poly3", "poly4")  #: the kinds of activation a config may name
DEFAULT_BOUND = 4.0  #: a fresh PolyAct's bound B (batch-normalised inputs rarely pass 4)


def activation_degree(kind: str) -> int | None:
    """None for "relu", D for "polyD"; ValueError naming an unknown kind."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation {kind!r} is a kind this version of ckksnet does not know "
                         f"(known: {', '.join(ACTIVATIONS)})")
    return None if kind == "relu" else int(kind[4:])


def relu_names(model: nn.Module) -> list[str]:
    """Names of the model's nn.ReLU modules, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def to_polynomial(model: nn.Module, degree: int, bounds: dict | None = None,
                  default: float = DEFAULT_BOUND) -> list[str]:
    """Replace every nn.ReLU module of ``model`` (in place) by the least-squares polynomial of
    ReLU of ``degree`` on [-B, B], B = ``bounds[name]`` (a calibrated max |input|) or ``default``;
    records ``activation`` in the model's config (if it has one). Returns the names replaced."""
    names = relu_names(model)
    for name in names:
        bound = float((bounds or {}).get(name, default))
        replace_module(model, name, PolyAct.from_relu(bound, degree))
    if isinstance(getattr(model, "config", None), dict):
        model.config["activation"] = f"poly{degree}"
    return names
