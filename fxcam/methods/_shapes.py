"""Shape helpers shared by the method modules (torch only)."""

from __future__ import annotations

from torch import Tensor


def spatial_dims(t: Tensor) -> tuple[int, ...]:
    """The spatial dims of an ``(N, C, *S)`` tensor: ``(2, ..., t.ndim - 1)``."""
    return tuple(range(2, t.ndim))


def expand_as_weights(w: Tensor, like: Tensor) -> Tensor:
    """Per-(image, channel) weights ``(N, C)`` viewed as ``(N, C, 1, ...)`` to broadcast against ``like``."""
    return w.reshape(*w.shape, *([1] * (like.ndim - w.ndim)))
