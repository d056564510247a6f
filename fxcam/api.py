"""Public entry points: :class:`Explainer` and :func:`explain`. Orchestration only.

An explainer is a :class:`fxcam.maps.Recipe` (the compiled model, the method and its options)
plus input checks: :meth:`Explainer.explain` runs the recipe through the one eager pipeline
(:func:`fxcam.maps.run`), :meth:`Explainer.to_graph` traces that same pipeline into one graph
(:func:`fxcam.graph.explainer_graph`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import maps as _maps
from . import methods as _methods
from . import ops
from .compiling import running
from .errors import FxcamError
from .graph import batched, explainer_graph
from .instrumented import Compiler, Instrumented, instrument
from .maps import Explanation
from .probe import Probe
from .trace import Layer


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

    The model is never modified, in any mode: it is compiled from an eval-mode copy of its
    module tree that shares its parameters and buffers (:func:`fxcam.trace.eval_copy`), so the
    maps are always the eval-mode maps (BatchNorm reads its running statistics and does not
    update them, dropout is off), even for a model left in ``train()`` mode, e.g. inside a
    training loop. Explainers work inside ``torch.no_grad()`` and ``torch.inference_mode()``
    blocks, and may be built and called from several threads at once.

    Input checks: ``x`` is a batched tensor; an input with NaN or Inf values is refused (the
    images are named); a floating input of another dtype than the model's (float64 for a
    float32 model) is cast to the model's dtype, and the maps come back in ``x``'s dtype.
    A layer whose map is 1x1 at this input size gets a warning (its map is constant: all zero).
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
        # the model's other graphs, for driver methods (FullGrad reads its leaf modules off this graph)
        self.compiler = Compiler(model, leaf_modules, traced=self.instrumented.graph_module)
        self.layers = self.instrumented.layers
        self.reshape = reshape
        self.fuse = fuse
        self.eigen_smooth = eigen_smooth
        self.eigen_sign = eigen_sign
        self.aug_smooth = aug_smooth
        self.progress = progress
        self.leaf_modules = tuple(leaf_modules)
        self.method_options = method_options

    @property
    def recipe(self) -> _maps.Recipe:
        """What decides this explainer's maps (built from its current attributes)."""
        return _maps.Recipe(
            model=self.model,
            instrumented=self.instrumented,
            compiler=self.compiler,
            method=self.method,
            method_options=self.method_options,
            reshape=self.reshape,
            fuse=self.fuse,
            eigen_smooth=self.eigen_smooth,
            eigen_sign=self.eigen_sign,
            aug_smooth=self.aug_smooth,
            progress=self.progress,
        )

    def probe(self, x: Tensor, targets: Any = None) -> Probe:
        """The :class:`fxcam.probe.Probe` a driver method receives for batch ``x`` (to write or test one)."""
        r = self.recipe
        return Probe(r.instrumented, r.compiler, x, targets, reshape=r.reshape, progress=r.progress)

    def explain(self, x: Tensor, targets: Any = None, *, size: Sequence[int] | None = None) -> Explanation:
        """Maps, the model output, the explained classes and scores for batch ``x``."""
        dtype = self._check_input(x)
        size = tuple(size) if size is not None else tuple(x.shape[2:])
        # gradients are needed whatever the caller's grad mode (no_grad, inference_mode)
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            param = next(self.model.parameters(), None)
            if param is not None and x.is_floating_point() and param.is_floating_point() and x.dtype != param.dtype:
                x = x.to(param.dtype)
            with running():  # no build in another thread meanwhile (torch.fx patches every module while tracing)
                result = _maps.run(self.recipe, x, targets, size)
        if dtype is not None and result.cams.dtype != dtype:
            result.cams = result.cams.to(dtype)
            result.per_layer = {k: v.to(dtype) for k, v in result.per_layer.items()}
        _warn_nan(result.cams)
        return result

    def _check_input(self, x: Any) -> torch.dtype | None:
        """Raise for what is not a batch of finite images; the dtype the maps are returned in."""
        if not isinstance(x, Tensor) or not batched(self.model, x):
            raise FxcamError(
                f"x must be a batched image tensor (N, C, H, W); got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}. Add a batch dim with x[None]."
            )
        if x.is_floating_point() or x.is_complex():
            bad = ~torch.isfinite(x).flatten(1).all(1)
            if bool(bad.any()):
                images = bad.nonzero().flatten().tolist()
                raise FxcamError(
                    f"x has NaN or Inf values in image(s) {images} of the batch of {x.shape[0]}: their maps would be "
                    f"NaN. Fix the input (e.g. torch.nan_to_num(x)) or leave those images out."
                )
            return x.dtype
        return None

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
        :func:`fxcam.export` and compilable with ``torch.compile``. See :func:`fxcam.graph.explainer_graph`."""
        return explainer_graph(self.recipe, example_input, targets=targets, size=size, dynamic_batch=dynamic_batch)

    def __repr__(self) -> str:
        return f"Explainer(method={self.method.name!r}, layers={list(self.layers)}, reshape={self.reshape!r})"


def _warn_nan(cams: Tensor) -> None:
    bad = torch.isnan(cams).flatten(1).any(1)
    if bool(bad.any()):
        warnings.warn(
            f"The maps of image(s) {bad.nonzero().flatten().tolist()} are NaN: the model's output or gradient is not "
            f"finite for them (NaN/Inf weights, or an overflow in a low-precision dtype).",
            stacklevel=3,
        )


def default_layers(model: nn.Module) -> list[str]:
    """A sensible target layer: the last spatial feature map (CNNs) or the last block's first norm (ViTs)."""
    from .layers import default_layer  # noqa: PLC0415 - shape propagation only when no layer is given

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


__all__ = ["Explainer", "Explanation", "Instrumented", "explain", "instrument", "default_layers"]
