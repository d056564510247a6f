"""Stateless tensor operations on maps: upsampling, normalization, fusion, projection.

Torch only: everything stays on the maps' device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-7  # pytorch-grad-cam's epsilon in min-max normalization


def upsample(cams: Tensor, size: Sequence[int]) -> Tensor:
    """Resize maps ``(N, *S)`` to ``(N, *size)`` in one batched call.

    Bilinear (trilinear for 3-D maps) with ``align_corners=False`` and no antialiasing:
    the same sampling as OpenCV's ``INTER_LINEAR``, which pytorch-grad-cam uses per image.
    """
    size = tuple(int(s) for s in size)
    if tuple(cams.shape[1:]) == size:
        return cams
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cams.ndim - 1]
    return F.interpolate(cams.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)


def normalize(cams: Tensor, eps: float = 0.0) -> Tensor:
    """Per-map min-max normalization of ``(N, *S)`` to [0, 1]; an all-constant map becomes 0.

    With the default ``eps=0`` the range is divided exactly, so a map's shape does not depend on
    its scale. pytorch-grad-cam divides by ``range + 1e-7`` (torchcam: ``+ 1e-8``), which
    visibly shrinks maps whose values are below ~1e-4 (e.g. Grad-CAM++ weights, which are cubic
    in the gradient); pass ``eps=EPS`` to reproduce that.
    """
    flat = cams.flatten(1)
    lo = flat.amin(1).view(-1, *([1] * (cams.ndim - 1)))
    shifted = cams - lo
    hi = shifted.flatten(1).amax(1).view(-1, *([1] * (cams.ndim - 1)))
    if eps:
        return shifted / (hi + eps)
    return shifted / torch.where(hi > 0, hi, torch.ones_like(hi))


FUSIONS = ("mean", "max")


def fuse(cams: Sequence[Tensor], how: str = "mean") -> Tensor:
    """Fuse per-layer maps ``[(N, *S)]`` of one size into one normalized ``(N, *S)`` map.

    ``"mean"`` (default) averages the maps and renormalizes, as pytorch-grad-cam does;
    ``"max"`` takes the element-wise maximum, as torchcam's ``fuse_cams`` does. A single map
    is renormalized too (upsampling moves its extrema slightly off 0 and 1).
    """
    if how not in FUSIONS:
        raise ValueError(f"Unknown fusion {how!r}; valid choices: {list(FUSIONS)}.")
    if len(cams) == 1:
        return normalize(cams[0])
    stacked = torch.stack(list(cams))
    fused = stacked.mean(0) if how == "mean" else stacked.amax(0)
    return normalize(fused)


SIGNS = ("max_abs", "none")


def first_principal_component(x: Tensor, sign: str = "max_abs") -> Tensor:
    """Project ``(N, C, *S)`` onto each sample's first principal component: ``(N, *S)``.

    For every sample the ``S`` positions are points in ``C`` dimensions; they are centred and
    projected on the top right-singular vector (EigenCAM, Muhammad & Yeasin 2020). The sign of
    a singular vector is arbitrary (it depends on the LAPACK build), so ``sign="max_abs"``
    flips each projection whose largest magnitude is negative (Seg-Eigen-CAM, Eq. 13; also
    pytorch-grad-cam's ``get_2d_projection_with_sign_correction``). ``sign="none"`` keeps the
    raw SVD sign, which is what pytorch-grad-cam's EigenCAM returns on a given machine.
    """
    if sign not in SIGNS:
        raise ValueError(f"Unknown sign convention {sign!r}; valid choices: {list(SIGNS)}.")
    n, c = x.shape[:2]
    points = torch.nan_to_num(x.flatten(2).transpose(1, 2), nan=0.0)  # (N, S, C)
    points = points - points.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(points, full_matrices=False)
    proj = (points @ vh[:, 0, :, None]).squeeze(-1)  # (N, S)
    if sign == "max_abs":
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.view(n, *x.shape[2:])
