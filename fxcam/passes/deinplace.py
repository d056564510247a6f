"""De-inplace: rewrite in-place operations after the first tap into out-of-place ones.

A tap returns a tensor to the caller. If a later op mutates that tensor in place
(``ReLU(inplace=True)``, ``x.relu_()``, ``x.add_(y)``, ``F.relu(x, inplace=True)``), the
returned activation would silently hold the mutated values and its gradient would belong to
the mutation, not to the layer. Runtime hooks cannot prevent this; a graph rewrite can:

- ``call_method`` ``foo_``  -> ``foo`` (when ``Tensor.foo`` exists);
- ``call_function`` ``torch.foo_`` / ``operator.iadd`` ... -> ``torch.foo`` / ``operator.add``;
- ``call_function`` with an ``inplace`` argument (``F.relu``, ``F.hardswish``, ``F.dropout`` ...)
  -> the same call with ``inplace=False``;
- ``call_module`` of a module whose ``inplace`` attribute is true -> a shallow copy of that
  module with ``inplace=False``, registered on the GraphModule under a new name. The user's
  module is never touched.

Every later use of the mutated value is rewired to the new node, which is what the in-place
op meant. Only nodes after ``start`` are rewritten (the prefix before the first tap cannot
affect the taps and keeps its memory savings). Views that alias a mutated tensor and are
created *before* the mutation are not tracked: vision models do not rely on that.
"""

from __future__ import annotations

import copy
import inspect
import operator

import torch
import torch.fx as fx

from .common import copy_graph_module, finish

_OPERATOR_INPLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.imatmul: operator.matmul,
}

_NOT_INPLACE = {"requires_grad_", "share_memory_", "retain_grad_"}


def _out_of_place_function(target):
    if target in _OPERATOR_INPLACE:
        return _OPERATOR_INPLACE[target]
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_") and name not in _NOT_INPLACE:
        for ns in (torch, torch.nn.functional, torch.special):
            if getattr(ns, name, None) is target and hasattr(ns, name[:-1]):
                return getattr(ns, name[:-1])
    return None


def _inplace_argument(node: fx.Node) -> tuple[tuple, dict] | None:
    """(args, kwargs) with ``inplace=False`` if ``node`` calls a function with a true ``inplace`` argument."""
    if node.kwargs.get("inplace") is True:
        return node.args, {**node.kwargs, "inplace": False}
    try:
        params = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):
        return None
    if "inplace" in params:
        i = params.index("inplace")
        if i < len(node.args) and node.args[i] is True:
            args = list(node.args)
            args[i] = False
            return tuple(args), dict(node.kwargs)
    return None


def _rewire_later_uses(graph: fx.Graph, mutated: fx.Node, new: fx.Node) -> None:
    seen = False
    for node in graph.nodes:
        if node is new:
            seen = True
            continue
        if seen and mutated in node.all_input_nodes:
            node.replace_input_with(mutated, new)


def deinplace(gm: fx.GraphModule, start: str | None = None) -> fx.GraphModule:
    """Return a copy of ``gm`` whose in-place ops after node ``start`` (all, if None) are out-of-place."""
    gm = copy_graph_module(gm)
    graph = gm.graph
    active = start is None
    n_modules = 0
    for node in list(graph.nodes):
        if not active:
            active = node.name == start
            continue
        mutated = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        changed = False
        if node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
            if node.target not in _NOT_INPLACE and hasattr(torch.Tensor, node.target[:-1]):
                node.target = node.target[:-1]
                changed = True
        elif node.op == "call_function":
            replacement = _out_of_place_function(node.target)
            if replacement is not None:
                node.target = replacement
                changed = True
            else:
                fixed = _inplace_argument(node)
                if fixed is not None:
                    node.args, node.kwargs = fixed
                    changed = True
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False) is True:
                clone = copy.copy(module)  # new __dict__; parameters and buffers stay shared
                clone.inplace = False
                while hasattr(gm, name := f"_fxcam_out_of_place_{n_modules}"):  # unique if run twice
                    n_modules += 1
                gm.add_module(name, clone)
                node.target = name
                changed = True
        if changed and mutated is not None:
            _rewire_later_uses(graph, mutated, node)
    return finish(gm)
