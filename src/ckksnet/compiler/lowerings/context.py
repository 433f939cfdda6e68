"""The context every lowering rule receives while :func:`ckksnet.compiler.phases.lower` walks the
traced graph: the plan under construction and the options (:class:`~ckksnet.kernels.LoweringContext`),
plus what the traced graph's sample run saw (shapes, constants), step names and error messages
that name the node and its source line.
"""
from __future__ import annotations

import torch.fx as fx

from ckksnet.compiler.lowerings.deferred import materialize
from ckksnet.core.options import CompileOptions
from ckksnet.core.plan import Value
from ckksnet.errors import CompileError
from ckksnet.kernels.registry import LoweringContext


class GraphContext(LoweringContext):
    """The lowering context of :func:`ckksnet.compiler.phases.lower`: the plan, the options, and
    what the traced graph's sample run saw.

    ``sample``: node name -> its value on the sample batch (tensors keep the batch axis first);
    ``acts``: names of nodes that carry activations (tensors computed from the input; every
    other node is a constant); ``names``: node name -> step name; ``where``: node -> its source
    line; ``env``: node name -> lowered :class:`Value`."""

    def __init__(self, plan, slots: int, options: CompileOptions, sample: dict, acts: set, names: dict, where,
                 modules: dict, client_normalize: str | None = None):
        super().__init__(plan, slots, options)
        self.sample, self.acts, self.names, self.where = sample, acts, names, where
        self.modules = modules
        self.client_normalize = client_normalize
        self.env: dict[str, Value] = {}
        self.cache: dict = {}
        self.used: set[str] = set()

    # ------------------------------------------------------------ reading the graph
    def is_act(self, arg) -> bool:
        return isinstance(arg, fx.Node) and arg.name in self.acts

    def value(self, arg) -> Value:
        if not self.is_act(arg):
            raise CompileError(f"expected an activation, got the constant {arg!r}")
        return self.env[arg.name]

    def shape(self, arg) -> tuple:
        """Per-sample shape of an activation node (the batch axis dropped)."""
        return tuple(self.sample[arg.name].shape[1:])

    def const(self, arg):
        """``arg`` with every node replaced by its sample value; activations are refused."""
        def get(n: fx.Node):
            if n.name in self.acts:
                raise CompileError(f"{n.name} is an activation where a constant is expected")
            return self.sample[n.name]
        return fx.node.map_arg(arg, get)

    def arg(self, node: fx.Node, i: int, name: str, default=None):
        """Positional argument ``i`` or keyword ``name`` of ``node``, resolved to a constant."""
        if len(node.args) > i:
            return self.const(node.args[i])
        return self.const(node.kwargs.get(name, default))

    def step_name(self, node: fx.Node) -> str:
        return self.names.get(node.name, node.name)

    def unique(self, name: str) -> str:
        out, k = name, 2
        while out in self.used:
            out, k = f"{name}@{k}", k + 1
        self.used.add(out)
        return out

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.modules.get(node.target)).__name__})"
        elif node.op == "call_method":
            what = f"method .{node.target}() (node {node.name})"
        else:
            what = f"function {getattr(node.target, '__name__', node.target)!r} (node {node.name})"
        loc = self.where(node)
        return what + (f" at {loc}" if loc else "")

    def fail(self, node: fx.Node, message: str) -> CompileError:
        return CompileError(f"{self.describe(node)}: {message}")

    def materialize(self, value: Value, layout=None) -> Value:
        return materialize(self, value, layout)
