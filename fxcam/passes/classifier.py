"""Finding a model's classifier in its graph (analyses: they read the graph, never rewrite it).

- :func:`classifier_weight`: the ``(classes, C)`` weight of the ``Linear`` fed by the global
  average pool of a tapped map (CAM, Zhou et al. 2016), found by walking the graph forward
  from the tap through reshapes and dropouts only.
- :func:`last_linear`: the last ``nn.Linear`` called in a graph that takes ``C`` features
  (Deep Feature Factorization's concept classifier).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FxcamError

_TRANSPARENT_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous"}
_TRANSPARENT_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_TRANSPARENT_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, F.dropout, F.dropout1d, F.dropout2d}
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}


def _is_one(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(modules[node.target]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"'{node.name}' ({target})"


def _transparent(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _TRANSPARENT_MODULES)
    if node.op == "call_method":
        return node.target in _TRANSPARENT_METHODS
    return node.op == "call_function" and node.target in _TRANSPARENT_FUNCTIONS


def _global_average_pool(node: fx.Node, modules: dict[str, nn.Module], ndim: int) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, _ADAPTIVE_POOLS) and _is_one(m.output_size)
    if node.op == "call_function" and node.target in _ADAPTIVE_POOL_FUNCTIONS:
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        return _is_one(size)
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if any(not isinstance(d, int) for d in dims):
            return False
        return {d % ndim for d in dims} == set(range(2, ndim))
    return False


def _single_user(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if u.op != "output"]


def classifier_weight(gm: fx.GraphModule, tap: str, ndim: int, layer: str) -> Tensor:
    """The weight ``(classes, C)`` of the Linear fed by the global average pool of node ``tap``.

    Walks forward from the tap: only reshapes/flattens/dropouts, one global average pool
    (``AdaptiveAvgPool*d(1)``, ``F.adaptive_avg_pool*d(x, 1)`` or a mean over every spatial
    dim), then a ``Linear`` whose output is the model's output. Anything else is an error that
    names the node in the way.
    """
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0][0]  # instrumented graphs return (model output, {layer: activation})
    node = next(n for n in gm.graph.nodes if n.name == tap)
    how = (
        "CAM (Zhou et al. 2016) needs the tapped map to go through a global average pool into the model's final "
        "Linear layer"
    )
    pooled = False
    while True:
        users = _single_user(node)
        if len(users) != 1:
            names = ", ".join(_describe(u, modules) for u in users) or "nothing but the taps"
            raise FxcamError(
                f"{how}; after '{layer}', {_describe(node, modules)} feeds {names}. Tap the map that is pooled "
                f"(see fxcam.list_layers(model)) or use method='gradcam', which equals CAM on such models."
            )
        node = users[0]
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            linear = modules[node.target].weight
            break
        weight = node.args[1] if node.op == "call_function" and len(node.args) > 1 else None
        if node.target is F.linear and isinstance(weight, fx.Node) and weight.op == "get_attr":
            linear = gm.get_parameter(weight.target)
            break
        if not pooled and _global_average_pool(node, modules, ndim):
            pooled = True
        elif not _transparent(node, modules):
            raise FxcamError(
                f"{how}; after '{layer}' the graph applies {_describe(node, modules)}, which is not a global average "
                f"pool, a reshape or a dropout. Tap the map that is pooled (see fxcam.list_layers(model)) or use "
                f"method='gradcam', which equals CAM on such models."
            )
    if not pooled:
        raise FxcamError(f"{how}; '{layer}' reaches {_describe(node, modules)} without a global average pool.")
    last = node
    while last is not result:
        users = _single_user(last)
        if len(users) != 1 or not _transparent(users[0], modules):
            raise FxcamError(
                f"{how}; the output of {_describe(node, modules)} is not the model's output (it goes on to "
                f"{', '.join(_describe(u, modules) for u in users) or 'nothing'}), so its rows are not class scores."
            )
        last = users[0]
    return linear


def last_linear(gm: fx.GraphModule, in_features: int) -> nn.Linear | None:
    """The last ``nn.Linear`` called in ``gm`` if it takes ``in_features`` features, else None."""
    found = None
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                found = module
    if found is not None and found.in_features == in_features:
        return found
    return None


__all__ = ["classifier_weight", "last_linear"]
