"""Tracing: torch.fx with qualified node names, leaf-module policy, layer discovery.

The tracer is torchvision's ``NodePathTracer`` (the one behind
``torchvision.models.feature_extraction``): every node gets the user-facing name
``get_graph_node_names`` prints (``layer4.1.relu_1``, ``blocks.11.norm1``). fxcam adds one
thing on top: it remembers which node each non-leaf module returned, so a module name
(``"layer4"``, ``"layer4.1"``) means that module's output.

Names are stored on the nodes themselves (``node.meta["fxcam_name"]``), so they survive
every pass that copies the graph.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import math
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch.fx as fx
import torchvision
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from .compiling import compiling
from .errors import FxcamTypeError, LayerNotFoundError, TraceError, closest

NAME = "fxcam_name"  # node.meta key holding the qualified, user-facing name

Layer = str | nn.Module


def torchvision_leaf_modules() -> list[type]:
    """torchvision.ops modules fx should not trace into (RoI ops, deformable conv, FPN ...).

    torchvision's feature extractor makes *every* torchvision.ops module a leaf; fxcam traces
    into the plain containers (``Conv2dNormActivation``, ``MLP``, ``SqueezeExcitation``,
    ``Permute``) so the BatchNorm and activation inside MobileNet/EfficientNet blocks can be
    tapped, and the in-place activations inside them can be rewritten.
    """
    traceable = (nn.Sequential, torchvision.ops.SqueezeExcitation, torchvision.ops.Permute)
    return [
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and not issubclass(obj, traceable)
    ]


def _timm_policy(model: nn.Module) -> tuple[list[type], list[Any]]:
    """timm registers its no-trace modules and functions where they are defined; reuse that registry."""
    if "timm" not in sys.modules and not type(model).__module__.startswith("timm"):
        return [], []
    try:
        from timm.layers import _fx as timm_fx  # noqa: PLC0415 - optional
    except Exception:  # pragma: no cover - timm absent or changed
        return [], []
    return list(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


class _Tracer(NodePathTracer):
    """NodePathTracer that also records the output node of every non-leaf module call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module_outputs: dict[str, list[Any]] = {}
        self.failed_in: str | None = None  # innermost module whose forward raised while tracing
        self._counts: dict[str, int] = {}
        self._taken: set[str] = set()

    def _get_node_qualname(self, module_qualname: str, node: fx.Node) -> str:
        """torchvision's naming, with two fixes: a module call is named by its exact module path
        (torchvision strips a trailing ``_<digits>``, so ViT's ``ln_1`` became ``ln`` and ``ln_2``
        became ``ln_1``), and repeats are counted in a dict instead of rescanning every earlier
        name (quadratic on large models). A repeated call gets ``_1``, ``_2``, ... as before."""
        if node.op == "call_module":
            base = module_qualname
        else:
            op = re.sub(r"_[0-9]+$", "", str(node))
            base = f"{module_qualname}.{op}" if module_qualname else op
        k = self._counts.get(base, 0)
        name = base if k == 0 else f"{base}_{k}"
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._counts[base] = k + 1
        self._taken.add(name)
        return name

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        path = self.path_of_module(m)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = path
            raise
        self.module_outputs.setdefault(path, []).append(out)
        return out


@dataclass
class Traced:
    """A traced model: the GraphModule and how user-facing names map to its nodes."""

    graph_module: fx.GraphModule
    node_of: dict[str, str]  # qualified name -> fx node name (nodes and module outputs)
    layer_names: list[str]  # every accepted name, in execution order
    multi_call: dict[str, list[str]] = field(default_factory=dict)  # module called more than once -> node names
    non_tensor: dict[str, str] = field(default_factory=dict)  # module returning a non-tensor -> why


def _trace_error(model: nn.Module, tracer: _Tracer, exc: Exception) -> TraceError:
    path = tracer.failed_in or ""
    where = path or "<top level>"
    sub = model.get_submodule(path) if path else model
    # the deepest frame outside torch: the user's model code that fx could not trace
    line = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/torch/" not in frame.filename and "/torchvision/models/feature_extraction" not in frame.filename:
            code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
            line = f" at {frame.filename}:{frame.lineno} `{code}`"
            break
    return TraceError(
        f"torch.fx could not trace {type(model).__name__} inside module '{where}' ({type(sub).__name__}){line}: "
        f"{type(exc).__name__}: {exc}. fx records operations symbolically, so data-dependent Python control flow "
        f"(if/for on tensor values, .item(), shape asserts) cannot be traced. Mark the failing module as a leaf so fx "
        f"calls it as one opaque node: fxcam.instrument(model, layers, leaf_modules=[{type(sub).__name__}]) "
        f"(layers inside a leaf cannot be tapped, its output can)."
    )


