"""Procedural, seeded toy scenes for the offline demo.

Every scene is a 96x96 RGB image with one *target* shape (its class is the label; radius
12.5-21 px) drawn at a random position, scale, rotation and saturated colour on a cluttered,
textured background (low-frequency colour noise, stripes, soft blobs, pixel noise), plus
2-4 smaller *distractor* shapes (radius 3.5-6.5 px) of other kinds (other classes or
bars) and other hues, equally saturated, so that "where is the object" is not answered by
"where is the colourful thing". The six classes are mirror-symmetric, mostly convex
shapes: the pointing game of a CAM (is its maximum on the object?) is then a fair test.

Images are float32 in ``[0, 1]``, channels first. The demo models
(:func:`fxcam.demo.load_demo_model`) take exactly these images: they normalize internally
with :data:`MEAN` and :data:`STD`, so ``model(images)`` is all there is to it.
:func:`standardize` is exported for models that expect standardized input.

Generation is pure torch, vectorized over the batch, and deterministic given ``seed``
(a private ``torch.Generator``; the global RNG is never touched).
"""

from __future__ import annotations

import math

import torch

from ..errors import FxcamError
from ..ops import resize

__all__ = ["CLASSES", "IMAGE_SIZE", "MEAN", "STD", "make_scenes", "standardize"]

#: Class names, index = label.
CLASSES = ("circle", "square", "ellipse", "cross", "triangle", "heart")
#: Side of every scene in pixels.
IMAGE_SIZE = 96
#: Per-channel mean / std used to normalize the scenes; the demo models apply
#: ``(x - MEAN) / STD`` themselves. (Measured on 4096 scenes with the earlier, smaller
#: targets; today's scenes give about (0.459, 0.459, 0.459) / (0.147, 0.147, 0.147). The
#: constants are part of the trained models, so they stay.)
MEAN = (0.455, 0.456, 0.456)
STD = (0.139, 0.139, 0.140)

_CHUNK = 128
_TARGET_RADIUS = (12.5, 21.0)  # range of the target's radius, in pixels
_DISTRACTOR_RADIUS = (3.5, 6.5)
_CROSS_HALF_WIDTH = 0.45  # arm half-width of the cross, in units of its radius
_BAR = len(CLASSES)  # extra distractor kind: an elongated bar
# How far (in units of the shape's radius r) each kind reaches from its centre; used to
# keep the target inside the image.
_EXTENT = (1.0, 1.15, 1.2, 1.11, 1.25, 1.15, 1.06)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """``(images - MEAN) / STD`` for (N, 3, H, W) or (3, H, W) images in [0, 1]."""
    shape = (3, 1, 1)
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std


