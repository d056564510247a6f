"""The one eager pipeline: gradients -> contributions -> maps, and aug_smooth with its undo.

Both the :class:`~fxcam.Explainer` and the explainer-graph builder (:mod:`fxcam.graph`, which
records this very code with ``make_fx``) run :func:`run`; nothing else computes maps, so the
two cannot drift apart.

::

    run(recipe, x, targets, size)
      ├─ aug_smooth: augment(x) (6 copies, one batch) ─▶ run once ─▶ undo(maps), clean rows of the rest
      └─ contributions(): gradient methods: layer_gradients() (prefix without autograd, one
         torch.autograd.grad); activation methods: one forward; driver methods: fn(Probe)
         ─▶ to_maps(): channel sum or first principal component, ReLU, normalize at the
            layer's resolution, (layer_scale), upsample, fuse; per-layer maps normalized
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import ops
from . import reshape as _reshape
from . import targets as _targets
from .instrumented import Compiler, Instrumented
from .methods import Method
from .probe import Probe, layer_gradients

AUG_FACTORS = (0.9, 1.0, 1.1)  # pytorch-grad-cam's aug_smooth: horizontal flip x these multipliers
Resolve = Callable[[Any, Any], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an explainer's maps, whether run eagerly or traced into a graph.

    ``model`` is read only (layouts, heads); ``instrumented`` is its graph tapped at the
    explained layers; ``compiler`` builds its other graphs for driver methods.
    """

    model: nn.Module
    instrumented: Instrumented
    compiler: Compiler
    method: Method
    method_options: dict[str, Any] = field(default_factory=dict)
    reshape: Any = "auto"
    fuse: str = "mean"
    eigen_smooth: bool = False
    eigen_sign: str = "max_abs"
    aug_smooth: bool = False
    progress: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        return self.instrumented.layers


@dataclass
class Explanation:
    """Everything one explainer call computed. ``cams``: ``(N, H, W)`` in [0, 1]."""

    cams: Tensor
    output: Any
    per_layer: dict[str, Tensor]  # each layer's normalized map at the output size
    class_idx: Tensor | None  # explained class per image (None for callable targets)
    scores: Tensor  # the explained score per image