def eval_copy(model: nn.Module) -> nn.Module:
    """The model's module tree with every module copied and in eval mode; parameters and buffers shared.

    Each module is a shallow copy (``copy.copy``) whose registries (parameters, buffers,
    submodules, hooks: every dict and set in its ``__dict__``) are copies of the original's,
    with ``training=False``. Tensors are the model's own, so the copy sees later weight updates;
    nothing done to the copy reaches the model: setting a flag, registering a tensor (torch.fx
    stores a forward's tensor constants as ``_tensor_constantN`` attributes of the traced root)
    or running BatchNorm in eval mode, which reads the running statistics and never updates
    them. A module shared by several parents stays shared in the copy.
    """
    memo: dict[int, nn.Module] = {}

    def copy_module(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        c = copy.copy(m)
        memo[id(m)] = c
        c.__dict__ = {k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in m.__dict__.items()}
        c.__dict__["_modules"] = {k: None if v is None else copy_module(v) for k, v in m._modules.items()}
        c.__dict__["training"] = False
        return c

    return copy_module(model)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Sequence[type] = (),
    autowrap_functions: Sequence[Any] = (),
    trace_into: Sequence[type] = (),
) -> Traced:
    """Trace ``model`` with torch.fx and name every node as torchvision's feature extraction does.

    ``model`` is not modified: the tracer reads an eval-mode copy of its module tree
    (:func:`eval_copy`), and the GraphModule built from it references (does not copy) its
    parameters and buffers. So the graph always computes what the model computes in eval mode,
    whatever the model's ``training`` flag: BatchNorm uses (and never updates) its running
    statistics, dropout is off, training-only branches (inception_v3's auxiliary head) are not
    traced.
    ``trace_into``: module types of the default leaf policy to trace through anyway (e.g.
    torchvision's ``Conv2dNormActivation``, to reach the BatchNorm inside it).
    """
    if not isinstance(model, nn.Module):
        raise FxcamTypeError(f"fxcam traces torch.nn.Module objects; got {type(model).__name__}.")
    timm_leaves, timm_fns = _timm_policy(model)
    leaves = [t for t in {*(torchvision_leaf_modules()), *timm_leaves, *leaf_modules} if t not in set(trace_into)]
    for leaf in leaf_modules:
        if not (inspect.isclass(leaf) and issubclass(leaf, nn.Module)):
            raise FxcamTypeError(f"leaf_modules takes nn.Module subclasses (e.g. [MyBlock]); got {leaf!r}.")
    tracer = _Tracer(
        leaf_modules=leaves,
        autowrap_modules=(math, torchvision.ops),
        autowrap_functions=tuple({*timm_fns, *autowrap_functions}),
    )
    with compiling():
        try:
            graph = tracer.trace(eval_copy(model))
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise _trace_error(model, tracer, exc) from exc
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)

    node_of: dict[str, str] = {}
    order: dict[str, int] = {}
    for i, node in enumerate(gm.graph.nodes):
        order[node.name] = i
        qualname = tracer.node_to_qualname.get(node)
        if qualname is not None and node.op not in ("placeholder", "output"):
            node.meta[NAME] = qualname
            node_of[qualname] = node.name

    multi_call: dict[str, list[str]] = {}
    non_tensor: dict[str, str] = {}
    module_names: list[tuple[str, str]] = []
    for path, outs in tracer.module_outputs.items():
        if not path or path in node_of:  # the root, or a leaf module (already a node)
            if path in node_of and len(outs) > 1:
                multi_call[path] = [node_of[path]] + [
                    node_of[f"{path}_{k}"] for k in range(1, len(outs)) if f"{path}_{k}" in node_of
                ]
            continue
        if not all(isinstance(o, fx.Proxy) for o in outs):
            non_tensor[path] = f"module '{path}' returns {type(outs[0]).__name__}, not a single tensor"
            continue
        nodes = [o.node.name for o in outs]
        if len(set(nodes)) > 1:
            multi_call[path] = nodes
            continue
        node_of[path] = nodes[0]
        module_names.append((path, nodes[0]))

    # every name, in execution order; a module name right after the node it returns
    # (node position, 0 for the node itself / 1 for a module, deeper modules first, name)
    modules = dict(module_names)
    ranked = [(order[n], q in modules, -q.count("."), q) for q, n in node_of.items()]
    layer_names = [q for *_, q in sorted(ranked)]
    return Traced(gm, node_of, layer_names, multi_call, non_tensor)


