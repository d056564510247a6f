"""The contract between the explainer and driver methods: :class:`Probe`.

A driver method (``fn(probe: Probe, **options) -> {layer: contributions}``) runs the compiled
graph itself: noisy copies, masked inputs, ablated activations, other taps. Everything it may
use is here, typed, and built from an :class:`~fxcam.instrumented.Instrumented` graph, a
:class:`~fxcam.instrumented.Compiler` for the model's other graphs, the batch and its targets.
A method never reaches into the explainer.

No call-order dependence: every value of the probe (the clean output, scores, classes and
activations of the batch) is a function of the batch and its targets. It is computed once,
by whichever pass needs it first; a method that runs a pass over the batch itself
(:meth:`Probe.differentiable`, :meth:`Probe.bias_gradients`, :meth:`Probe.attention`,
:meth:`Probe.clean_split_pass`) supplies the probe's clean output from that pass, so the batch
is not run twice, and reading a value before or after gives the same value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import reshape as _reshape
from . import targets as _targets
from .errors import FxcamError
from .instrumented import Compiler, Instrumented
from .layers import token_head
from .passes.bias import effective_bias
from .trace import Layer

Reshape = Callable[[Tensor], Tensor]


def detach(output: Any) -> Any:
    """``output`` without autograd history (a tensor detached; structures are returned as they are)."""
    return output.detach() if isinstance(output, Tensor) else output


class Probe:
    """What a driver method may use: the batch, its clean pass, and the compiled graphs.

    - ``x`` ``(N, C, *S)``, ``targets`` (as given to the explainer), ``layers`` (the explained
      layers), ``instrumented`` (the graph tapped at them), ``model`` (read-only: layouts and
      heads), ``progress`` (whether the user asked for progress bars).
    - The clean pass, computed on first use: ``output``, ``scores`` ``(N,)``, ``class_idx``
      ``(N,)`` or None, ``acts`` ``{layer: (N, C, *S) float32}``, ``reshapes``.
    - Passes over other batches: :meth:`forward`, :meth:`gradients`, :meth:`differentiable`.
    - Other graphs: :meth:`compiled`, :meth:`bias_gradients`, :meth:`attention`.
    """

    def __init__(
        self,
        instrumented: Instrumented,
        compiler: Compiler,
        x: Tensor,
        targets: Any,
        *,
        reshape: Any = "auto",
        progress: bool = False,
    ) -> None:
        self.instrumented = instrumented
        self.compiler = compiler
        self.model: nn.Module = compiler.model
        self.layers: tuple[str, ...] = instrumented.layers
        self.x = x
        self.targets = targets
        self.reshape = reshape
        self.progress = progress
        self._output: Any = None
        self._resolved: tuple[Tensor, Tensor | None] | None = None
        self._reshapes: dict[tuple[int, ...], dict[str, Reshape]] = {}  # by input size
        self._acts: dict[str, Tensor] | None = None

    # -- the clean pass (memoized, order-free) -------------------------------------------------
    def _supply(self, output: Any, raw: dict[str, Tensor] | None = None) -> None:
        """Values of the batch computed by some pass over it: kept if not known yet (they are equal)."""
        if self._output is None:
            self._output = detach(output)
        if raw is not None and self._acts is None:
            raw = {k: raw[k].detach() for k in self.layers}
            self._acts = {k: self.reshapes_for(raw, self.x)[k](v).float() for k, v in raw.items()}

    def _clean_pass(self) -> None:
        with torch.inference_mode():
            output, raw = self.instrumented(self.x)
        self._supply(output, raw)

    @property
    def output(self) -> Any:
        """The model output for ``x`` (no autograd history)."""
        if self._output is None:
            self._clean_pass()
        return self._output

    @property
    def scores(self) -> Tensor:
        """The explained score per image ``(N,)``, from ``targets``."""
        return self._resolve()[0]

    @property
    def class_idx(self) -> Tensor | None:
        """The explained class per image ``(N,)`` (None for callable targets)."""
        return self._resolve()[1]

    def _resolve(self) -> tuple[Tensor, Tensor | None]:
        if self._resolved is None:
            self._resolved = _targets.resolve(self.targets, self.output)
        return self._resolved

    @property
    def acts(self) -> dict[str, Tensor]:
        """The clean activations ``{layer: (N, C, *S) float32}``."""
        if self._acts is None:
            self._clean_pass()
        return self._acts

    @property
    def reshapes(self) -> dict[str, Reshape]:
        """``{layer: raw activation -> (N, C, *S)}`` for ``x``'s size (see :func:`fxcam.reshape.resolve`)."""
        if tuple(self.x.shape[2:]) not in self._reshapes:
            self._clean_pass()
        return self._reshapes[tuple(self.x.shape[2:])]

    def reshapes_for(self, raw: dict[str, Tensor], x: Tensor) -> dict[str, Reshape]:
        """The reshapes of activations ``raw`` of batch ``x``, resolved once per input size."""
        size = tuple(x.shape[2:])
        if size not in self._reshapes:
            self._reshapes[size] = _reshape.resolve_all(self.reshape, self.model, raw, size)
        return self._reshapes[size]

    def clean_split_pass(self, layer: str) -> list[Any]:
        """The boundary values of ``x`` at ``layer``'s split (``instrumented.split_for(layer)``), under
        inference mode; the clean output and activations come from the same pass."""
        split = self.instrumented.split_for(layer)
        with torch.inference_mode():
            values = split.prefix(self.x)
            if self._acts is None or self._output is None:
                self._supply(*split.suffix(*values))
        return values

    # -- targets --------------------------------------------------------------------------------
    def resolve(self, targets: Any, output: Any) -> tuple[Tensor, Tensor | None]:
        """``(scores (N,), class_idx (N,) or None)`` of ``targets`` on ``output`` (:func:`fxcam.targets.resolve`)."""
        return _targets.resolve(targets, output)

    def repeat_targets(self, times: int) -> Any:
        """Targets for ``times`` stacked copies of the batch (the clean classes when none were given)."""
        base = self.class_idx if self.class_idx is not None else self.targets
        return _targets.repeat(base, times)

    def row_targets(self, index: Tensor) -> Any:
        """Targets for a batch whose row ``r`` is a perturbed copy of image ``index[r]``."""
        return _targets.rows(self.class_idx if self.class_idx is not None else self.targets, index)

    def row_scores(self, output: Any, index: Tensor) -> Tensor:
        """Float scores of rows that are copies of images ``index`` (see :meth:`row_targets`)."""
        return self.resolve(self.row_targets(index), output)[0].float()

    # -- passes over other batches ----------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """``(output, acts)`` for batch ``x`` under inference mode, acts reshaped and float32."""
        with torch.inference_mode():
            out, raw = self.instrumented(x)
        return out, {k: self.reshapes_for(raw, x)[k](v).float() for k, v in raw.items()}

    def gradients(self, x: Tensor, targets: Any) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
        """``(output, acts, grads)`` for batch ``x``, acts and grads reshaped to ``(N, C, *S)`` float32."""
        g = layer_gradients(self.instrumented, x, targets)
        if x is self.x and targets is self.targets:
            self._supply(g.output, g.raw_acts)
        reshapes = self.reshapes_for(g.raw_acts, x)
        acts = {k: reshapes[k](v).float() for k, v in g.raw_acts.items()}
        grads = {k: reshapes[k](v).float() for k, v in g.raw_grads.items()}
        return g.output, acts, grads

    def differentiable(self, x: Tensor | None = None, targets: Any = None) -> tuple[Any, Tensor, dict[str, Tensor]]:
        """``(output, scores, acts)`` of one pass over ``x`` (default: the probe's batch and targets) with
        autograd on: ``acts`` are the raw tapped tensors, leaves of the differentiated suffix, so a
        method can differentiate several times (``create_graph=True``, Hessian-vector products).
        Reshape what it computes with ``probe.reshapes[layer]``."""
        own = x is None
        if own:
            x, targets = self.x, self.targets
        output, acts = self.instrumented.forward_for_grad(x)
        with torch.enable_grad():
            scores, _ = _targets.resolve(targets, output)
        if own:
            self._supply(output)
            self.reshapes_for(acts, x)
        return output, scores, acts

    # -- other graphs -----------------------------------------------------------------------------
    def compiled(self, layers: Iterable[Layer], trace_into: Sequence[type] = ()) -> Instrumented:
        """The model compiled with taps at ``layers`` (built once per explainer and layer set)."""
        return self.compiler.at(layers, trace_into)

    def bias_gradients(self) -> BiasGradients:
        """FullGrad's inputs for the batch: every biased conv/BatchNorm layer of the model
        (:func:`fxcam.passes.bias.bias_layers`) tapped in one compiled graph (built once per
        explainer), one forward with autograd on and one ``torch.autograd.grad`` call for the
        input and all layer outputs."""
        inst, layers = self.compiler.bias()
        x = self.x.detach().requires_grad_(True)
        with torch.enable_grad():
            output, acts = inst(x)
            scores, _ = _targets.resolve(self.targets, output)
            outs = [acts[b.name] for b in layers]
            grads = torch.autograd.grad(scores.sum(), [x, *outs], allow_unused=True)
        self._supply(output)
        with torch.no_grad():
            modules = dict(inst.graph_module.named_modules())
            biases = {b.name: effective_bias(modules[b.module]) for b in layers}
        layer_grads = {
            b.name: (g if g is not None else torch.zeros_like(o)).detach() for b, o, g in zip(layers, outs, grads[1:])
        }
        input_grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return BiasGradients(self.x, input_grad.detach(), biases, layer_grads)

    def attention(self) -> AttentionPass:
        """One pass of the batch through the model with explicit, tapped attention (LeGrad, rollout):
        see :class:`AttentionPass`. Autograd records from the first attention on."""
        inst, blocks = self.compiler.attention()
        output, taps = inst.forward_for_grad(self.x)
        with torch.enable_grad():
            scores, _ = _targets.resolve(self.targets, output)
        self._supply(output)
        model, spec, size = self.model, self.reshape, tuple(self.x.shape[2:])
        prefix = spec.prefix_tokens if isinstance(spec, _reshape.vit) else None
        if prefix is None:
            prefix = _reshape.prefix_tokens(model) or 0

        def to_map(values: Tensor) -> Tensor:
            tokens = values.unsqueeze(-1)
            return _reshape.resolve(spec, model, "attention keys", tokens, size)(tokens)

        return AttentionPass(
            output=detach(output),
            scores=scores,
            probs={a: taps[a] for a in blocks},
            tokens={a: taps[b] for a, b in blocks.items() if b is not None},
            blocks=dict(blocks),
            head=token_head(self.compiler.eval_model),  # eval semantics (head dropout off) in any mode
            prefix_tokens=prefix,
            to_map=to_map,
            batch=self.x.shape[0],
        )


