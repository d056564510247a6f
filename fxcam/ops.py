"""Stateless tensor operations on maps: upsampling, normalization, fusion, projection.

Torch only: everything stays on the maps' device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FxcamError

EPS = 1e-7  # pytorch-grad-cam's epsilon in min-max normalization


def resize(x: Tensor, size: Sequence[int], *, align_corners: bool = False, antialias: bool = False) -> Tensor:
    """Resize ``(N, C, *S)`` to ``(N, C, *size)`` in one batched call: linear, bilinear or trilinear.

    The one home of interpolation in fxcam. ``align_corners=False`` (default) samples at
    half-pixel centres, as OpenCV's ``INTER_LINEAR``; ``antialias`` (2-D only) low-passes a
    downscale, as torchvision's image ``resize``.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None or x.ndim != len(size) + 2:
        raise FxcamError(
            f"Cannot resize a tensor of shape {tuple(x.shape)} to {size}: maps need 1-3 spatial dims after (N, C)."
        )
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners, antialias=antialias)


def upsample(cams: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Resize maps ``(N, *S)`` to ``(N, *size)`` in one batched call (:func:`resize`, one channel).

    Bilinear (trilinear for 3-D maps) with ``align_corners=False`` and no antialiasing:
    the same sampling as OpenCV's ``INTER_LINEAR``, which pytorch-grad-cam uses per image.
    """
    return resize(cams.unsqueeze(1), size, align_corners=align_corners).squeeze(1)


def normalize(cams: Tensor, eps: float = 0.0, start: int = 1) -> Tensor:
    """Min-max normalization to [0, 1] of each map: over the dims from ``start`` on.

    ``start=1`` (default): one map per leading index of ``(N, *S)``; ``start=2``: one per
    channel of ``(N, C, *S)``. An all-constant map becomes 0.

    With the default ``eps=0`` the range is divided exactly, so a map's shape does not depend on
    its scale. pytorch-grad-cam divides by ``range + 1e-7`` (torchcam: ``+ 1e-8``), which
    visibly shrinks maps whose values are below ~1e-4 (e.g. Grad-CAM++ weights, which are cubic
    in the gradient); pass ``eps=EPS`` to reproduce that.
    """
    shape = (*cams.shape[:start], *([1] * (cams.ndim - start)))
    lo = cams.flatten(start).amin(-1).reshape(shape)
    shifted = cams - lo
    hi = shifted.flatten(start).amax(-1).reshape(shape)
    if eps:
        return shifted / (hi + eps)
    return shifted / torch.where(hi > 0, hi, torch.ones_like(hi))


def spatial_dims(t: Tensor) -> tuple[int, ...]:
    """The spatial dims of an ``(N, C, *S)`` tensor: ``(2, ..., t.ndim - 1)``."""
    return tuple(range(2, t.ndim))


def expand_as_weights(w: Tensor, like: Tensor) -> Tensor:
    """Per-(image, channel) weights ``(N, C)`` viewed as ``(N, C, 1, ...)`` to broadcast against ``like``."""
    return w.reshape(*w.shape, *([1] * (like.ndim - w.ndim)))


FUSIONS = ("mean", "max")


def fuse(cams: Sequence[Tensor], how: str = "mean") -> Tensor:
    """Fuse per-layer maps ``[(N, *S)]`` of one size into one normalized ``(N, *S)`` map.

    ``"mean"`` (default) averages the maps and renormalizes, as pytorch-grad-cam does;
    ``"max"`` takes the element-wise maximum, as torchcam's ``fuse_cams`` does. A single map
    is renormalized too (upsampling moves its extrema slightly off 0 and 1).
    """
    if how not in FUSIONS:
        raise FxcamError(f"Unknown fusion {how!r}; valid choices: {list(FUSIONS)}.")
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
        raise FxcamError(f"Unknown sign convention {sign!r}; valid choices: {list(SIGNS)}.")
    n, c = x.shape[:2]
    points = torch.nan_to_num(x.flatten(2).transpose(1, 2), nan=0.0)  # (N, S, C)
    points = points - points.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(points, full_matrices=False)
    proj = (points @ vh[:, 0, :, None]).squeeze(-1)  # (N, S)
    if sign == "max_abs":
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.view(n, *x.shape[2:])
