"""Layouts: turn a tapped activation into ``(N, C, H, W)``.

CNN feature maps already are NCHW. Vision transformers produce tokens ``(N, T, C)``: ``p``
prefix tokens (class, distillation, registers) followed by an ``h x w`` patch grid in
row-major order. Swin stages produce channels-last maps ``(N, H, W, C)``.

Three explicit transforms, all pure index operations (select, fold, permute):

- :class:`nchw` -- identity;
- :class:`vit` -- ``(N, p + h*w, C) -> (N, C, h, w)``, prefix tokens dropped;
- :class:`swin` -- ``(N, H, W, C) -> (N, C, H, W)``.

``reshape="auto"`` (the default of ``Explainer``) picks one per layer with :func:`resolve`,
from the model first and from shapes second:

1. The model says how it lays out tokens: timm models expose ``num_prefix_tokens`` and a
   ``patch_embed`` whose ``dynamic_feat_size(input_size)`` is the patch grid for the actual
   input (non-square inputs and ``dynamic_img_size=True`` models work); torchvision's
   ``VisionTransformer`` has one class token and ``patch_size``; torchvision's
   ``SwinTransformer`` and timm models with ``output_fmt == "NHWC"`` are channels-last.
2. The tapped tensor's shape is checked against the input size ``H x W``. A 4-D tensor is
   NCHW when its last two dims are a grid of the input at one integer stride ``s``
   (``floor`` or ``ceil`` of ``H/s`` and ``W/s``), NHWC when its middle two are; a tie (e.g.
   ``(N, 7, 7, 7)``) goes to the model's family. Tokens ``(N, T, C)`` that do not match the
   model's patch grid (another stage, a model fxcam does not know) fold into the grid
   ``(H/s, W/s)`` of an exact stride with ``prefix + h*w == T``: the model's prefix count if
   it has one, else the single layout with at most ``MAX_PREFIX_TOKENS`` prefix tokens (floor/ceil
   strides only as a last resort, for models fxcam does not know).
3. When neither decides (an ambiguous or non-spatial tensor), :class:`ReshapeError` names
   the explicit transform to pass, e.g. ``reshape=fxcam.reshape.vit(grid=(15, 20),
   prefix_tokens=1)``.

The gradient goes through the reshape exactly: the explainer applies the same transform to
the activation and to its gradient (both have the activation's shape), and every transform
is a re-indexing, so ``reshape(dy/dA)`` is ``dy/d reshape(A)`` for the kept positions.
The prefix tokens' gradients are dropped with the prefix tokens: they are no spatial
position, so GradCAM's channel weights average the gradient over the patch tokens only (as
pytorch-grad-cam does with a ``reshape_transform``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum

from torch import Tensor, nn

from .errors import ReshapeError

Reshape = Callable[[Tensor], Tensor]

MAX_PREFIX_TOKENS = 16  # search bound for prefix tokens when the model does not say


class Family(str, Enum):
    """How a model lays out its features (decides ties that shapes cannot)."""

    VIT = "vit"  # tokens (N, prefix + h*w, C)
    CHANNELS_LAST = "channels_last"  # Swin stages (N, H, W, C)
    CNN = "cnn"  # NCHW feature maps


class nchw:  # noqa: N801 - a transform factory, used like a function
    """Identity: the activation already is ``(N, C, *S)``."""

    def __call__(self, t: Tensor) -> Tensor:
        return t

    def __eq__(self, other: object) -> bool:
        return isinstance(other, nchw)

    def __hash__(self) -> int:
        return hash("nchw")

    def __repr__(self) -> str:
        return "nchw()"


class vit:  # noqa: N801
    """Tokens ``(N, T, C)`` -> ``(N, C, h, w)``: drop ``prefix_tokens`` leading tokens, fold the rest.

    ``grid=(h, w)``: the patch grid (rows, columns); ``prefix_tokens``: class, distillation and
    register tokens before the patches. Used as ``Explainer(..., reshape=vit(...))``, a field
    left ``None`` is filled per call from the model and the input size (see :func:`resolve`);
    called directly, ``grid=None`` folds into the squarest grid and ``prefix_tokens=None``
    means the remainder after the largest square.

    >>> vit(grid=(15, 20), prefix_tokens=1)(torch.zeros(2, 301, 192)).shape
    torch.Size([2, 192, 15, 20])
    """

    def __init__(self, grid: Sequence[int] | None = None, prefix_tokens: int | None = None) -> None:
        if grid is not None and (len(grid) != 2 or any(int(g) <= 0 for g in grid)):
            raise ReshapeError(f"vit: grid must be (rows, columns) of positive ints; got {grid!r}.")
        if prefix_tokens is not None and prefix_tokens < 0:
            raise ReshapeError(f"vit: prefix_tokens must be >= 0; got {prefix_tokens}.")
        self.grid = (int(grid[0]), int(grid[1])) if grid is not None else None
        self.prefix_tokens = prefix_tokens

    def _layout(self, tokens: int) -> tuple[int, int, int]:
        p = self.prefix_tokens
        if self.grid is not None:
            h, w = self.grid
            p = tokens - h * w if p is None else p
            if p < 0 or tokens - p != h * w:
                raise ReshapeError(
                    f"vit reshape: {tokens} tokens do not hold grid {self.grid} after {p} prefix tokens "
                    f"({p} + {h}*{w} = {p + h * w}). Pass grid=(h, w) and prefix_tokens=p with p + h*w = {tokens}."
                )
            return p, h, w
        if p is None:
            side = math.isqrt(tokens)
            p = tokens - side * side
        n = tokens - p
        if n <= 0:
            raise ReshapeError(f"vit reshape: {tokens} tokens leave no patch token after {p} prefix tokens.")
        h = math.isqrt(n)
        while n % h:
            h -= 1
        return p, h, n // h

    def __call__(self, t: Tensor) -> Tensor:
        if t.ndim != 3:
            raise ReshapeError(f"vit reshape expects tokens (N, T, C); got shape {tuple(t.shape)}.")
        p, h, w = self._layout(t.shape[1])
        return t[:, p:].unflatten(1, (h, w)).permute(0, 3, 1, 2)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, vit) and (self.grid, self.prefix_tokens) == (other.grid, other.prefix_tokens)

    def __hash__(self) -> int:
        return hash(("vit", self.grid, self.prefix_tokens))

    def __repr__(self) -> str:
        return f"vit(grid={self.grid}, prefix_tokens={self.prefix_tokens})"


class swin:  # noqa: N801
    """Channels-last ``(N, H, W, C)`` -> ``(N, C, H, W)`` (torchvision and timm Swin stages)."""

    def __call__(self, t: Tensor) -> Tensor:
        if t.ndim != 4:
            raise ReshapeError(
                f"swin reshape expects channels-last maps (N, H, W, C); got shape {tuple(t.shape)}. "
                f"Swin tokens (N, H*W, C) fold with fxcam.reshape.vit(grid=(H, W), prefix_tokens=0)."
            )
        return t.permute(0, 3, 1, 2)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, swin)

    def __hash__(self) -> int:
        return hash("swin")

    def __repr__(self) -> str:
        return "swin()"


# -- what the model says ----------------------------------------------------------------------


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    return None


def is_torchvision(model: nn.Module, cls: str) -> bool:
    return any(c.__name__ == cls and c.__module__.startswith("torchvision.") for c in type(model).__mro__)


def family(model: nn.Module) -> Family:
    """The model's feature layout: ViT tokens, channels-last (Swin) or NCHW (everything else)."""
    if is_torchvision(model, "VisionTransformer") or isinstance(getattr(model, "num_prefix_tokens", None), int):
        return Family.VIT
    if is_torchvision(model, "SwinTransformer") or getattr(model, "output_fmt", None) == "NHWC":
        return Family.CHANNELS_LAST
    return Family.CNN


