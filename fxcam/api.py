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
from .errors import FxcamError
from .passes import Split, deinplace, insert_taps, split_at
from .trace import Layer, resolve_layers, trace

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
        self.__dict__["_split"] = None  # kept out of the module tree: no duplicate parameters

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        return self.graph_module(x)

    @property
    def split(self) -> Split:
        """The graph cut at the taps (built once, on first use)."""
        if self.__dict__["_split"] is None:
            self.__dict__["_split"] = split_at(self.graph_module, self.nodes.values())
        return self.__dict__["_split"]

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
    traced = trace(model, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions)
    taps = resolve_layers(model, traced, layers)
    order = {n.name: i for i, n in enumerate(traced.graph_module.graph.nodes)}
    first = min(taps.values(), key=order.__getitem__)
    gm = deinplace(traced.graph_module, start=first)
    gm = insert_taps(gm, taps)
    return Instrumented(gm, taps, type(model).__name__)


@dataclass
class Explanation:
    """Everything one explainer call computed. ``cams``: ``(N, H, W)`` in [0, 1]."""

    cams: Tensor
    output: Any
    per_layer: dict[str, Tensor]  # each layer's normalized map at the output size
    class_idx: Tensor | None  # explained class per image (None for callable targets)
    scores: Tensor  # the explained score per image


class Probe:
    """What a driver method may use: the batch, its clean pass, and the compiled graph."""

    def __init__(self, explainer: Explainer, x: Tensor, targets: Any) -> None:
        self.explainer = explainer
        self.instrumented = explainer.instrumented
        self.x = x
        self.targets = targets
        self.progress = explainer.progress
        self.output, raw = explainer._forward(x)
        self.scores, self.class_idx = _targets.resolve(targets, self.output)
        self.reshapes = explainer._reshapes(raw, x)
        self.acts = {k: self.reshapes[k](v).float() for k, v in raw.items()}

    def repeat_targets(self, times: int) -> Any:
        """Targets for ``times`` stacked copies of the batch (clean classes when none were given)."""
        base = self.class_idx if self.class_idx is not None else self.targets
        return _targets.repeat(base, times)

    def gradients(self, x: Tensor, targets: Any) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
        """``(output, acts, grads)`` for batch ``x``, acts and grads reshaped to ``(N, C, *S)`` float32."""
        return self.explainer._gradients(x, targets, self.reshapes)[:3]

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """``(output, acts)`` for batch ``x`` under inference mode, acts reshaped and float32."""
        out, raw = self.explainer._forward(x)
        return out, {k: self.reshapes[k](v).float() for k, v in raw.items()}


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
        self.method_options = method_options

    # -- the graph runs -------------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        with torch.inference_mode():
            return self.instrumented(x)

    def _reshapes(self, acts: dict[str, Tensor], x: Tensor) -> dict[str, Any]:
        return {k: _reshape.resolve(self.reshape, self.model, k, v, tuple(x.shape[2:])) for k, v in acts.items()}

    def _gradients(self, x: Tensor, targets: Any, reshapes: dict[str, Any] | None = None):
        output, acts = self.instrumented.forward_for_grad(x)
        scores, class_idx = _targets.resolve(targets, output)
        needed = [acts[k] for k in self.layers]
        grads = torch.autograd.grad(scores.sum(), needed, allow_unused=True)
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
            output, scores, class_idx = probe.output, probe.scores, probe.class_idx
            contrib = self.method.fn(probe, **self.method_options)
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
            cam = ops.upsample(ops.normalize(torch.relu(cam)), size)
            if self.method.layer_scale is not None and len(self.layers) > 1:
                cam = self.method.layer_scale(cam, **self.method_options)
            per_layer[k] = cam
        fused = ops.fuse(list(per_layer.values()), self.fuse)
        return fused, {k: ops.normalize(v) for k, v in per_layer.items()}

    def explain(self, x: Tensor, targets: Any = None, *, size: Sequence[int] | None = None) -> Explanation:
        """Maps, the model output, the explained classes and scores for batch ``x``."""
        if not isinstance(x, Tensor) or x.ndim < 3:
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
        out_first = output[:n] if isinstance(output, Tensor) else output
        idx = class_idx[:n] if class_idx is not None else None
        return Explanation(
            undo(cams).to(dtype), out_first, {k: undo(v).to(dtype) for k, v in per_layer.items()}, idx, scores[:n]
        )

    def __call__(self, x: Tensor, targets: Any = None, *, size: Sequence[int] | None = None) -> Tensor:
        return self.explain(x, targets, size=size).cams

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
