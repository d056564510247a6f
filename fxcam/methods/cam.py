"""CAM (Zhou et al. 2016): the classifier's weights for the class, read off the compiled graph."""

from __future__ import annotations

from torch import Tensor

from ..errors import FxcamError
from ..ops import expand_as_weights as _expand
from ..passes.classifier import classifier_weight
from ..probe import Probe
from .registry import register


@register(
    "cam",
    kind="driver",
    summary="CAM: channels weighted by the classifier's weights for the class (GAP -> Linear models).",
    paper="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016. "
    "https://arxiv.org/abs/1512.04150",
)
def cam(probe: Probe) -> dict[str, Tensor]:
    r"""CAM (Zhou et al. 2016): :math:`L_c = \mathrm{ReLU}(\sum_k w^c_k A_k)` with :math:`w^c` the row of the final
    Linear layer for class :math:`c`, for models whose tapped map :math:`A` reaches that layer
    through a global average pool only (ResNet, DenseNet, EfficientNet, ...).

    The Linear is found from the graph (:func:`classifier_weight`), not by name. Targets must be
    class indices (None or ints). Same weights as torchcam 0.5.0's ``CAM``; torchcam and the
    paper normalize :math:`\sum_k w^c_k A_k` without the ReLU, fxcam clips negative evidence like
    every other method (the maps agree wherever the sum is non-negative).
    """
    if probe.class_idx is None:
        raise FxcamError(
            "cam explains a class through the classifier's weights; pass class indices as targets (None, an int or "
            "a list of ints), not callables."
        )
    inst = probe.instrumented
    out = {}
    for layer, acts in probe.acts.items():
        weight = classifier_weight(inst.graph_module, inst.nodes[layer], acts.ndim, layer)
        if weight.shape[1] != acts.shape[1]:
            raise FxcamError(
                f"cam: the classifier after '{layer}' takes {weight.shape[1]} features but the layer has "
                f"{acts.shape[1]} channels."
            )
        w = weight.detach()[probe.class_idx].to(acts.device, acts.dtype)
        out[layer] = _expand(w, acts) * acts
    return out
