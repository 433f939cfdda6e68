"""The model's torch.fx graph, as the compiler and calibration both read it: tracing (registered
module types are leaves, every node keeps the user's source line), each node's registry key, and
the step name each node's plan step gets (which is also its calibration key).
"""
from __future__ import annotations

import linecache
import re
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

from ckksnet.compiler import user_checks  # what users write: subclasses of registered layers, trace failures
from ckksnet.errors import CompileError
from ckksnet.kernels.registry import ACTIVATION_TYPES, LOWERINGS


class _Tracer(fx.Tracer):
    """Registered module types are leaves; each node records the user's source line that made
    it (``node.meta["source"]``: file, line, code; cheaper than ``record_stack_traces``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a subclass of a registered layer that inherits its forward computes as that layer
        return user_checks.registered_type(m, LOWERINGS, qualname) is not None or super().is_leaf_module(m, qualname)

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        f = sys._getframe(1)
        while f is not None and _TORCH_DIR in f.f_code.co_filename:
            f = f.f_back
        # the first frame outside torch is the forward that made the node; when it is this file's
        # trace(), only torch code ran (nn.Sequential's forward): there is no source line to show
        if f is not None and f.f_code.co_filename != __file__:
            code = linecache.getline(f.f_code.co_filename, f.f_lineno).strip()
            node.meta["source"] = (f.f_code.co_filename, f.f_lineno, code)
        return node


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def trace(model: nn.Module) -> fx.Graph:
    """The model's torch.fx graph; registered module types stay leaves; nodes carry their
    source lines (``node.stack_trace``)."""
    try:
        return _Tracer().trace(model)
    except CompileError:
        raise
    except Exception as exc:  # fx raises plain errors for data-dependent control flow
        raise user_checks.trace_failure(exc) from exc


def lowering_key(node: fx.Node, modules: dict):
    """The registry key of a node: module type, function, or "method:<name>"."""
    if node.op == "call_module":
        return user_checks.registered_type(modules[node.target], LOWERINGS, node.target) or type(modules[node.target])
    if node.op == "call_method":
        return f"method:{node.target}"
    return node.target


def step_names(graph: fx.Graph, modules: dict) -> dict[str, str]:
    """node name -> the name its plan step gets (and its calibration key): the module's name for
    a module called once, ``name@k`` for the k-th call of a module called several times (a shared
    ReLU), the node name for a function or method (made unique against module names)."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    seen: Counter = Counter()
    names = {}
    for n in graph.nodes:
        if n.op == "call_module":
            seen[n.target] += 1
            names[n.name] = n.target if calls[n.target] == 1 else f"{n.target}@{seen[n.target]}"
    taken = set(names.values())
    for n in graph.nodes:
        if n.op in ("call_function", "call_method"):
            names[n.name] = n.name if n.name not in taken else f"{n.name}@fn"
    return names


def activation_nodes(graph: fx.Graph, modules: dict, types=None) -> dict[str, str]:
    """node name -> step name of every node whose kernel is an activation (its input range is
    calibrated); ``types``: only these registry keys (default: every activation key)."""
    names = step_names(graph, modules)
    keys = ACTIVATION_TYPES if types is None else set(types)
    return {n.name: names[n.name] for n in graph.nodes
            if n.op in ("call_module", "call_function", "call_method") and _safe_key(n, modules) in keys}


def _safe_key(node, modules):
    try:
        return lowering_key(node, modules)
    except (KeyError, TypeError):
        return None


def source_line(node: fx.Node) -> str:
    """'file.py:42: code' of the user's line that made ``node`` (empty if unknown)."""
    src = node.meta.get("source")
    if src is None:  # a graph traced elsewhere, with record_stack_traces
        frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', node.stack_trace or "")
        user = [f for f in frames if "/torch/" not in f[0].replace("\\", "/")]
        if not user:
            return ""
        src = user[-1]
    path, line, code = src
    code = str(code).strip()
    return f"{Path(path).name}:{line}" + (f": {code}" if code else "")