# --------------------------------------------------------------------------- helpers
def _uniform(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorized HSV -> RGB; inputs of any equal shape in [0, 1], output shape + (3,)."""
    k = torch.tensor([5.0, 3.0, 1.0])
    kk = (k + h.unsqueeze(-1) * 6.0) % 6.0
    x = torch.clamp(torch.minimum(kk, 4.0 - kk), 0.0, 1.0)
    return v.unsqueeze(-1) - v.unsqueeze(-1) * s.unsqueeze(-1) * x


def _polygon(u: torch.Tensor, v: torch.Tensor, k: int, inner: float) -> torch.Tensor:
    """Star polygon with k outer vertices at radius 1 and inner vertices at ``inner``.

    With ``inner = cos(pi / k)`` this is the regular k-gon. Folds every point into the
    wedge between an outer vertex (angle 0) and the next inner vertex (angle pi/k) and
    tests which side of that edge it lies on.
    """
    rho = torch.sqrt(u * u + v * v)
    wedge = 2.0 * math.pi / k
    a = torch.remainder(torch.atan2(v, u), wedge)
    a = torch.minimum(a, wedge - a)
    qx, qy = rho * torch.cos(a), rho * torch.sin(a)
    bx, by = inner * math.cos(math.pi / k), inner * math.sin(math.pi / k)
    dx, dy = bx - 1.0, by
    return dx * qy - dy * (qx - 1.0) >= 0.0


def _shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of rotated, radius-normalized coordinates (u, v) in a shape."""
    if kind == 0:  # circle
        return u * u + v * v <= 1.0
    if kind == 1:  # square (circumradius 1.15)
        return _polygon(u / 1.15, v / 1.15, 4, math.cos(math.pi / 4))
    if kind == 2:  # ellipse with semi-axes 1.2 and 0.65
        return (u / 1.2) ** 2 + (v / 0.65) ** 2 <= 1.0
    if kind == 3:  # cross / plus
        w = _CROSS_HALF_WIDTH
        au, av = u.abs(), v.abs()
        return ((au <= w) & (av <= 1.0)) | ((av <= w) & (au <= 1.0))
    if kind == 4:  # equilateral triangle (circumradius 1.25)
        return _polygon(u / 1.25, v / 1.25, 3, math.cos(math.pi / 3))
    if kind == 5:  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y pointing up
        x = u * 1.05
        y = -v * 1.05 + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if kind == _BAR:  # distractor bar
        return (u.abs() <= 1.0) & (v.abs() <= 0.28)
    raise FxcamError(f"unknown shape kind {kind}")


def _draw(kinds, cx, cy, r, theta, grid) -> torch.Tensor:
    """Boolean masks (n, H, W) of n shapes; all arguments are (n,) tensors."""
    yy, xx = grid
    n = kinds.shape[0]
    out = torch.zeros(n, yy.shape[-2], xx.shape[-1], dtype=torch.bool)
    for kind in torch.unique(kinds).tolist():
        idx = (kinds == kind).nonzero(as_tuple=True)[0]
        c, s = torch.cos(theta[idx]).view(-1, 1, 1), torch.sin(theta[idx]).view(-1, 1, 1)
        dx = xx - cx[idx].view(-1, 1, 1)
        dy = yy - cy[idx].view(-1, 1, 1)
        rr = r[idx].view(-1, 1, 1)
        u = (c * dx + s * dy) / rr
        v = (-s * dx + c * dy) / rr
        out[idx] = _shape_mask(int(kind), u, v)
    return out


def _background(g: torch.Generator, n: int, size: int, grid) -> torch.Tensor:
    yy, xx = grid
    # Muted base colour and low-frequency colour noise.
    base = _hsv_to_rgb(
        torch.rand(n, generator=g), _uniform(g, n, 0.0, 0.35), _uniform(g, n, 0.3, 0.7)
    )
    img = base.view(n, 3, 1, 1).expand(n, 3, size, size).clone()
    cells = int(torch.randint(4, 9, (1,), generator=g))
    noise = torch.rand(n, 3, cells, cells, generator=g) - 0.5
    noise = resize(noise, (size, size))
    img = img + noise * _uniform(g, (n, 1, 1, 1), 0.1, 0.35)

    # Stripes of a second muted colour, on about two thirds of the scenes.
    phi = _uniform(g, n, 0.0, math.pi).view(n, 1, 1)
    freq = _uniform(g, n, 1.0 / 20.0, 1.0 / 6.0).view(n, 1, 1)
    phase = _uniform(g, n, 0.0, 2.0 * math.pi).view(n, 1, 1)
    wave = 0.5 + 0.5 * torch.sin(
        2.0 * math.pi * freq * (xx * torch.cos(phi) + yy * torch.sin(phi)) + phase
    )
    amp = _uniform(g, n, 0.0, 0.6) * (torch.rand(n, generator=g) < 0.66)
    stripe = _hsv_to_rgb(
        torch.rand(n, generator=g), _uniform(g, n, 0.0, 0.4), _uniform(g, n, 0.2, 0.8)
    )
    alpha = (amp.view(n, 1, 1) * wave).unsqueeze(1)
    img = img * (1 - alpha) + stripe.view(n, 3, 1, 1) * alpha

    # Soft Gaussian blobs.
    nb = 5
    bx = _uniform(g, (n, nb, 1, 1), 0.0, size)
    by = _uniform(g, (n, nb, 1, 1), 0.0, size)
    sig = _uniform(g, (n, nb, 1, 1), 4.0, 14.0)
    # Separable Gaussian: exp(-dx^2/2s^2) * exp(-dy^2/2s^2), (n, nb, H, W).
    w = torch.exp(-((xx - bx) ** 2) / (2 * sig * sig)) * torch.exp(
        -((yy - by) ** 2) / (2 * sig * sig)
    )
    w = w * _uniform(g, (n, nb, 1, 1), 0.0, 0.7)
    bcol = _hsv_to_rgb(
        torch.rand(n, nb, generator=g),
        _uniform(g, (n, nb), 0.0, 0.5),
        _uniform(g, (n, nb), 0.15, 0.85),
    )  # (n, nb, 3)
    # Blend all blobs at once: their colours mixed by weight, covering 1 - prod(1 - w).
    cover = 1.0 - torch.prod(1.0 - w, dim=1, keepdim=True)
    mix = torch.einsum("nbhw,nbc->nchw", w, bcol) / (w.sum(1, keepdim=True) + 1e-6)
    img = img + cover * (mix - img)
    return img


def _paint(img, mask, colour, g) -> torch.Tensor:
    """Paint ``colour`` (n, 3) where ``mask`` (n, H, W), with a gentle linear shading."""
    n, _, h, w = img.shape
    ramp = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w)
    shade = 1.0 + _uniform(g, (n, 1, 1, 1), -0.15, 0.15) * ramp
    col = colour.view(n, 3, 1, 1) * shade
    m = mask.unsqueeze(1)
    return torch.where(m, col, img)


