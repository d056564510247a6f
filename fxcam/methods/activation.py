"""Methods that need activations only (no gradient, no target)."""

from __future__ import annotations

from torch import Tensor

from . import register


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
