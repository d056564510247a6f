"""Split a graph at its taps into a prefix (input -> boundary values) and a suffix (-> output).

The suffix is everything that depends on a split node: exactly the part of the network a
gradient with respect to the taps has to go through, and the only part a perturbation
method (AblationCAM) has to re-run. The prefix is everything else. Values the prefix
computes and the suffix still needs (a residual branch that skips over the tap, the input
itself) travel across the boundary with the split nodes, so::

    suffix(*prefix(x)) == gm(x)

holds for any split point, including a tap in the middle of a residual block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx as fx

from ..errors import LayerNotFoundError
from .common import finish


@dataclass(frozen=True)
class Split:
    """``prefix(x) -> tuple`` of the boundary values; ``suffix(*values) -> gm's output``."""

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    boundary: tuple[str, ...]  # node names of the values crossing the split, in argument order
    at: tuple[str, ...]  # the split nodes (a subset of ``boundary`` unless one depends on another)


def _descendants(graph: fx.Graph, roots: set[str]) -> set[str]:
    out: set[str] = set()
    for node in graph.nodes:  # topological order: inputs before users
        if node.op == "output":
            continue
        if any(i.name in roots or i.name in out for i in node.all_input_nodes):
            out.add(node.name)
    return out


_INPLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor",
                      "ilshift", "irshift", "imatmul"}


def mutates(node: fx.Node) -> bool:
    """Whether dead-code elimination must keep ``node`` although its result is unused: an impure node
    (torch.fx's rule), an in-place method or function (``out.add_(x)``, ``torch.relu_``), or an
    in-place operator (``x += y``), whose effect is on its input, not its result."""
    if node.is_impure():
        return True
    if node.op not in ("call_method", "call_function"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_OPERATORS


def split_at(gm: fx.GraphModule, at: Iterable[str]) -> Split:
    """Split ``gm`` so that the nodes named in ``at`` (and what skips over them) form the boundary."""
    at = tuple(dict.fromkeys(at))
    graph = gm.graph
    names = {n.name for n in graph.nodes}
    unknown = [a for a in at if a not in names]
    if unknown:
        raise LayerNotFoundError(f"split_at: no node named {unknown} in the graph.")
    after = _descendants(graph, set(at))
    output = next(n for n in graph.nodes if n.op == "output")

    boundary: dict[str, None] = {}
    for node in [*graph.nodes]:
        if node.name in after or node is output:
            for i in node.all_input_nodes:
                if i.name not in after and i.op != "get_attr":
                    boundary[i.name] = None
    for a in at:  # a split node the output does not use still crosses (its gradient is then zero)
        if a not in after:
            boundary.setdefault(a, None)
    boundary_names = tuple(boundary)

    # prefix: every node not after the split, returning the boundary values
    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.name in after or node is output:
            continue
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    by_name = {n.name: n for n in graph.nodes}
    prefix_graph.output(tuple(env[by_name[b]] for b in boundary_names))
    prefix = fx.GraphModule(gm, prefix_graph, f"{type(gm).__name__}Prefix")
    prefix.graph.eliminate_dead_code(is_impure_node=mutates)
    prefix = finish(prefix)

    # suffix: placeholders for the boundary, then every node after the split
    suffix_graph = fx.Graph()
    env = {}
    for b in boundary_names:
        env[by_name[b]] = suffix_graph.placeholder(b)
        env[by_name[b]].meta = dict(by_name[b].meta)
    for node in graph.nodes:
        if node.op == "get_attr" and any(u.name in after or u is output for u in node.users):
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
        elif node.name in after:
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    suffix_graph.output(fx.map_arg(output.args[0], lambda n: env[n]))
    suffix = finish(fx.GraphModule(gm, suffix_graph, f"{type(gm).__name__}Suffix"))
    return Split(prefix, suffix, boundary_names, at)
