"""Bias layers: the layers of a graph whose bias FullGrad attributes, and their effective bias.

FullGrad (Srinivas & Fleuret 2019) splits a network's output into the input-gradient term and
one bias-gradient term per layer with a bias. In a traced graph those layers are the
``call_module`` nodes of convolutions and BatchNorms that carry a bias; this module finds them
(an analysis, it does not rewrite the graph) so the explainer can tap all of them in one
compiled graph and differentiate once.

Which layers count, as in pytorch-grad-cam's ``FullGrad`` and the paper's implementation:

- convolutions (``Conv1d/2d/3d``, transposed too) with ``bias`` not None;
- BatchNorms (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) with an affine bias; the effective bias
  folds in the running statistics: ``b - mu * w / sqrt(var + eps)``.

Exact types, as pytorch-grad-cam checks them: a subclass may add more than a bias to its
output (timm's ``BatchNormAct2d`` applies the activation inside), so its output gradient is
not the bias's. Linear layers are skipped: in a classifier their output ``(N, K)`` has no
spatial extent, so their bias term would be a constant map, which FullGrad's per-map min-max
normalization turns into zeros anyway. Only module calls are found, not ``F.conv2d`` calls,
and not layers inside leaf modules (:func:`hidden_bias_layers` counts those).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..trace import NAME

BIAS_TYPES: tuple[type, ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)


def is_bias_layer(module: nn.Module) -> bool:
    """A module of one of :data:`BIAS_TYPES` (exactly) with a bias."""
    return type(module) in BIAS_TYPES and getattr(module, "bias", None) is not None


@dataclass(frozen=True)
class BiasLayer:
    name: str  # user-facing name (``layer1.0.bn1``), accepted by ``fxcam.instrument``
    node: str  # fx node name
    module: str  # qualified name of the called module (the node's target)


def bias_layers(gm: fx.GraphModule) -> list[BiasLayer]:
    """Every ``call_module`` node of ``gm`` calling a convolution or BatchNorm with a bias, in graph order."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if is_bias_layer(gm.get_submodule(node.target)):
            found.append(BiasLayer(node.meta.get(NAME, node.name), node.name, node.target))
    return found


def hidden_bias_layers(gm: fx.GraphModule) -> dict[type, int]:
    """Leaf modules called in ``gm`` that contain bias layers fx cannot see: ``{type: bias layers inside}``."""
    hidden: dict[type, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if is_bias_layer(module):
            continue
        inside = sum(1 for sub in module.modules() if sub is not module and is_bias_layer(sub))
        if inside:
            hidden[type(module)] = hidden.get(type(module), 0) + inside
    return hidden


def effective_bias(module: nn.Module) -> Tensor:
    """The constant a conv/BatchNorm adds to its output per channel, ``(C,)``.

    A convolution's ``bias``; for a BatchNorm in eval mode ``y = w (x - mu) / sqrt(var + eps) + b``,
    so the bias is ``b - mu w / sqrt(var + eps)`` (FullGrad's definition). A BatchNorm without
    running statistics normalizes with batch statistics; its ``bias`` is used as is.
    """
    bias = module.bias.detach()
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
        weight = module.weight.detach() if module.weight is not None else torch.ones_like(bias)
        bias = bias - module.running_mean * weight / torch.sqrt(module.running_var + module.eps)
    return bias
