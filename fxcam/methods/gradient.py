"""Gradient-weighted methods: pure functions of (activations, gradients).

Shapes: ``acts``, ``grads``: ``(N, C, *S)`` (``S`` = spatial dims, usually ``H, W``);
every function returns the per-channel contributions ``(N, C, *S)``; the map is their
sum over ``C`` followed by ReLU (done by the explainer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import FxcamError
from ..ops import expand_as_weights as _expand
from ..ops import spatial_dims as _spatial
from .registry import register


@register(
    "gradcam",
    kind="gradient",
    summary="Grad-CAM: channels weighted by their spatially averaged gradient.",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017, Eq. 1-2. https://arxiv.org/abs/1610.02391",
)
def gradcam(acts: Tensor, grads: Tensor) -> Tensor:
    r"""Grad-CAM (Selvaraju et al. 2017, Eq. 1-2).

    .. math:: w_k = \frac{1}{|S|}\sum_{s} \frac{\partial y}{\partial A_k(s)},\qquad
              L = \mathrm{ReLU}\big(\textstyle\sum_k w_k A_k\big)

    Identical to pytorch-grad-cam's ``GradCAM`` and torchcam's ``GradCAM``.
    """
    return _expand(grads.mean(_spatial(grads)), acts) * acts


@register(
    "hirescam",
    kind="gradient",
    summary="HiResCAM: element-wise gradient x activation, summed over channels (faithful to the score).",
    paper="Draelos & Carin, HiResCAM, 2020, Eq. 4. https://arxiv.org/abs/2011.08891",
)
def hirescam(acts: Tensor, grads: Tensor) -> Tensor:
    r"""HiResCAM: :math:`L = \mathrm{ReLU}(\sum_k \partial y/\partial A_k \odot A_k)` (no averaging)."""
    return grads * acts


@register(
    "gradcam_elementwise",
    kind="gradient",
    summary="Grad-CAM element-wise: ReLU of gradient x activation before the channel sum.",
    paper="pytorch-grad-cam's GradCAMElementWise (a HiResCAM variant with a per-element ReLU).",
)
def gradcam_elementwise(acts: Tensor, grads: Tensor) -> Tensor:
    r""":math:`L = \mathrm{ReLU}(\sum_k \mathrm{ReLU}(\partial y/\partial A_k \odot A_k))`."""
    return torch.relu(grads * acts)


GRADCAMPP_ALPHAS = ("paper", "torchcam")


@register(
    "gradcampp",
    kind="gradient",
    summary="Grad-CAM++: positive gradients weighted per position by the second/third-order alpha.",
    paper="Chattopadhay et al., Grad-CAM++, WACV 2018, Eq. 19. https://arxiv.org/abs/1710.11063",
)
def gradcampp(acts: Tensor, grads: Tensor, alpha: str = "paper") -> Tensor:
    r"""Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19, exponential-score closed form).

    .. math:: \alpha_k(s) = \frac{g_k(s)^2}{2 g_k(s)^2 + D_k(s)},\qquad
              w_k = \sum_s \alpha_k(s)\,\mathrm{ReLU}(g_k(s))

    with ``g = dy/dA``. The two references differ in :math:`D`:

    - ``alpha="paper"`` (default, = pytorch-grad-cam): :math:`D_k(s) = g_k(s)^3 \sum_{s'} A_k(s')`,
      as in the paper; eps 1e-6; :math:`\alpha = 0` where :math:`g = 0`.
    - ``alpha="torchcam"``: :math:`D_k = \sum_{s'} g_k(s')^3 A_k(s')` (one value per channel), eps
      1e-8, as torchcam 0.5.0's code intends. Note that torchcam 0.5.0 itself divides a copy
      (``alpha[mask].div_``), so its actual alpha is just :math:`g^2`; fxcam does not reproduce
      that bug.
    """
    dims = _spatial(grads)
    g2 = grads.pow(2)
    g3 = g2 * grads
    if alpha == "paper":
        denom = 2 * g2 + _expand(acts.sum(dims), acts) * g3 + 1e-6
        a = torch.where(grads != 0, g2 / denom, torch.zeros_like(g2))
    elif alpha == "torchcam":
        denom = 2 * g2 + _expand((g3 * acts).sum(dims), acts)
        a = torch.where(g2 > 0, g2 / (denom + 1e-8), g2)
    else:
        raise FxcamError(f"gradcampp: alpha must be one of {GRADCAMPP_ALPHAS}; got {alpha!r}.")
    weights = (a * torch.relu(grads)).sum(dims)
    return _expand(weights, acts) * acts


@register(
    "xgradcam",
    kind="gradient",
    summary="XGrad-CAM: gradients weighted by the normalized activation (axiom-based).",
    paper="Fu et al., Axiom-based Grad-CAM, BMVC 2020, Eq. 13. https://arxiv.org/abs/2008.02312",
)
def xgradcam(acts: Tensor, grads: Tensor, eps: float = 1e-7) -> Tensor:
    r""":math:`w_k = \sum_s g_k(s) A_k(s) / (\sum_{s'} A_k(s') + \epsilon)` (pytorch-grad-cam's eps 1e-7;
    torchcam uses 1e-8, a difference far below float32 map resolution)."""
    dims = _spatial(acts)
    weights = (grads * acts).sum(dims) / (acts.sum(dims) + eps)
    return _expand(weights, acts) * acts


def _tanh_scale(cam: Tensor, gamma: float | None = None) -> Tensor:
    return cam if gamma is None else torch.tanh(gamma * cam)


@register(
    "layercam",
    kind="gradient",
    summary="LayerCAM: positive gradients as per-position weights; suited to shallow layers.",
    paper="Jiang et al., LayerCAM, IEEE TIP 2021, Eq. 5-6. https://ieeexplore.ieee.org/document/9462463",
    layer_scale=_tanh_scale,
)
def layercam(acts: Tensor, grads: Tensor, gamma: float | None = None) -> Tensor:
    r"""LayerCAM: :math:`L = \mathrm{ReLU}(\sum_k \mathrm{ReLU}(g_k) \odot A_k)`.

    With several layers, ``gamma`` (e.g. 2.0, as in the paper's Eq. 7 and torchcam's
    ``fuse_cams``) rescales each normalized layer map by :math:`\tanh(\gamma L)` before fusion;
    the default ``None`` leaves maps as they are (pytorch-grad-cam).
    """
    return torch.relu(grads) * acts


@register(
    "eigengradcam",
    kind="gradient",
    summary="Eigen-Grad-CAM: first principal component of gradient x activation.",
    paper="pytorch-grad-cam's EigenGradCAM (EigenCAM, Muhammad & Yeasin 2020, on grad x act).",
    project=True,
)
def eigengradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """Contributions ``grads * acts``, projected on their first principal component."""
    return grads * acts
