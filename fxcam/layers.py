"""Default target layers and layer shapes (shape propagation on a dummy input)."""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import FxcamError
from .trace import NAME, trace


def layer_shapes(model: nn.Module, size: tuple[int, int] = (224, 224), channels: int | None = None) -> dict[str, tuple]:
    """``{layer name: output shape}`` for every tensor-valued layer, from one dummy forward at ``size``."""
    traced = trace(model)
    gm = traced.graph_module
    if channels is None:
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        channels = first.in_channels if isinstance(first, nn.Conv2d) else 3
    p = next(model.parameters(), None)
    x = torch.zeros(1, channels, *size, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    with torch.inference_mode():
        ShapeProp(gm).propagate(x)
    shapes = {}
    for q, node_name in traced.node_of.items():
        node = next(n for n in gm.graph.nodes if n.name == node_name)
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes[q] = tuple(meta.shape)
    return {q: shapes[q] for q in traced.layer_names if q in shapes}


def _vit_layer(model: nn.Module) -> str | None:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) and hasattr(blocks[-1], "norm1"):
        return f"blocks.{len(blocks) - 1}.norm1"
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layers", None)
    if isinstance(layers, nn.Sequential) and len(layers) and hasattr(layers[-1], "ln_1"):
        name = list(layers.named_children())[-1][0]
        return f"encoder.layers.{name}.ln_1"
    return None


def default_layer(model: nn.Module, size: tuple[int, int] = (224, 224)) -> str:
    """The layer most CAM papers explain for this architecture.

    ViT-style models: the last block's first norm (``blocks[-1].norm1``, torchvision
    ``encoder.layers[-1].ln_1``); otherwise the last layer whose output is a spatial map
    (at least 2x2), found by shape propagation, preferring the enclosing module's name.
    """
    name = _vit_layer(model)
    if name is not None:
        return name
    shapes = layer_shapes(model, size)
    best = None
    for q, shape in shapes.items():
        if len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
            best = q
    if best is None:
        raise FxcamError(
            f"No spatial feature map found in {type(model).__name__} at input size {size}; pass layers= explicitly "
            f"(see fxcam.list_layers(model))."
        )
    # prefer the outermost module returning the same node (``layer4`` over ``layer4.1.relu_1``)
    traced = trace(model)
    node = traced.node_of[best]
    same = [q for q, n in traced.node_of.items() if n == node]
    return min(same, key=lambda q: (q.count("."), len(q)))


__all__ = ["default_layer", "layer_shapes", "NAME"]
