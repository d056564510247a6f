"""Public entry points: ``instrument`` (trace -> passes -> Instrumented) and ``Explainer``.

No graph surgery here: the steps are named calls into ``trace`` and ``passes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import methods as _methods
from . import ops, reshape as _reshape, targets as _targets
from .errors import FxcamError, TraceError
from .passes import Split, deinplace, insert_taps, split_at
from .passes.attention import attention_nodes, explicit_attention
from .passes.bias import BiasLayer, bias_layers, effective_bias, hidden_bias_layers
from .trace import Layer, _torchvision_leaf_modules, resolve_layers, trace

AUG_FACTORS = (0.9, 1.0, 1.1)  # pytorch-grad-cam's aug_smooth: horizontal flip x these multipliers


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
        self.__dict__["_split"] = None  # kept out of the module tree: no duplicate parameters

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        return self.graph_module(x)

    @property
    def split(self) -> Split:
        """The graph cut at the taps (built once, on first use)."""
        if self.__dict__["_split"] is None:
            self.__dict__["_split"] = split_at(self.graph_module, self.nodes.values())
        return self.__dict__["_split"]

    def split_for(self, layer: str) -> Split:
        """The graph cut at ``layer``'s tap alone (built once per layer): ``suffix`` re-runs only
        what comes after that layer, whatever the other taps are (AblationCAM)."""
        if layer not in self.nodes:
            raise FxcamError(f"Layer {layer!r} is not tapped in this graph; tapped layers: {list(self.layers)}.")
        cache = self.__dict__.setdefault("_splits", {})
        if layer not in cache:
            cache[layer] = split_at(self.graph_module, [self.nodes[layer]])
        return cache[layer]

    def forward_for_grad(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """Like ``forward``, but the prefix runs without recording autograd history and the
        activations at the split are fresh leaves that require grad: only the suffix is
        differentiated by ``torch.autograd.grad(scores, activations)``."""
        split = self.split
        with torch.no_grad():
            values = split.prefix(x)
        at = set(split.at)
        values = [
            v.detach().requires_grad_(True) if name in at and v.is_floating_point() else v
            for name, v in zip(split.boundary, values)
        ]
        with torch.enable_grad():
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
    traced = trace(model, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions, trace_into=trace_into)
    taps = resolve_layers(model, traced, layers)
    order = {n.name: i for i, n in enumerate(traced.graph_module.graph.nodes)}
    first = min(taps.values(), key=order.__getitem__)
    gm = deinplace(traced.graph_module, start=first)
    gm = insert_taps(gm, taps)
    return Instrumented(gm, taps, type(model).__name__)


def instrument_attention(
    model: nn.Module, *, leaf_modules: Sequence[type] = (), autowrap_functions: Sequence[Any] = ()
) -> tuple[Instrumented, dict[str, str | None]]:
    """Compile ``model`` with its attention probabilities as taps (for attention methods).

    Fused attention is made explicit first (:func:`fxcam.passes.attention.explicit_attention`),
    then each attention's post-softmax probabilities ``(N, heads, Q, K)`` and the output of the
    block holding it (the attention module's parent) are tapped. Returns the Instrumented graph
    and ``{attention name: block name or None}`` in execution order.
    """
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
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    gm = insert_taps(deinplace(gm, start=min(taps.values(), key=order.__getitem__)), taps)
    return Instrumented(gm, taps, type(model).__name__), blocks


@dataclass
class Explanation:
    """Everything one explainer call computed. ``cams``: ``(N, H, W)`` in [0, 1]."""

    cams: Tensor
    output: Any
    per_layer: dict[str, Tensor]  # each layer's normalized map at the output size
    class_idx: Tensor | None  # explained class per image (None for callable targets)
    scores: Tensor  # the explained score per image


class Probe:
    """What a driver method may use: the batch, its clean pass, and the compiled graph.

    The clean pass (``output``, ``scores``, ``class_idx``, ``reshapes``, ``acts``) runs on first
    use: a method that computes the output of ``x`` itself (one pass with autograd on) hands it
    over with :meth:`record` and the batch is not run twice.
    """

    def __init__(self, explainer: Explainer, x: Tensor, targets: Any) -> None:
        self.explainer = explainer
        self.instrumented = explainer.instrumented
        self.x = x
        self.targets = targets
        self.progress = explainer.progress
        self._output: Any = None
        self._resolved: tuple[Tensor, Tensor | None] | None = None
        self._reshapes: dict[str, Any] | None = None
        self._acts: dict[str, Tensor] | None = None

    def _clean_pass(self) -> None:
        output, raw = self.explainer._forward(self.x)
        if self._output is None:
            self._output = output
        self._reshapes = self.explainer._reshapes(raw, self.x)
        self._acts = {k: self._reshapes[k](v).float() for k, v in raw.items()}

    @property
    def output(self) -> Any:
        """The model output for ``x`` (no autograd history)."""
        if self._output is None:
            self._clean_pass()
        return self._output

    @property
    def scores(self) -> Tensor:
        """The explained score per image ``(N,)``, from ``targets``."""
        if self._resolved is None:
            self._resolved = _targets.resolve(self.targets, self.output)
        return self._resolved[0]

    @property
    def class_idx(self) -> Tensor | None:
        """The explained class per image ``(N,)`` (None for callable targets)."""
        if self._resolved is None:
            self._resolved = _targets.resolve(self.targets, self.output)
        return self._resolved[1]

    @property
    def reshapes(self) -> dict[str, Any]:
        if self._reshapes is None:
            self._clean_pass()
        return self._reshapes

    @property
    def acts(self) -> dict[str, Tensor]:
        """The clean activations ``{layer: (N, C, *S) float32}``."""
        if self._acts is None:
            self._clean_pass()
        return self._acts

    def record(self, output: Any, acts: dict[str, Tensor] | None = None) -> None:
        """Hand over the output of ``x`` a method computed itself (detached), so no clean pass runs for it;
        with ``acts``, the raw tapped activations of that same pass, no clean pass runs at all."""
        self._output = output.detach() if isinstance(output, Tensor) else output
        self._resolved = None
        if acts is not None:
            raw = {k: v.detach() for k, v in acts.items()}
            self._reshapes = self.explainer._reshapes(raw, self.x)
            self._acts = {k: self._reshapes[k](v).float() for k, v in raw.items()}

    def repeat_targets(self, times: int) -> Any:
        """Targets for ``times`` stacked copies of the batch (clean classes when none were given)."""
        base = self.class_idx if self.class_idx is not None else self.targets
        return _targets.repeat(base, times)

    def gradients(self, x: Tensor, targets: Any) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
        """``(output, acts, grads)`` for batch ``x``, acts and grads reshaped to ``(N, C, *S)`` float32."""
        return self.explainer._gradients(x, targets, self._reshapes)[:3]

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """``(output, acts)`` for batch ``x`` under inference mode, acts reshaped and float32."""
        out, raw = self.explainer._forward(x)
        return out, {k: self.reshapes[k](v).float() for k, v in raw.items()}

    def resolve(self, targets: Any, output: Any) -> tuple[Tensor, Tensor | None]:
        """``(scores (N,), class_idx (N,) or None)`` of ``targets`` on ``output`` (see :func:`fxcam.targets.resolve`)."""
        return _targets.resolve(targets, output)

    def differentiable(self, x: Tensor | None = None, targets: Any = None) -> tuple[Any, Tensor, dict[str, Tensor]]:
        """``(output, scores, acts)`` of one pass over ``x`` (default: the probe's batch and targets) with
        autograd on: ``acts`` are the raw tapped tensors, leaves of the differentiated suffix, so a
        method can differentiate several times (``create_graph=True``, Hessian-vector products).
        Reshape what it computes with ``probe.reshapes[layer]``."""
        if x is None:
            x, targets = self.x, self.targets
        output, acts = self.instrumented.forward_for_grad(x)
        with torch.enable_grad():
            scores, _ = _targets.resolve(targets, output)
        if x is self.x:
            self.record(output)
            if self._reshapes is None:
                self._reshapes = self.explainer._reshapes(acts, x)
        return output, scores, acts

    def instrument(self, layers: Iterable[Layer], trace_into: Sequence[type] = ()) -> Instrumented:
        """The explainer's model compiled with taps at ``layers`` (built once per explainer and layer set)."""
        return self.explainer._instrumented_at(layers, trace_into)

    def bias_gradients(self) -> BiasGradients:
        """FullGrad's inputs for the batch: every biased conv/BatchNorm layer of the model
        (:func:`fxcam.passes.bias.bias_layers`) tapped in one compiled graph (built once per
        explainer), one forward with autograd on and one ``torch.autograd.grad`` call for the
        input and all layer outputs."""
        inst, layers = self.explainer._bias_instrumented()
        x = self.x.detach().requires_grad_(True)
        with torch.enable_grad():
            output, acts = inst(x)
            scores, _ = _targets.resolve(self.targets, output)
            outs = [acts[b.name] for b in layers]
            grads = torch.autograd.grad(scores.sum(), [x, *outs], allow_unused=True)
        self.record(output)
        with torch.no_grad():
            modules = dict(inst.graph_module.named_modules())
            biases = {b.name: effective_bias(modules[b.module]) for b in layers}
        layer_grads = {
            b.name: (g if g is not None else torch.zeros_like(o)).detach()
            for b, o, g in zip(layers, outs, grads[1:])
        }
        input_grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return BiasGradients(self.x, input_grad.detach(), biases, layer_grads)

    def attention(self) -> AttentionPass:
        """One pass of the batch through the model with explicit, tapped attention (LeGrad, rollout):
        see :class:`AttentionPass`. Autograd records from the first attention on."""
        from .layers import token_head  # local: keeps start-up light

        explainer = self.explainer
        inst, blocks = explainer._attention_instrumented()
        output, taps = inst.forward_for_grad(self.x)
        with torch.enable_grad():
            scores, _ = _targets.resolve(self.targets, output)
        self.record(output)
        model, spec, size = explainer.model, explainer.reshape, tuple(self.x.shape[2:])
        prefix = spec.prefix_tokens if isinstance(spec, _reshape.vit) else None
        if prefix is None:
            prefix = _reshape.prefix_tokens(model) or 0

        def to_map(values: Tensor) -> Tensor:
            tokens = values.unsqueeze(-1)
            return _reshape.resolve(spec, model, "attention keys", tokens, size)(tokens)

        return AttentionPass(
            output=output.detach() if isinstance(output, Tensor) else output,
            scores=scores,
            probs={a: taps[a] for a in blocks},
            tokens={a: taps[b] for a, b in blocks.items() if b is not None},
            blocks=dict(blocks),
            head=token_head(model),
            prefix_tokens=prefix,
            to_map=to_map,
            batch=self.x.shape[0],
        )


@dataclass
class BiasGradients:
    """Input and bias gradients of the explained score (FullGrad, Srinivas & Fleuret 2019).

    ``input_grad``: ``(N, C_in, *S_in)``; ``biases[layer]``: the layer's effective bias ``(C,)``
    (BatchNorm folded with its running statistics); ``grads[layer]``: the score's gradient with
    respect to that layer's output ``(N, C, *S)``.
    """

    x: Tensor
    input_grad: Tensor
    biases: dict[str, Tensor]
    grads: dict[str, Tensor]


@dataclass
class AttentionPass:
    """The attention of one batch (LeGrad, gradient-weighted rollout), from :meth:`Probe.attention`.

    - ``probs``: ``{attention: (B, heads, Q, K)}`` post-softmax probabilities in execution order,
      inside the autograd graph: ``torch.autograd.grad(scores.sum(), list(probs.values()))``
      gives their gradients. ``B`` is the batch for global attention, batch x windows for Swin.
    - ``tokens``: ``{attention: (N, T, C)}`` the output of the block holding that attention;
      ``blocks``: ``{attention: block name}`` (the attention module's parent, None if untapped).
    - ``scores``: the explained score per image ``(N,)``, differentiable; ``output`` detached.
    - ``head``: ``tokens (N, T, C) -> logits``: the model's final norm and classifier applied to
      the mean token (None when fxcam does not know the model's head).
    - ``prefix_tokens``: class, distillation and register tokens before the patches.
    - ``to_map``: ``(N, T) -> (N, 1, h, w)``: per-token values onto the patch grid, prefix
      tokens dropped (the explainer's ``reshape``, "auto" by default).
    """

    output: Any
    scores: Tensor
    probs: dict[str, Tensor]
    tokens: dict[str, Tensor]
    blocks: dict[str, str | None]
    head: Any
    prefix_tokens: int
    to_map: Any
    batch: int

    def check_global(self, method: str) -> None:
        """Raise unless every attention is global self-attention over one token sequence per image."""
        lengths = {p.shape[-1] for p in self.probs.values()}
        for name, p in self.probs.items():
            if p.ndim != 4 or p.shape[0] != self.batch or p.shape[-2] != p.shape[-1] or len(lengths) != 1:
                raise FxcamError(
                    f"Method '{method}' needs global self-attention over one token sequence per image (ViT, DeiT); "
                    f"attention '{name}' has probabilities of shape {tuple(p.shape)} for a batch of {self.batch} "
                    f"(window or partitioned attention, as in Swin or MaxViT). Use a gradient method such as "
                    f"'gradcam' for this model."
                )


class Explainer:
    """Class activation maps for ``model`` at ``layers`` with ``method``.

    ``explainer(x, targets=None, *, size=None) -> (N, H, W)`` maps in [0, 1] on ``x``'s device,
    in ``x``'s floating dtype (computed in float32).

    - ``targets``: None (each image's top-1 class), an int (one class for all), a list (one int
      or callable per image), or a callable ``(output_row) -> scalar`` (see :mod:`fxcam.targets`).
    - ``size``: output ``(H, W)``; defaults to the input's spatial size.
    - ``fuse``: how maps of several layers combine: ``"mean"`` (pytorch-grad-cam) or ``"max"``
      (torchcam). Each layer's map is ReLU'd, upsampled and normalized first.
    - ``eigen_smooth``: replace the channel sum by the first principal component of the
      contributions (pytorch-grad-cam's option); ``eigen_sign`` fixes the component's sign.
    - ``aug_smooth``: average the maps of 6 augmented copies (horizontal flip x brightness
      0.9/1.0/1.1), run as one batch, flipped back before averaging (pytorch-grad-cam's option).
    - ``reshape``: ``"auto"``, ``None`` or a transform from :mod:`fxcam.reshape`.
    - ``progress``: show a progress bar in long driver methods.
    - ``**method_options``: passed to the method (``fxcam.methods.get(name).options``).

    The model is not modified. If it is in training mode a warning says so: BatchNorm would
    update its running statistics and dropout would make maps random.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layer | Iterable[Layer] | None = None,
        method: str = "gradcam",
        *,
        reshape: Any = "auto",
        fuse: str = "mean",
        eigen_smooth: bool = False,
        eigen_sign: str = "max_abs",
        aug_smooth: bool = False,
        progress: bool = False,
        leaf_modules: Sequence[type] = (),
        **method_options: Any,
    ) -> None:
        self.method = _methods.get(method)
        self.method.check_options(method_options)
        if fuse not in ops.FUSIONS:
            raise FxcamError(f"fuse={fuse!r} is not valid; choose one of {list(ops.FUSIONS)}.")
        if eigen_sign not in ops.SIGNS:
            raise FxcamError(f"eigen_sign={eigen_sign!r} is not valid; choose one of {list(ops.SIGNS)}.")
        if layers is None:
            layers = default_layers(model)
        self.model = model
        self.instrumented = instrument(model, layers, leaf_modules=leaf_modules)
        self.layers = self.instrumented.layers
        self.reshape = reshape
        self.fuse = fuse
        self.eigen_smooth = eigen_smooth
        self.eigen_sign = eigen_sign
        self.aug_smooth = aug_smooth
        self.progress = progress
        self.leaf_modules = tuple(leaf_modules)
        self.method_options = method_options

    # -- the graph runs -------------------------------------------------------------------
    def _instrumented_at(self, layers: Iterable[Layer], trace_into: Sequence[type] = ()) -> Instrumented:
        """The model compiled with taps at ``layers``, cached on the explainer (for driver methods)."""
        layers, trace_into = tuple(layers), tuple(trace_into)
        cache = self.__dict__.setdefault("_instrumented_cache", {})
        if (layers, trace_into) not in cache:
            cache[layers, trace_into] = instrument(
                self.model, list(layers), leaf_modules=getattr(self, "leaf_modules", ()), trace_into=trace_into
            )
        return cache[layers, trace_into]

    def _bias_instrumented(self) -> tuple[Instrumented, list[BiasLayer]]:
        """FullGrad's compiled graph: every bias layer tapped (built once).

        torchvision's default leaf modules that hide bias layers (``Conv2dNormActivation``,
        ``SqueezeExcitation`` in EfficientNet/MobileNet) are traced into; bias layers inside the
        user's or timm's leaf modules stay hidden (a warning counts them)."""
        if "_bias" not in self.__dict__:
            leaves = tuple(getattr(self, "leaf_modules", ()))
            gm = self.instrumented.graph_module
            into = tuple(
                t for t in hidden_bias_layers(gm) if t in _torchvision_leaf_modules() and not issubclass(t, leaves)
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
                    stacklevel=4,
                )
            if not layers:
                raise FxcamError(
                    f"{self.instrumented.model_name} has no convolution or BatchNorm layer with a bias in its graph; "
                    f"FullGrad needs bias terms (see fxcam.passes.bias.bias_layers)."
                )
            self.__dict__["_bias"] = (self._instrumented_at([b.name for b in layers], into), layers)
        return self.__dict__["_bias"]

    def _attention_instrumented(self) -> tuple[Instrumented, dict[str, str | None]]:
        """The model compiled with its attention probabilities tapped (built once; attention methods)."""
        if "_attention" not in self.__dict__:
            leaves = getattr(self, "leaf_modules", ())
            self.__dict__["_attention"] = instrument_attention(self.model, leaf_modules=leaves)
        return self.__dict__["_attention"]

    def _forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        with torch.inference_mode():
            return self.instrumented(x)

    def _reshapes(self, acts: dict[str, Tensor], x: Tensor) -> dict[str, Any]:
        return {k: _reshape.resolve(self.reshape, self.model, k, v, tuple(x.shape[2:])) for k, v in acts.items()}

    def _gradients(self, x: Tensor, targets: Any, reshapes: dict[str, Any] | None = None):
        output, acts = self.instrumented.forward_for_grad(x)
        scores, class_idx = _targets.resolve(targets, output)
        needed = [acts[k] for k in self.layers]
        if scores.requires_grad:
            grads = torch.autograd.grad(scores.sum(), needed, allow_unused=True)
        else:  # the output does not depend on any tap
            grads = (None,) * len(needed)
        missing = [k for k, g in zip(self.layers, grads) if g is None]
        if missing:
            raise FxcamError(
                f"The explained score does not depend on layer(s) {missing}: their gradient is undefined. "
                f"Pick layers before the model's output (see fxcam.list_layers(model))."
            )
        if reshapes is None:
            reshapes = self._reshapes(acts, x)
        acts_r = {k: reshapes[k](acts[k].detach()).float() for k in self.layers}
        grads_r = {k: reshapes[k](g).float() for k, g in zip(self.layers, grads)}
        output = output.detach() if isinstance(output, Tensor) else output
        return output, acts_r, grads_r, scores.detach(), class_idx

    # -- maps -------------------------------------------------------------------------------
    def _contributions(self, x: Tensor, targets: Any):
        kind = self.method.kind
        if kind == "gradient":
            output, acts, grads, scores, class_idx = self._gradients(x, targets)
            contrib = {k: self.method.fn(acts[k], grads[k], **self.method_options) for k in self.layers}
        elif kind == "activation":
            output, raw = self._forward(x)
            reshapes = self._reshapes(raw, x)
            scores, class_idx = _targets.resolve(targets, output)
            contrib = {k: self.method.fn(reshapes[k](raw[k]).float(), **self.method_options) for k in self.layers}
        else:
            probe = Probe(self, x, targets)
            contrib = self.method.fn(probe, **self.method_options)
            output, scores, class_idx = probe.output, probe.scores, probe.class_idx
        return output, contrib, scores, class_idx

    def _maps(self, contrib: dict[str, Tensor], size: tuple[int, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        per_layer = {}
        for k in self.layers:
            c = contrib[k]
            if self.method.project or self.eigen_smooth:
                cam = ops.first_principal_component(c, sign=self.eigen_sign)
            else:
                cam = c.sum(1)
            # pytorch-grad-cam's order: ReLU, normalize at the layer's resolution, upsample
            cam = ops.normalize(torch.relu(cam))
            if self.method.layer_scale is not None and len(self.layers) > 1:
                cam = self.method.layer_scale(cam, **self.method_options)  # torchcam: before resizing
            per_layer[k] = ops.upsample(cam, size)
        fused = ops.fuse(list(per_layer.values()), self.fuse)
        return fused, {k: ops.normalize(v) for k, v in per_layer.items()}

    def explain(self, x: Tensor, targets: Any = None, *, size: Sequence[int] | None = None) -> Explanation:
        """Maps, the model output, the explained classes and scores for batch ``x``."""
        conv2d = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if not isinstance(x, Tensor) or x.ndim < 3 or (x.ndim == 3 and conv2d):
            raise FxcamError(
                f"x must be a batched image tensor (N, C, H, W); got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}. Add a batch dim with x[None]."
            )
        if self.model.training:
            warnings.warn(
                f"{type(self.model).__name__} is in training mode: BatchNorm updates its running statistics and "
                f"dropout makes maps random. Call model.eval() before explaining.",
                stacklevel=2,
            )
        size = tuple(size) if size is not None else tuple(x.shape[2:])
        if self.aug_smooth:
            return self._explain_augmented(x, targets, size)
        output, contrib, scores, class_idx = self._contributions(x, targets)
        cams, per_layer = self._maps(contrib, size)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return Explanation(cams.to(dtype), output, {k: v.to(dtype) for k, v in per_layer.items()}, class_idx, scores)

    def _explain_augmented(self, x: Tensor, targets: Any, size: tuple[int, ...]) -> Explanation:
        copies = [torch.flip(x, dims=(-1,)) * f if flip else x * f for flip in (False, True) for f in AUG_FACTORS]
        n_aug = len(copies)
        output, contrib, scores, class_idx = self._contributions(torch.cat(copies), _targets.repeat(targets, n_aug))
        cams, per_layer = self._maps(contrib, size)

        def undo(m: Tensor) -> Tensor:
            m = m.unflatten(0, (n_aug, -1)).clone()
            half = n_aug // 2
            m[half:] = torch.flip(m[half:], dims=(-1,))
            return m.mean(0)

        n = x.shape[0]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        clean = slice(AUG_FACTORS.index(1.0) * n, (AUG_FACTORS.index(1.0) + 1) * n)  # unflipped, factor 1.0
        out_first = output[clean] if isinstance(output, Tensor) else output
        idx = class_idx[clean] if class_idx is not None else None
        return Explanation(
            undo(cams).to(dtype), out_first, {k: undo(v).to(dtype) for k, v in per_layer.items()}, idx, scores[clean]
        )

    def __call__(self, x: Tensor, targets: Any = None, *, size: Sequence[int] | None = None) -> Tensor:
        return self.explain(x, targets, size=size).cams

    def to_graph(
        self,
        example_input: Tensor | None = None,
        *,
        targets: str = "top1",
        size: Sequence[int] | None = None,
        dynamic_batch: bool = True,
    ) -> fx.GraphModule:
        """This explainer as one GraphModule ``x -> (logits, cams)`` (``targets="input"``: ``(x, class_idx)``):
        forward, the suffix's backward, weighting, upsampling and normalization, exportable with
        :func:`fxcam.export` and compilable with ``torch.compile``. See :func:`fxcam.export.explainer_graph`."""
        from .export import explainer_graph  # local: export is an optional edge of the package

        return explainer_graph(self, example_input, targets=targets, size=size, dynamic_batch=dynamic_batch)

    def __repr__(self) -> str:
        return f"Explainer(method={self.method.name!r}, layers={list(self.layers)}, reshape={self.reshape!r})"


def default_layers(model: nn.Module) -> list[str]:
    """A sensible target layer: the last spatial feature map (CNNs) or the last block's first norm (ViTs)."""
    from .layers import default_layer  # local: keeps start-up light

    return [default_layer(model)]


def explain(
    model: nn.Module,
    x: Tensor,
    method: str = "gradcam",
    layers: Layer | Iterable[Layer] | None = None,
    targets: Any = None,
    *,
    size: Sequence[int] | None = None,
    **options: Any,
) -> Tensor:
    """One call: ``Explainer(model, layers, method, **options)(x, targets, size=size)``."""
    return Explainer(model, layers, method, **options)(x, targets, size=size)
