"""``instrument``: trace -> passes -> :class:`Instrumented`; and :class:`Compiler`, the model's other graphs.

No graph surgery here: the steps are named calls into ``trace`` and ``passes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .compiling import built_once, compiling, running
from .errors import FxcamError, TraceError
from .passes import Split, deinplace, insert_taps, split_at
from .passes.attention import attention_nodes, explicit_attention
from .passes.bias import BiasLayer, bias_layers, hidden_bias_layers
from .trace import Layer, eval_copy, layer_list, resolve_layers, torchvision_leaf_modules, trace


class Instrumented(nn.Module):
    """``x -> (output, {layer: activation})``, compiled from the model's fx graph.

    ``graph_module`` is the whole rewritten graph (one GraphModule, exportable); ``split`` is
    the same graph cut at the taps (``prefix``: input -> boundary values, ``suffix``:
    boundary values -> output and activations), which the explainer uses so that the part
    before the first tap runs without autograd.

    Parameters are shared with the original model, not copied. Calling ``.eval()``/``.train()``
    on this module flips the shared submodules, exactly like calling it on the model.
    """

    def __init__(self, graph_module: fx.GraphModule, layers: dict[str, str], model_name: str) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.layers: tuple[str, ...] = tuple(layers)
        self.nodes: dict[str, str] = dict(layers)
        self.model_name = model_name
        self.training = graph_module.training  # the flag only: .train()/.eval() would flip shared modules
        # splits are built on first use; a dict is not a Module, so their graphs stay out of the module tree
        self.splits: dict[tuple[str, ...], Split] = {}

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        if torch.compiler.is_compiling():  # torch.compile traces this: no Python lock in its graph
            return self.graph_module(x)
        with running():
            return self.graph_module(x)

    @property
    def split(self) -> Split:
        """The graph cut at all taps (built once, on first use)."""
        return self._split_at(self.layers)

    def split_for(self, layer: str) -> Split:
        """The graph cut at ``layer``'s tap alone (built once per layer): ``suffix`` re-runs only
        what comes after that layer, whatever the other taps are (AblationCAM)."""
        if layer not in self.nodes:
            raise FxcamError(f"Layer {layer!r} is not tapped in this graph; tapped layers: {list(self.layers)}.")
        return self._split_at((layer,))

    def _split_at(self, layers: tuple[str, ...]) -> Split:
        return built_once(self.splits, layers, lambda: split_at(self.graph_module, [self.nodes[k] for k in layers]))

    def forward_for_grad(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """Like ``forward``, but the prefix runs without recording autograd history and the
        activations at the split are fresh leaves that require grad: only the suffix is
        differentiated by ``torch.autograd.grad(scores, activations)``."""
        split = self.split
        with running(), torch.no_grad():
            values = split.prefix(x)
        at = set(split.at)
        values = [
            v.detach().requires_grad_(True) if name in at and v.is_floating_point() else v
            for name, v in zip(split.boundary, values)
        ]
        with running(), torch.enable_grad():
            return split.suffix(*values)

    def extra_repr(self) -> str:
        return f"model={self.model_name}, layers={list(self.layers)}"


def instrument(
    model: nn.Module,
    layers: Layer | Iterable[Layer],
    *,
    leaf_modules: Sequence[type] = (),
    autowrap_functions: Sequence[Any] = (),
    trace_into: Sequence[type] = (),
) -> Instrumented:
    """Compile ``model`` into a module returning ``(output, {layer: activation})``.

    ``layers``: a qualified module name (``"layer4"``), a node name from
    :func:`fxcam.list_layers` (``"layer4.1.relu_1"``), a submodule object (``model.layer4[-1]``)
    or a list of these. A module name means that module's output. The model is traced,
    in-place ops after the first tap are rewritten out of place (so a tapped activation is
    the layer's true output and has its true gradient), and the taps become graph outputs.
    The model itself is not modified and no hook is registered.

    >>> inst = fxcam.instrument(model.eval(), "layer4")
    >>> logits, acts = inst(x)          # logits equal model(x); acts["layer4"]: (N, 512, 7, 7)
    """
    layers = layer_list(layers)  # a bad argument fails before the trace
    with compiling():
        traced = trace(model, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions, trace_into=trace_into)
        taps = resolve_layers(model, traced, layers)
        gm = _tap(traced.graph_module, taps)
        return Instrumented(gm, taps, type(model).__name__)


def _tap(gm: fx.GraphModule, taps: dict[str, str]) -> fx.GraphModule:
    """De-inplace from the first tapped node on, then insert the taps."""
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    first = min(taps.values(), key=order.__getitem__)
    return insert_taps(deinplace(gm, start=first), taps)


def instrument_attention(
    model: nn.Module, *, leaf_modules: Sequence[type] = (), autowrap_functions: Sequence[Any] = ()
) -> tuple[Instrumented, dict[str, str | None]]:
    """Compile ``model`` with its attention probabilities as taps (for attention methods).

    Fused attention is made explicit first (:func:`fxcam.passes.attention.explicit_attention`),
    then each attention's post-softmax probabilities ``(N, heads, Q, K)`` and the output of the
    block holding it (the attention module's parent) are tapped. Returns the Instrumented graph
    and ``{attention name: block name or None}`` in execution order.
    """
    with compiling():
        traced = trace(model, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions)
        gm = explicit_attention(traced.graph_module)
    probs = attention_nodes(gm)
    if not probs:
        raise FxcamError(
            f"Found no attention in {type(model).__name__}: no softmax feeding a matmul, no "
            f"F.scaled_dot_product_attention and no mask-free nn.MultiheadAttention in its traced graph. Attention "
            f"methods need a transformer; use a gradient method such as 'gradcam' instead."
        )
    blocks = {a: (a.rsplit(".", 1)[0] if "." in a and a.rsplit(".", 1)[0] in traced.node_of else None) for a in probs}
    taps = {**probs, **{b: traced.node_of[b] for b in blocks.values() if b is not None}}
    with compiling():
        return Instrumented(_tap(gm, taps), taps, type(model).__name__), blocks


class Compiler:
    """The model compiled with other taps than the explainer's, each graph built once.

    Driver methods reach these through their :class:`fxcam.probe.Probe`: the model with taps
    at other layers (:meth:`at`), at every bias layer (FullGrad, :meth:`bias`), at every
    attention probability (LeGrad, rollout, :meth:`attention`). The model is only traced,
    never modified.
    """

    def __init__(
        self, model: nn.Module, leaf_modules: Sequence[type] = (), traced: fx.GraphModule | None = None
    ) -> None:
        self.model = model
        self.leaf_modules = tuple(leaf_modules)
        self.traced = traced  # a graph of the model already traced with these leaves (the explainer's), if any
        self.graphs: dict[tuple, Any] = {}

    @property
    def eval_model(self) -> nn.Module:
        """An eval-mode copy of the model sharing its parameters (:func:`fxcam.trace.eval_copy`), built once:
        for the Python parts of driver methods that call model modules directly (LeGrad's head)."""
        return built_once(self.graphs, ("eval",), lambda: eval_copy(self.model))

    def at(self, layers: Iterable[Layer], trace_into: Sequence[type] = ()) -> Instrumented:
        """The model compiled with taps at ``layers`` (``trace_into``: default leaf types to trace through)."""
        key = ("at", tuple(layers), tuple(trace_into))
        def build() -> Instrumented:
            return instrument(self.model, list(key[1]), leaf_modules=self.leaf_modules, trace_into=key[2])

        return built_once(self.graphs, key, build)

    def bias(self) -> tuple[Instrumented, list[BiasLayer]]:
        """FullGrad's graph: every biased convolution and BatchNorm tapped.

        torchvision's default leaf modules that hide bias layers (``Conv2dNormActivation``,
        ``SqueezeExcitation`` in EfficientNet/MobileNet) are traced into; bias layers inside the
        user's or timm's leaf modules stay hidden (a warning counts them)."""
        return built_once(self.graphs, ("bias",), self._bias)

    def _bias(self) -> tuple[Instrumented, list[BiasLayer]]:
        leaves = self.leaf_modules
        gm = self.traced if self.traced is not None else trace(self.model, leaf_modules=leaves).graph_module
        into = tuple(
            t for t in hidden_bias_layers(gm) if t in torchvision_leaf_modules() and not issubclass(t, leaves)
        )
        if into:
            try:
                gm = trace(self.model, leaf_modules=leaves, trace_into=into).graph_module
            except TraceError:
                into = ()
        layers = bias_layers(gm)
        hidden = hidden_bias_layers(gm)
        if hidden:
            warnings.warn(
                f"FullGrad: {sum(hidden.values())} bias layer(s) inside leaf modules "
                f"{sorted(t.__name__ for t in hidden)} are not part of the map (fx does not trace into leaves).",
                stacklevel=5,
            )
        if not layers:
            raise FxcamError(
                f"{type(self.model).__name__} has no convolution or BatchNorm layer with a bias in its graph; "
                f"FullGrad needs bias terms (see fxcam.passes.bias.bias_layers)."
            )
        return self.at([b.name for b in layers], into), layers

    def attention(self) -> tuple[Instrumented, dict[str, str | None]]:
        """The model with explicit attention, its probabilities tapped (see :func:`instrument_attention`)."""
        return built_once(
            self.graphs, ("attention",), lambda: instrument_attention(self.model, leaf_modules=self.leaf_modules)
        )


__all__ = ["Instrumented", "instrument", "instrument_attention", "Compiler"]
