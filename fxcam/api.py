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

import torch.fx as fx
from torch import Tensor, nn

from . import maps as _maps
from . import methods as _methods
from . import ops
from .errors import FxcamError
from .graph import explainer_graph
from .instrument import Compiler, Instrumented, instrument
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
        self.compiler = Compiler(model, leaf_modules)  # the model's other graphs, for driver methods
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
        return _maps.run(self.recipe, x, targets, size)

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
