"""CAM methods: one pure function each, and a registry (name -> :class:`Method`).

Three kinds of method:

- ``"gradient"``: ``fn(acts, grads, **options) -> contributions``; ``acts`` and ``grads`` are the
  tapped activation and its gradient, ``(N, C, *S)`` float32, and ``contributions`` is
  ``(N, C, *S)``: the per-channel terms whose channel sum is the map (weights * activations for
  GradCAM). Returning the terms rather than the sum is what lets ``eigen_smooth`` project them.
- ``"activation"``: ``fn(acts, **options) -> contributions``; no gradient is computed.
- ``"driver"``: ``fn(probe, **options) -> {layer: contributions}``; the method runs the
  compiled graph itself through ``probe`` (noise samples, masked inputs, ablations).

The explainer turns contributions into maps (:func:`fxcam.maps.to_maps`): channel sum (or the
first principal component for ``project=True`` methods and ``eigen_smooth=True``), ReLU,
upsampling, normalization, fusion of layers. Adding a method is one function and one
``@register`` line (:mod:`fxcam.methods.registry`) in the module of its mechanism; methods never
import each other (a composite method takes its base by registry name), only torch and
fxcam's lower layers (``ops``, ``targets``, ``batching``, ``progress``, ``probe``, ``passes``).

Modules, by mechanism: ``gradient`` (weights from the gradient), ``activation`` (activations
only), ``smooth`` (gradients over noisy inputs), ``hessian`` (second-order gradients),
``ablation`` (channels ablated, the suffix re-run), ``score`` (inputs masked by channels),
``cam`` (the classifier's weights), ``fullgrad`` (bias gradients), ``composite`` (a base
method's maps combined: Finer-CAM, RefineCAM, SESS), ``transformer`` (attention).
"""

from __future__ import annotations

from .registry import KINDS, Method, available, describe, get, register

# registration happens on import of the method modules
from . import ablation, activation, cam, composite, fullgrad, gradient, hessian, score, smooth  # noqa: E402,F401,I001
from . import transformer  # noqa: E402,F401

__all__ = ["Method", "register", "get", "available", "describe", "KINDS"]