def list_layers(model: nn.Module, **trace_options: Any) -> list[str]:
    """Every layer name ``fxcam.instrument`` accepts for ``model``, in execution order.

    Node names are torchvision's qualified node names (``layer4.1.relu_1``); non-leaf
    module names (``layer4``, ``layer4.1``) stand right after the node they return.

    >>> fxcam.list_layers(torchvision.models.resnet18())[-6:]
    ['layer4.1.relu_1', 'layer4.1', 'layer4', 'avgpool', 'flatten', 'fc']
    """
    return trace(model, **trace_options).layer_names


def _name_of_module(model: nn.Module, module: nn.Module) -> str:
    for name, sub in model.named_modules(remove_duplicate=False):
        if sub is module:
            return name
    raise LayerNotFoundError(
        f"The module object {type(module).__name__} passed as a layer is not a submodule of "
        f"{type(model).__name__}. Pass a module of this model (e.g. model.layer4[-1]) or a name from "
        f"fxcam.list_layers(model)."
    )


def layer_list(layers: Layer | Iterable[Layer]) -> list[Layer]:
    """``layers`` as a list of names and modules; a clear error for anything else (checked before tracing)."""
    if isinstance(layers, (str, nn.Module)):
        return [layers]
    if isinstance(layers, Iterable) and not isinstance(layers, (bytes, dict)):
        layers = list(layers)
        if all(isinstance(layer, (str, nn.Module)) for layer in layers):
            return layers
    raise FxcamTypeError(
        f"layers={layers!r} is not a layer: pass a layer name (str, e.g. 'layer4'), a submodule of the model "
        f"(e.g. model.layer4), or a list of them. fxcam.list_layers(model) prints every valid name."
    )


def resolve_layers(model: nn.Module, traced: Traced, layers: Layer | Iterable[Layer]) -> dict[str, str]:
    """Map each requested layer to its fx node: ``{user-facing name: node name}``, in the order asked."""
    layers = layer_list(layers)
    if not layers:
        raise LayerNotFoundError("No layer was given. Pass a name from fxcam.list_layers(model), e.g. 'layer4'.")
    resolved: dict[str, str] = {}
    for layer in layers:
        if isinstance(layer, nn.Module):
            name = _name_of_module(model, layer)
        elif isinstance(layer, str):
            name = layer
        else:
            raise FxcamTypeError(
                f"A layer is a name (str) or a submodule (nn.Module); got {type(layer).__name__}: {layer!r}."
            )
        if name in traced.multi_call and (isinstance(layer, nn.Module) or name not in traced.node_of):
            names = [
                n.meta.get(NAME, n.name) for n in traced.graph_module.graph.nodes if n.name in traced.multi_call[name]
            ]
            raise LayerNotFoundError(
                f"Module '{name}' is called {len(traced.multi_call[name])} times in the forward pass, so its output is "
                f"ambiguous. Pass the node of the call you mean: {names}."
            )
        if name in traced.non_tensor:
            raise LayerNotFoundError(
                f"Layer '{name}': {traced.non_tensor[name]}. Pick one of the nodes inside it "
                f"(see fxcam.list_layers(model))."
            )
        if name not in traced.node_of:
            hint = closest(name, traced.layer_names)
            raise LayerNotFoundError(
                f"Unknown layer '{name}' for {type(model).__name__}. Closest valid names: {hint}. "
                f"fxcam.list_layers(model) prints all {len(traced.layer_names)} names."
            )
        resolved[name] = traced.node_of[name]
    return resolved


def node_by_name(gm: fx.GraphModule, name: str) -> fx.Node:
    for node in gm.graph.nodes:
        if node.name == name:
            return node
    raise LayerNotFoundError(f"No node named {name!r} in the graph; see fxcam.list_layers(model).")

