"""Default target layers and layer shapes (shape propagation on a dummy input)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import FxcamError
from .reshape import Family, family, is_torchvision
from .trace import NAME, Traced, trace


def _shapes(model: nn.Module, traced: Traced, size: tuple[int, int], channels: int | None) -> dict[str, tuple]:
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
    nodes = {n.name: n for n in gm.graph.nodes}
    for q, node_name in traced.node_of.items():
        meta = nodes[node_name].meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes[q] = tuple(meta.shape)
    return {q: shapes[q] for q in traced.layer_names if q in shapes}


def layer_shapes(model: nn.Module, size: tuple[int, int] = (224, 224), channels: int | None = None) -> dict[str, tuple]:
    """``{layer name: output shape}`` for every tensor-valued layer, from one dummy forward at ``size``."""
    return _shapes(model, trace(model), size, channels)


def _last(container: nn.Module | None) -> str | None:
    """The name of the last child of a Sequential/ModuleList, or None."""
    if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
        return list(container.named_children())[-1][0]
    return None


def _transformer_module(model: nn.Module) -> str | None:
    """The module path of the default layer for ViT and Swin families, or None for other models."""
    fam = family(model)
    if fam is Family.VIT:
        last = _last(getattr(model, "blocks", None))
        if last is not None and hasattr(model.blocks[-1], "norm1"):  # timm ViT, DeiT, EVA, DINOv2 ...
            return f"blocks.{last}.norm1"
        layers = getattr(getattr(model, "encoder", None), "layers", None)
        last = _last(layers)
        if last is not None and hasattr(layers[-1], "ln_1"):  # torchvision VisionTransformer
            return f"encoder.layers.{last}.ln_1"
    if fam is Family.CHANNELS_LAST:
        for stages in ("layers", "features"):  # timm Swin: layers[-1]; torchvision Swin: features[-1]
            last = _last(getattr(model, stages, None))
            if last is not None:
                return f"{stages}.{last}"
    return None


def _layer_name(traced: Traced, path: str) -> str | None:
    """The user-facing layer name of module ``path``'s output in ``traced``.

    A leaf module is looked up by its call node's target, not by name: torchvision's node
    naming renames leaf ``ln_1`` to ``ln`` (and ``ln_2`` to ``ln_1``) in ViT encoder blocks.
    """
    calls = [n for n in traced.graph_module.graph.nodes if n.op == "call_module" and n.target == path]
    if len(calls) == 1 and NAME in calls[0].meta:
        return calls[0].meta[NAME]
    if not calls and path in traced.node_of:
        return path
    return None


def default_layer(model: nn.Module, size: tuple[int, int] = (224, 224)) -> str:
    """The layer most CAM papers explain for this architecture.

    - ViT family (timm ``num_prefix_tokens`` models, torchvision ``VisionTransformer``): the
      last block's first norm (``blocks[-1].norm1``; torchvision ``encoder.layers[-1].ln_1``,
      returned under its traced node name).
    - Swin (torchvision ``SwinTransformer``, timm models with ``output_fmt="NHWC"``): the last
      stage (``features[-1]`` / ``layers[-1]``), a channels-last map.
    - Everything else (CNNs, MaxViT, ConvNeXt ...): the last layer whose output is a spatial map
      (at least 2x2), found by shape propagation at ``size``, under the outermost module name
      returning it (``layer4`` over ``layer4.1.relu_1``).
    """
    traced = trace(model)
    path = _transformer_module(model)
    if path is not None:
        name = _layer_name(traced, path)
        if name is not None:
            return name
    try:
        shapes = _shapes(model, traced, size, None)
    except Exception as exc:  # noqa: BLE001 - re-raised with the way out
        raise FxcamError(
            f"Could not run a dummy {tuple(size)} input through {type(model).__name__} to find its last spatial map "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}). Pass layers= explicitly "
            f"(see fxcam.list_layers(model)) or call "
            f"fxcam.default_layer(model, size=(H, W)) with a size the model accepts."
        ) from exc
    best = None
    for q, shape in shapes.items():
        if len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
            best = q
    if best is None:
        raise FxcamError(
            f"No spatial feature map found in {type(model).__name__} at input size {size}; pass layers= explicitly "
            f"(see fxcam.list_layers(model))."
        )
    node = traced.node_of[best]
    same = [q for q, n in traced.node_of.items() if n == node]
    return min(same, key=lambda q: (q.count("."), len(q)))


def token_head(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """``tokens (N, T, C) -> logits``: the model's own final norm and classifier applied to the mean token.

    This is LeGrad's per-block score as torchcam 0.5.0 computes it for torchvision ViTs,
    ``heads(encoder.ln(tokens.mean(1)))``. For timm ViTs the mean token goes through the
    model's ``norm`` and ``forward_head`` (its own pooling, ``fc_norm`` and head(s); DeiT's two
    heads are averaged as in its forward); timm-shaped models without ``forward_head`` use
    ``head(norm(mean))``. None for models whose head fxcam does not know.
    """
    if is_torchvision(model, "VisionTransformer"):
        return lambda z: model.heads(model.encoder.ln(z.mean(1)))
    if family(model) is not Family.VIT:
        return None
    norm = model.norm if isinstance(getattr(model, "norm", None), nn.Module) else nn.Identity()
    if callable(getattr(model, "forward_head", None)):
        # every token replaced by the mean: token pooling, average pooling and both DeiT heads all see it
        return lambda z: model.forward_head(norm(z.mean(1, keepdim=True).expand_as(z)))
    if isinstance(getattr(model, "head", None), nn.Module):  # timm-shaped models without forward_head
        return lambda z: model.head(norm(z.mean(1)))
    return None


__all__ = ["default_layer", "layer_shapes", "token_head", "NAME"]
