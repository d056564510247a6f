"""Layouts: turn a tapped activation into ``(N, C, H, W)``.

CNN feature maps already are NCHW. Vision transformers produce tokens ``(N, T, C)`` with
prefix tokens (class, distillation, registers) before a patch grid; Swin produces NHWC.
A reshape transform is any ``callable(Tensor) -> Tensor`` applied to the activation and to
its gradient alike (both have the activation's shape), so the gradient goes through the
reshape unchanged.

``reshape="auto"`` (the default) picks the transform per layer from the tensor's rank, the
model and the input size; ``nchw()``, ``vit(...)`` and ``swin()`` are the explicit choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .errors import ReshapeError

Reshape = Callable[[Tensor], Tensor]


class nchw:  # noqa: N801 - a transform factory, used like a function
    """Identity: the activation already is ``(N, C, *S)``."""

    def __call__(self, t: Tensor) -> Tensor:
        return t

    def __repr__(self) -> str:
        return "nchw()"


class vit:  # noqa: N801
    """Tokens ``(N, T, C)`` -> ``(N, C, h, w)``: drop ``prefix_tokens`` leading tokens, fold the rest.

    ``grid=(h, w)``: the patch grid; when ``None`` it is inferred as the squarest factorization of
    ``T - prefix_tokens`` (pass it explicitly for non-square inputs). ``prefix_tokens``: class,
    distillation and register tokens before the patches (``None``: inferred as the remainder
    after the largest square that fits).
    """

    def __init__(self, grid: tuple[int, int] | None = None, prefix_tokens: int | None = None) -> None:
        self.grid = tuple(grid) if grid is not None else None
        self.prefix_tokens = prefix_tokens

    def _layout(self, tokens: int) -> tuple[int, int, int]:
        p = self.prefix_tokens
        if self.grid is not None:
            h, w = self.grid
            p = tokens - h * w if p is None else p
            if p < 0 or tokens - p != h * w:
                raise ReshapeError(
                    f"vit reshape: {tokens} tokens do not hold grid {self.grid} after {p} prefix tokens. "
                    f"Pass grid=(h, w) with h*w = tokens - prefix_tokens."
                )
            return p, h, w
        if p is None:
            side = math.isqrt(tokens)
            p = tokens - side * side
        n = tokens - p
        h = math.isqrt(n)
        while h > 1 and n % h:
            h -= 1
        if h * (n // h) != n or n <= 0:
            raise ReshapeError(f"vit reshape: cannot fold {n} patch tokens into a grid; pass grid=(h, w).")
        return p, h, n // h

    def __call__(self, t: Tensor) -> Tensor:
        if t.ndim != 3:
            raise ReshapeError(f"vit reshape expects tokens (N, T, C); got shape {tuple(t.shape)}.")
        p, h, w = self._layout(t.shape[1])
        return t[:, p:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"vit(grid={self.grid}, prefix_tokens={self.prefix_tokens})"


class swin:  # noqa: N801
    """Channels-last ``(N, H, W, C)`` -> ``(N, C, H, W)`` (torchvision and timm Swin stages)."""

    def __call__(self, t: Tensor) -> Tensor:
        if t.ndim != 4:
            raise ReshapeError(f"swin reshape expects (N, H, W, C); got shape {tuple(t.shape)}.")
        return t.permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return "swin()"


def _patch_size(model: nn.Module) -> int | None:
    for attr in ("patch_size",):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return v
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if isinstance(ps, (tuple, list)):
        return int(ps[0])
    if isinstance(ps, int):
        return ps
    return None


def _prefix_tokens(model: nn.Module) -> int | None:
    for attr in ("num_prefix_tokens",):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return v
    if hasattr(model, "class_token"):  # torchvision VisionTransformer
        return 1
    return None


def resolve(spec, model: nn.Module, layer: str, act: Tensor, input_size: tuple[int, ...]) -> Reshape:
    """The transform for ``layer``'s activation ``act`` given ``spec`` (None/"auto"/callable)."""
    if callable(spec) and not isinstance(spec, str):
        return spec
    if spec is None or spec == "nchw":
        return nchw()
    if spec != "auto":
        raise ReshapeError(
            f"reshape={spec!r} is not valid; pass 'auto', None, or a transform such as fxcam.reshape.vit(), "
            f"fxcam.reshape.swin(), fxcam.reshape.nchw() or any callable(Tensor) -> (N, C, H, W)."
        )
    if act.ndim == 4:
        if _looks_channels_last(model, act):
            return swin()
        return nchw()
    if act.ndim == 3:
        ps = _patch_size(model)
        prefix = _prefix_tokens(model)
        if ps is not None and len(input_size) == 2:
            grid = (input_size[0] // ps, input_size[1] // ps)
            return vit(grid=grid, prefix_tokens=prefix)
        return vit(prefix_tokens=prefix)
    if act.ndim in (2, 5):
        return nchw() if act.ndim == 5 else _no_layout(layer, act)
    return _no_layout(layer, act)


def _looks_channels_last(model: nn.Module, act: Tensor) -> bool:
    name = type(model).__name__.lower()
    return "swin" in name and act.shape[1] == act.shape[2] and act.shape[3] != act.shape[1]


def _no_layout(layer: str, act: Tensor) -> Reshape:
    raise ReshapeError(
        f"Layer '{layer}' outputs shape {tuple(act.shape)}, which has no spatial layout to map. Pick a layer with a "
        f"feature map (see fxcam.list_layers(model)) or pass reshape= a callable returning (N, C, H, W)."
    )