def prefix_tokens(model: nn.Module) -> int | None:
    """Tokens before the patch grid: timm ``num_prefix_tokens``, 1 for torchvision's ViT, else None."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    if is_torchvision(model, "VisionTransformer"):
        return 1
    if family(model) is Family.CHANNELS_LAST:
        return 0
    return None


def patch_grid(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int] | None:
    """The model's patch grid for an input of ``input_size`` (H, W), or None if it has no patch embedding.

    timm: ``patch_embed.dynamic_feat_size`` (floor, or ceil with ``dynamic_img_pad``);
    torchvision ViT: ``(H // patch_size, W // patch_size)``.
    """
    if len(input_size) != 2:
        return None
    H, W = (int(s) for s in input_size)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and callable(getattr(pe, "dynamic_feat_size", None)):
        try:
            g = _pair(tuple(int(v) for v in pe.dynamic_feat_size((H, W))))
        except Exception:  # noqa: BLE001 - an unusual patch embedding: fall back to patch_size
            g = None
        if g is not None:
            return g
    ps = _pair(getattr(pe, "patch_size", None)) if pe is not None else None
    if ps is None and is_torchvision(model, "VisionTransformer"):
        ps = _pair(getattr(model, "patch_size", None))
    if ps is None:
        return None
    return (H // ps[0], W // ps[1])


# -- what the shapes say -----------------------------------------------------------------------


def _consistent(h: int, w: int, input_size: Sequence[int], exact: bool = False) -> bool:
    """Whether an ``h x w`` grid is the input downsampled by one integer stride ``s``.

    ``exact``: ``h * s == H`` and ``w * s == W`` (a patch embedding on a divisible input);
    otherwise floor or ceil of ``H / s`` and ``W / s`` (valid convolutions, padding).
    """
    if len(input_size) != 2 or h <= 0 or w <= 0:
        return False
    H, W = input_size
    if exact:
        return H % h == 0 and W % w == 0 and H // h == W // w
    for s in range(1, max(H, W) + 1):
        if h in (H // s, -(-H // s)) and w in (W // s, -(-W // s)):
            return True
        if -(-H // s) < h:  # the grid only shrinks as the stride grows
            break
    return False


def _token_layouts(
    t: int, input_size: Sequence[int], prefixes: Sequence[int], exact: bool
) -> list[tuple[int, tuple[int, int]]]:
    """Every ``(prefix, (h, w))`` with ``prefix + h*w == t`` and a grid consistent with the input (no 1x1 grid)."""
    found = []
    for p in prefixes:
        n = t - p
        if n < 2:
            continue
        found += [(p, (h, n // h)) for h in range(1, n + 1) if n % h == 0 and _consistent(h, n // h, input_size, exact)]
    return found


def _search_tokens(t: int, input_size: Sequence[int], prefix: int | None) -> list[tuple[int, tuple[int, int]]]:
    """Token layouts from shapes: exact strides first; floor/ceil strides only for unknown models."""
    if prefix is not None:  # the model's prefix count, or none (a sequence before the prefix tokens join)
        return _token_layouts(t, input_size, [prefix], True) or _token_layouts(t, input_size, [0], True)
    prefixes = range(MAX_PREFIX_TOKENS + 1)
    return _token_layouts(t, input_size, prefixes, True) or _token_layouts(t, input_size, prefixes, False)


def _explicit_hint(act: Tensor) -> str:
    if act.ndim == 3:
        return "reshape=fxcam.reshape.vit(grid=(h, w), prefix_tokens=p) with p + h*w = %d" % act.shape[1]
    return "reshape=fxcam.reshape.swin() (channels-last N, H, W, C) or reshape=fxcam.reshape.nchw() (N, C, H, W)"


def _cannot_decide(layer: str, act: Tensor, input_size: Sequence[int], why: str) -> ReshapeError:
    size = "x".join(str(s) for s in input_size)
    return ReshapeError(
        f"reshape='auto' cannot lay out layer '{layer}': its output has shape {tuple(act.shape)} for a {size} "
        f"input, and {why}. Pass the layout explicitly: {_explicit_hint(act)}; or any callable(Tensor) -> (N, C, H, W)."
    )


def _tokens(model: nn.Module, layer: str, act: Tensor, input_size: Sequence[int]) -> Reshape:
    t = act.shape[1]
    p = prefix_tokens(model)
    grid = patch_grid(model, input_size)
    if grid is not None and p is not None:
        for q in dict.fromkeys((p, 0)):  # the sequence after the prefix tokens are added, or before
            if t == q + grid[0] * grid[1]:
                return vit(grid=grid, prefix_tokens=q)
    found = _search_tokens(t, input_size, p)
    if len(found) == 1:
        q, g = found[0]
        return vit(grid=g, prefix_tokens=q)
    if not found:
        why = f"no patch grid of the input holds its {t} tokens"
        if p is not None:
            why += f" after the model's {p} prefix tokens (or none)"
        raise _cannot_decide(layer, act, input_size, why)
    options = ", ".join(f"vit(grid={g}, prefix_tokens={q})" for q, g in found[:4])
    raise _cannot_decide(layer, act, input_size, f"its {t} tokens fit several layouts: {options}")


def _maps(fam: Family, layer: str, act: Tensor, input_size: Sequence[int]) -> Reshape:
    _, a, b, c = act.shape
    as_nchw = _consistent(b, c, input_size)
    as_nhwc = _consistent(a, b, input_size)
    if as_nchw and not as_nhwc:
        return nchw()
    if as_nhwc and not as_nchw:
        return swin()
    if as_nchw and as_nhwc:  # e.g. (N, 7, 7, 7): the model's layout decides
        return swin() if fam is Family.CHANNELS_LAST else nchw()
    if fam is Family.CNN:  # valid convolutions shrink maps off the stride grid (inception: 8x8 at 299)
        return nchw()
    raise _cannot_decide(layer, act, input_size, "neither its last two dims (NCHW) nor its middle two (NHWC) are "
                         "a spatial grid of the input (attention scores or window partitions have no image layout)")


def _bind(spec: vit, model: nn.Module, layer: str, act: Tensor, input_size: Sequence[int]) -> vit:
    """``spec`` with a missing grid / prefix count filled from the model and the input size."""
    if act.ndim != 3:
        raise ReshapeError(f"Layer '{layer}': {spec!r} expects tokens (N, T, C); got shape {tuple(act.shape)}.")
    t = act.shape[1]
    if spec.grid is not None:
        return spec
    p = spec.prefix_tokens
    grid = patch_grid(model, input_size)
    if grid is not None:
        q = t - grid[0] * grid[1] if p is None else p
        if q >= 0 and t - q == grid[0] * grid[1]:
            return vit(grid=grid, prefix_tokens=q)
    found = _search_tokens(t, input_size, p)
    if len(found) == 1:
        return vit(grid=found[0][1], prefix_tokens=found[0][0])
    return spec  # square fallback of vit() itself


def resolve(spec, model: nn.Module, layer: str, act: Tensor, input_size: tuple[int, ...]) -> Reshape:
    """The transform for ``layer``'s activation ``act`` (one batch, input spatial size ``input_size``).

    ``spec``: ``"auto"`` (infer, see the module docstring), ``None``/``"nchw"`` (identity),
    a :class:`vit` (missing grid / prefix filled from the model and input), or any callable.
    """
    if isinstance(spec, vit):
        return _bind(spec, model, layer, act, input_size)
    if callable(spec) and not isinstance(spec, str):
        return spec
    if spec is None or spec == "nchw":
        return nchw()
    if spec != "auto":
        raise ReshapeError(
            f"reshape={spec!r} is not valid; pass 'auto', None, or a transform such as fxcam.reshape.vit(), "
            f"fxcam.reshape.swin(), fxcam.reshape.nchw() or any callable(Tensor) -> (N, C, H, W)."
        )
    fam = family(model)
    if act.ndim == 3:
        return _tokens(model, layer, act, input_size)
    if act.ndim == 4:
        return _maps(fam, layer, act, input_size)
    if act.ndim == 5:
        return nchw()
    raise ReshapeError(
        f"Layer '{layer}' outputs shape {tuple(act.shape)}, which has no spatial layout to map. Pick a layer with a "
        f"feature map (see fxcam.list_layers(model) and fxcam.layer_shapes(model)) or pass reshape= a callable "
        f"returning (N, C, H, W)."
    )


def resolve_all(spec, model: nn.Module, raw: dict[str, Tensor], input_size: tuple[int, ...]) -> dict[str, Reshape]:
    """:func:`resolve` for every layer of ``{layer: raw activation}``: ``{layer: transform}``."""
    return {k: resolve(spec, model, k, v, input_size) for k, v in raw.items()}


__all__ = [
    "Family", "Reshape", "family", "nchw", "patch_grid", "prefix_tokens", "resolve", "resolve_all", "swin", "vit"
]