@dataclass
class LayerGradients:
    """One pass with autograd over the suffix: the output, the scores, and the raw tapped activations
    and their gradients ``{layer: tensor}`` (detached, in the layer's own layout)."""

    output: Any
    scores: Tensor
    class_idx: Tensor | None
    raw_acts: dict[str, Tensor]
    raw_grads: dict[str, Tensor]


def layer_gradients(
    instrumented: Instrumented,
    x: Tensor,
    targets: Any,
    resolve: Callable[[Any, Any], tuple[Tensor, Tensor | None]] = _targets.resolve,
) -> LayerGradients:
    """The gradient of the explained score with respect to every tapped activation.

    The prefix runs without autograd (:meth:`Instrumented.forward_for_grad`); one
    ``torch.autograd.grad`` call differentiates the suffix. ``resolve(targets, output)`` gives
    ``(scores, class_idx)`` (:func:`fxcam.targets.resolve`; the explainer graph passes the
    traceable :func:`fxcam.targets.resolve_indices`). A layer the score does not depend on is an error.
    """
    layers = instrumented.layers
    output, acts = instrumented.forward_for_grad(x)
    with torch.enable_grad():
        scores, class_idx = resolve(targets, output)
    needed = [acts[k] for k in layers]
    if scores.requires_grad:
        grads = torch.autograd.grad(scores.sum(), needed, allow_unused=True)
    else:  # the output does not depend on any tap
        grads = (None,) * len(needed)
    missing = [k for k, g in zip(layers, grads) if g is None]
    if missing:
        raise FxcamError(
            f"The explained score does not depend on layer(s) {missing}: their gradient is undefined. "
            f"Pick layers before the model's output (see fxcam.list_layers(model))."
        )
    raw_acts = {k: acts[k].detach() for k in layers}
    return LayerGradients(detach(output), scores.detach(), class_idx, raw_acts, dict(zip(layers, grads)))


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


__all__ = ["Probe", "LayerGradients", "layer_gradients", "BiasGradients", "AttentionPass", "detach"]
