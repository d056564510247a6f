"""FullGrad: input gradient and bias gradients of every conv/BatchNorm layer (Srinivas & Fleuret 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import EPS, normalize, upsample
from ..probe import Probe
from .registry import register


def fullgrad_map(x: Tensor, input_grad: Tensor, biases: dict[str, Tensor], grads: dict[str, Tensor]) -> Tensor:
    r"""FullGrad saliency ``(N, *S_in)`` from the input gradient and the bias gradients.

    .. math:: S = \sum_{c} \psi\big(|x_c \odot \nabla_{x_c} y|\big)
              + \sum_{l} \sum_{c} \mathrm{up}\Big(\psi\big(|b_{l,c}\, \nabla_{z_{l,c}} y|\big)\Big)

    with :math:`z_l` the output of bias layer :math:`l`, :math:`b_l` its (effective) bias and
    :math:`\psi` a per-map min-max normalization (eps 1e-7), every channel separately, as
    pytorch-grad-cam's ``FullGrad`` does (Srinivas & Fleuret 2019, Eq. 5 with
    :math:`\psi = ` abs + normalize + resize). Upsampling is linear, so channel maps are summed
    at each layer's resolution and maps of one resolution are upsampled once, together.
    """
    size = tuple(x.shape[2:])
    total = normalize((x.float() * input_grad.float()).abs(), eps=EPS, start=2).sum(1)
    by_size: dict[tuple[int, ...], Tensor] = {}
    for name, g in grads.items():
        term = _normalized_abs_channel_sum(g.float(), biases[name].to(device=g.device, dtype=torch.float32))
        key = tuple(g.shape[2:])
        by_size[key] = by_size[key] + term if key in by_size else term
    for maps in by_size.values():
        total = total + upsample(maps, size)
    return total


def _normalized_abs_channel_sum(g: Tensor, b: Tensor) -> Tensor:
    r""":math:`\sum_c \psi(|b_c g_c|)` for ``g (N, C, *S)`` and ``b (C,)``: ``(N, *S)``.

    With :math:`m_c, M_c` the min and max of :math:`|g_c|`,
    :math:`\psi(|b_c g_c|) = (|g_c| - m_c)\, s_c` where :math:`s_c = |b_c| / (|b_c| (M_c - m_c) + \epsilon)`:
    one ``|g|`` copy, one min/max pass, an in-place shift and one contraction with the per-channel
    scales, instead of materializing each normalized channel. (The shift is not folded into a
    constant after the contraction: that cancels badly when :math:`M_c \approx m_c`.)
    FullGrad's cost beyond the backward is this function over every bias layer.
    """
    n, c = g.shape[:2]
    a = g.abs().reshape(n, c, -1)
    # amin + amax, and bmm rather than einsum: on CPU (torch 2.14) ``aminmax`` over the last dim
    # is ~6x slower than the two reductions, and this einsum copies; together they were 60% of
    # FullGrad's map time on resnet50.
    lo, hi = a.amin(-1), a.amax(-1)
    b = b.abs()
    scale = b / (b * (hi - lo) + EPS)  # (N, C)
    a.sub_(lo.unsqueeze(-1))
    return torch.bmm(scale.unsqueeze(1).to(a.dtype), a).reshape(n, *g.shape[2:])


@register(
    "fullgrad",
    kind="driver",
    summary="FullGrad: |input x input-gradient| plus |bias x bias-gradient| of every conv/BatchNorm layer.",
    paper="Srinivas & Fleuret, Full-Gradient Representation for Neural Network Visualization, NeurIPS 2019, "
    "Eq. 5. https://arxiv.org/abs/1905.00780",
)
def fullgrad(probe: Probe) -> dict[str, Tensor]:
    """FullGrad (see :func:`fullgrad_map`), as pytorch-grad-cam 1.5.7's ``FullGrad``.

    Every convolution and BatchNorm with a bias found in the traced graph is tapped in one
    compiled graph; one forward with autograd on and one ``torch.autograd.grad`` call give the
    input gradient and all bias-layer gradients (:meth:`fxcam.probe.Probe.bias_gradients`).
    BatchNorm's bias is the folded one, ``b - mu w / sqrt(var + eps)``. Like pytorch-grad-cam,
    the explainer's target layers are not used: every explained layer gets the same map.
    The map is computed at the input's resolution. ``eigen_smooth`` projects this single map,
    not pytorch-grad-cam's stack of per-layer maps.
    """
    bg = probe.bias_gradients()
    cam = fullgrad_map(bg.x, bg.input_grad, bg.biases, bg.grads).unsqueeze(1)
    return {layer: cam for layer in probe.layers}


__all__ = ["fullgrad_map"]