# --------------------------------------------------------------------------- public
def make_scenes(
    n: int,
    seed: int = 0,
    *,
    distractors: tuple[int, int] = (2, 4),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` scenes deterministically from ``seed``.

    Returns ``(images, labels, masks)``:

    * ``images``: float32 (n, 3, 96, 96) in [0, 1] (the demo models normalize
      internally; see :data:`MEAN`, :data:`STD`, :func:`standardize`).
    * ``labels``: int64 (n,), index into :data:`CLASSES`; exactly balanced up to
      ``n % 6`` (a seeded permutation of ``0, 1, ..., 5, 0, 1, ...``).
    * ``masks``: bool (n, 96, 96), the visible pixels of the target shape (it is
      drawn on top, so every pixel of its shape is visible).

    ``distractors`` is the inclusive (min, max) number of small distractor shapes.
    The same ``(n, seed)`` always gives the same tensors (on the same torch build).
    """
    if not isinstance(n, int) or n < 0:
        raise FxcamError(f"n must be a non-negative int, got {n!r}")
    lo, hi = distractors
    if not 0 <= lo <= hi:
        raise FxcamError(f"distractors must be (min, max) with 0 <= min <= max, got {distractors!r}")
    g = torch.Generator().manual_seed(int(seed))
    size = IMAGE_SIZE
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, size, size)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    # Fixed-size chunks keep the working set in cache (several times faster than one
    # big batch) and keep the result a function of (n, seed) only.
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        images[start:stop], masks[start:stop] = _make_chunk(g, labels[start:stop], lo, hi)
    return images, labels, masks


def _make_chunk(g, labels, lo, hi):
    n = labels.shape[0]
    k = len(CLASSES)
    size = IMAGE_SIZE
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    grid = (coords.view(1, size, 1), coords.view(1, 1, size))

    img = _background(g, n, size, grid)

    # Target geometry (drawn last, but sampled first: distractors avoid it).
    r = _uniform(g, n, *_TARGET_RADIUS)
    ext = torch.tensor(_EXTENT)[labels] * r + 1.0
    cx = ext + torch.rand(n, generator=g) * (size - 2 * ext)
    cy = ext + torch.rand(n, generator=g) * (size - 2 * ext)
    theta = _uniform(g, n, 0.0, 2.0 * math.pi)
    hue = torch.rand(n, generator=g)
    colour = _hsv_to_rgb(hue, _uniform(g, n, 0.55, 1.0), _uniform(g, n, 0.6, 1.0))

    # Distractors: other kinds (never the label), other hues, small, mostly off-target.
    count = torch.randint(lo, hi + 1, (n,), generator=g)
    for j in range(hi):
        active = j < count
        d = torch.randint(0, k, (n,), generator=g)  # k options: k-1 other classes + bar
        dkind = torch.where(d >= labels, d + 1, d)
        dr = _uniform(g, n, *_DISTRACTOR_RADIUS)
        dx = torch.rand(n, generator=g) * size
        dy = torch.rand(n, generator=g) * size
        for _ in range(6):  # resample the ones that would hide behind the target
            bad = (dx - cx) ** 2 + (dy - cy) ** 2 < (ext + dr) ** 2
            if not bool(bad.any()):
                break
            dx = torch.where(bad, torch.rand(n, generator=g) * size, dx)
            dy = torch.where(bad, torch.rand(n, generator=g) * size, dy)
        dtheta = _uniform(g, n, 0.0, 2.0 * math.pi)
        dhue = (hue + _uniform(g, n, 0.17, 0.83)) % 1.0
        dcol = _hsv_to_rgb(dhue, _uniform(g, n, 0.5, 1.0), _uniform(g, n, 0.5, 1.0))
        dmask = _draw(dkind, dx, dy, dr, dtheta, grid) & active.view(n, 1, 1)
        img = _paint(img, dmask, dcol, g)

    masks = _draw(labels, cx, cy, r, theta, grid)
    img = _paint(img, masks, colour, g)

    img = img + torch.randn(img.shape, generator=g) * _uniform(g, (n, 1, 1, 1), 0.0, 0.05)
    return img.clamp_(0.0, 1.0), masks
