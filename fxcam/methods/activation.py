"""Methods that need activations only (no gradient, no target): EigenCAM, KPCA-CAM, FEM, RandomCAM.

``fn(acts (N, C, *S), **options) -> contributions``; pure torch, batched, on the input's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import FxcamError
from ..ops import expand_as_weights as _expand
from ..ops import spatial_dims as _spatial
from .registry import register


@register(
    "eigencam",
    kind="activation",
    summary="EigenCAM: first principal component of the activations (class-agnostic, no gradients).",
    paper="Muhammad & Yeasin, Eigen-CAM, IJCNN 2020. https://arxiv.org/abs/2008.00299",
    project=True,
)
def eigencam(acts: Tensor) -> Tensor:
    """The activations themselves; the explainer projects them on their first principal component.

    The projection's sign follows ``sign`` of :func:`fxcam.ops.first_principal_component`
    (``Explainer(..., sign="max_abs")`` by default; pytorch-grad-cam keeps LAPACK's arbitrary sign).
    """
    return acts


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _kernel(p: Tensor, kernel: str, gamma: float | None, degree: int, coef0: float) -> Tensor:
    """Kernel matrices ``(N, S, S)`` of point sets ``(N, S, C)``, with scikit-learn's definitions."""
    gamma = 1.0 / p.shape[-1] if gamma is None else gamma
    dot = p @ p.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    if kernel == "rbf":
        sq = p.pow(2).sum(-1)
        return torch.exp(-gamma * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min(0))
    if kernel == "cosine":
        q = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return q @ q.transpose(1, 2)
    raise FxcamError(f"kpcacam: kernel must be one of {list(KERNELS)}; got {kernel!r}.")


@register(
    "kpcacam",
    kind="activation",
    summary="KPCA-CAM: the activations' first kernel principal component (class-agnostic, no gradients).",
    paper="Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA, "
    "MMSP 2024. https://arxiv.org/abs/2410.00267",
)
def kpcacam(
    acts: Tensor, kernel: str = "sigmoid", gamma: float | None = None, degree: int = 3, coef0: float = 1.0
) -> Tensor:
    r"""KPCA-CAM: project each image's positions on the first kernel principal component.

    The ``S`` positions are points in ``C`` dimensions, centred; :math:`K = k(P, P)` (scikit-learn's
    kernels: ``sigmoid`` :math:`\tanh(\gamma\,p\cdot q + c_0)` (default), ``rbf``, ``poly``,
    ``linear``, ``cosine``; :math:`\gamma` defaults to :math:`1/C`), double-centred, and the
    projection is :math:`\sqrt{\lambda_1} v_1` with the sign that makes its largest-magnitude
    entry positive: scikit-learn's ``KernelPCA(n_components=1).fit_transform``, which
    pytorch-grad-cam 1.5.7's ``KPCA_CAM`` calls per image. Here: one batched ``torch.linalg.eigh``
    (``O(S^3)``: fine for feature maps up to ~60x60). Returns ``(N, 1, *S)``.
    """
    n = acts.shape[0]
    p = torch.nan_to_num(acts.flatten(2).transpose(1, 2), nan=0.0)
    p = p - p.mean(1, keepdim=True)
    k = _kernel(p, kernel, gamma, degree, coef0)
    k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    evals, evecs = torch.linalg.eigh(k)
    v, lam = evecs[..., -1], evals[..., -1].clamp_min(0)
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    proj = v * sign * lam.sqrt().unsqueeze(1)
    return proj.reshape(n, 1, *acts.shape[2:])


@register(
    "fem",
    kind="activation",
    summary="FEM: channels weighted by the share of positions above mean + k std (no gradients).",
    paper="Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, IPTA 2020. "
    "https://hal.science/hal-02963298/document",
)
def fem(acts: Tensor, k: float = 2.0) -> Tensor:
    r"""Feature Explanation Method: :math:`w_c = \frac{1}{|S|}\sum_s [A_c(s) > \mu_c + k\,\sigma_c]`,
    contributions :math:`w_c A_c` (population std, as pytorch-grad-cam's ``FEM``)."""
    dims = _spatial(acts)
    th = acts.mean(dims, keepdim=True) + k * acts.std(dims, correction=0, keepdim=True)
    weights = (acts > th).to(acts.dtype).mean(dims)
    return _expand(weights, acts) * acts


@register(
    "randomcam",
    kind="activation",
    summary="RandomCAM: channels weighted by uniform random weights in [-1, 1] (a sanity-check baseline).",
    paper="pytorch-grad-cam's RandomCAM (a baseline for metrics).",
)
def randomcam(acts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r""":math:`w_{n,c} \sim U(-1, 1)` per image and channel, contributions :math:`w A`.

    Drawn with ``torch.rand`` from ``generator`` (seed it for reproducible maps; default: torch's
    global generator). pytorch-grad-cam draws from numpy's global generator, so the two agree only
    for the same weights, not the same seed."""
    device = generator.device if generator is not None else acts.device
    w = torch.rand(acts.shape[:2], generator=generator, device=device, dtype=acts.dtype) * 2 - 1
    return _expand(w.to(acts.device), acts) * acts


__all__ = ["KERNELS"]