def resolve_reshapes(recipe: Recipe, raw: dict[str, Tensor], x: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
    """``{layer: raw activation -> (N, C, *S)}`` for batch ``x`` (see :func:`fxcam.reshape.resolve`)."""
    return _reshape.resolve_all(recipe.reshape, recipe.model, raw, tuple(x.shape[2:]))


def contributions(
    recipe: Recipe,
    x: Tensor,
    targets: Any,
    *,
    resolve: Resolve = _targets.resolve,
    reshapes: dict[str, Callable] | None = None,
    tracing: bool = False,
) -> tuple[Any, dict[str, Tensor], Tensor, Tensor | None]:
    """``(output, {layer: contributions (N, C, *S)}, scores, class_idx)`` of the recipe's method on ``x``.

    ``reshapes``: fixed per-layer transforms (the graph builder resolves them once); default:
    resolved from this batch's activations. ``tracing``: running under ``make_fx`` (no
    inference mode, no driver methods)."""
    method, options, layers = recipe.method, recipe.method_options, recipe.layers
    if method.kind == "gradient":
        g = layer_gradients(recipe.instrumented, x, targets, resolve)
        rs = reshapes or resolve_reshapes(recipe, g.raw_acts, x)
        contrib = {k: method.fn(rs[k](g.raw_acts[k]).float(), rs[k](g.raw_grads[k]).float(), **options) for k in layers}
        return g.output, contrib, g.scores, g.class_idx
    if method.kind == "activation":
        with torch.no_grad() if tracing else torch.inference_mode():
            output, raw = recipe.instrumented(x)
        rs = reshapes or resolve_reshapes(recipe, raw, x)
        scores, class_idx = resolve(targets, output)
        return output, {k: method.fn(rs[k](raw[k]).float(), **options) for k in layers}, scores, class_idx
    probe = Probe(recipe.instrumented, recipe.compiler, x, targets, reshape=recipe.reshape, progress=recipe.progress)
    contrib = method.fn(probe, **options)
    return probe.output, contrib, probe.scores, probe.class_idx


def to_maps(recipe: Recipe, contrib: dict[str, Tensor], size: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """Contributions -> ``(fused map (N, *size), {layer: normalized map (N, *size)})``.

    Per layer: the channel sum (or the first principal component for projecting methods and
    ``eigen_smooth``), ReLU, normalization at the layer's resolution (pytorch-grad-cam's order),
    the method's ``layer_scale`` when several layers are fused (torchcam: before resizing),
    upsampling; then ``fuse``.
    """
    method, size = recipe.method, tuple(size)
    per_layer = {}
    for k in recipe.layers:
        c = contrib[k]
        if c.ndim > 2 and math.prod(c.shape[2:]) == 1:
            warnings.warn(
                f"Layer '{k}' gives a 1x1 map at this input size (contributions {tuple(c.shape)}): a map over one "
                f"position is constant, so its normalized map is all zero. Explain an earlier layer with a spatial "
                f"map (fxcam.layer_shapes(model, size) lists each layer's output shape).",
                stacklevel=5,  # the caller of Explainer.__call__
            )
        if method.project or recipe.eigen_smooth:
            cam = ops.first_principal_component(c, sign=recipe.eigen_sign)
        else:
            cam = c.sum(1)
        cam = ops.normalize(torch.relu(cam))
        if method.layer_scale is not None and len(recipe.layers) > 1:
            cam = method.layer_scale(cam, **recipe.method_options)
        per_layer[k] = ops.upsample(cam, size)
    fused = ops.fuse(list(per_layer.values()), recipe.fuse)
    return fused, {k: ops.normalize(v) for k, v in per_layer.items()}


def augment(x: Tensor) -> Tensor:
    """aug_smooth's batch: ``x`` times each factor, then flipped horizontally times each factor (6N rows)."""
    return torch.cat([torch.flip(x, dims=(-1,)) * f if flip else x * f for flip in (False, True) for f in AUG_FACTORS])


def undo(maps: Tensor) -> Tensor:
    """The mean over the copies of :func:`augment`, the flipped ones flipped back: ``(6N, ...) -> (N, ...)``."""
    n_aug = 2 * len(AUG_FACTORS)
    m = maps.unflatten(0, (n_aug, -1))
    half = n_aug // 2
    return torch.cat([m[:half], torch.flip(m[half:], dims=(-1,))]).mean(0)


def clean_rows(n: Any) -> slice:
    """The rows of :func:`augment`'s batch that are ``x`` itself (unflipped, factor 1.0)."""
    i = AUG_FACTORS.index(1.0)
    return slice(i * n, (i + 1) * n)


def run(
    recipe: Recipe,
    x: Tensor,
    targets: Any,
    size: Sequence[int],
    *,
    resolve: Resolve = _targets.resolve,
    reshapes: dict[str, Callable] | None = None,
    tracing: bool = False,
) -> Explanation:
    """The maps of batch ``x`` for ``targets``: the whole pipeline (see the module docstring).

    With ``aug_smooth`` the output, scores and classes are those of the clean copy (``x`` itself).
    Maps are returned in ``x``'s floating dtype (computed in float32)."""
    kw = {"resolve": resolve, "reshapes": reshapes, "tracing": tracing}
    if recipe.aug_smooth:
        copies = _targets.repeat(targets, 2 * len(AUG_FACTORS))
        output, contrib, scores, class_idx = contributions(recipe, augment(x), copies, **kw)
        cams, per_layer = to_maps(recipe, contrib, size)
        clean = clean_rows(x.shape[0])
        cams, per_layer = undo(cams), {k: undo(v) for k, v in per_layer.items()}
        output = output[clean] if isinstance(output, Tensor) else output
        scores, class_idx = scores[clean], (class_idx[clean] if class_idx is not None else None)
    else:
        output, contrib, scores, class_idx = contributions(recipe, x, targets, **kw)
        cams, per_layer = to_maps(recipe, contrib, size)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return Explanation(cams.to(dtype), output, {k: v.to(dtype) for k, v in per_layer.items()}, class_idx, scores)


__all__ = ["Recipe", "Explanation", "run", "contributions", "to_maps", "augment", "undo", "clean_rows", "AUG_FACTORS"]
