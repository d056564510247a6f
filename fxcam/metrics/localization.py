"""Localization metrics: do the maps point at the object? Torch only."""

from __future__ import annotations

from torch import Tensor


def pointing_game(cams: Tensor, masks: Tensor) -> Tensor:
    """Hits ``(N,)`` bool: is each map's maximum on its object? ``cams (N, H, W)``, ``masks (N, H, W)``.

    The pointing game of Zhang et al. (2016) without the 15-pixel tolerance: the argmax pixel
    (the first one, if several tie) must lie inside the ground-truth mask.
    """
    flat = cams.flatten(1).argmax(1)
    return masks.flatten(1).to(cams.device).gather(1, flat[:, None]).squeeze(1).bool()


__all__ = ["pointing_game"]
