"""Overlays, colormaps and image grids: the edge where maps become pictures.

This is the only module of fxcam that uses numpy and PIL. Colormaps are small built-in
tables (no matplotlib, no OpenCV): ``jet`` is the classic piecewise-linear map, ``gray``
is the identity, and ``turbo``, ``viridis`` and ``inferno`` are 52-entry tables (every
5th entry of the 256-entry maps, 8 bits per channel) interpolated linearly; they match
matplotlib's maps to within 0.005 per channel.

* :func:`to_pil` turns a tensor / array / PIL image into a PIL image.
* :func:`apply_colormap` maps values in [0, 1] to RGB floats.
* :func:`overlay` blends a CAM over an image.
* :func:`grid` tiles images, with optional captions and row / column titles.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import FxcamError

__all__ = ["COLORMAPS", "apply_colormap", "colormap_lut", "grid", "overlay", "to_pil"]

# Knots of the piecewise-linear jet map, per channel: (position, value).
_JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)

# 52 RGB knots (hex, 8 bits per channel) at positions 0, 5/255, 10/255, ..., 1.
_TABLES = {
    "turbo": (
        "30123b36215f3b2f803f3e9c424bb54559cb4666dd4773eb4680f6458cfd4099ff38a5fb"
        "2fb2f427bee91fc9dd1ad4d018ddc21ae4b622ebaa2ff19b3ff68a52fa7a65fd6979fe59"
        "8bff4b9cfe40a9fb39b7f735c3f134d0ea34dbe236e5d938eecf3af5c53afaba39fdae35"
        "fea130fe932afc8423f9751df46617ef5811e84b0ce14109d83706ce2d04c32503b71d02"
        "a916019b0f018b09027a0403"
    ),
    "viridis": (
        "44015446085c471063481769481d6f482475472a7a46307e453781433d844142873f4889"
        "3d4e8a3a538b38598c355e8d33638d31688e2e6d8e2c718e2a768e297b8e27808e25848e"
        "23898e218e8d20928c1f978b1e9c891fa18821a58524aa8328ae802eb37c35b7793dbc74"
        "46c06f50c46a5ac86465cb5e70cf577cd25089d54895d840a2da37b0dd2fbddf26cae11f"
        "d8e219e5e419f1e51dfde725"
    ),
    "inferno": (
        "00000402020c0504170a072210092d160b391e0c45260c512f0a5b380962400a67490b6a"
        "510e6c59106e61136e69166e71196e781c6d801f6c88226a902568982766a02a63a82e5f"
        "b0315bb73557bf3952c63d4dcc4248d34743d94d3ddf5337e45a31e9612bed6925f1711f"
        "f47918f78212f98b0bfa9407fb9d07fca60cfcb014fbba1ffac42af8cd37f6d746f4e156"
        "f2ea69f2f27df5f992fcffa4"
    ),
}

#: Names accepted wherever a ``colormap`` argument is.
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")

_LUT_SIZE = 256
_LUT_CACHE: dict[str, np.ndarray] = {}


def colormap_lut(name: str) -> np.ndarray:
    """The (256, 3) float32 RGB table of a colormap; entry i is the colour of i / 255."""
    if not isinstance(name, str) or name not in COLORMAPS:
        raise FxcamError(f"unknown colormap {name!r}; valid colormaps are {', '.join(COLORMAPS)}")
    if name not in _LUT_CACHE:
        t = np.linspace(0.0, 1.0, _LUT_SIZE)
        if name == "gray":
            lut = np.repeat(t[:, None], 3, axis=1)
        elif name == "jet":
            lut = np.stack([np.interp(t, *zip(*knots)) for knots in _JET], axis=1)
        else:
            raw = bytes.fromhex(_TABLES[name])
            knots = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3) / 255.0
            pos = np.linspace(0.0, 1.0, len(knots))
            lut = np.stack([np.interp(t, pos, knots[:, c]) for c in range(3)], axis=1)
        lut = lut.astype(np.float32)
        lut.setflags(write=False)
        _LUT_CACHE[name] = lut
    return _LUT_CACHE[name]


def apply_colormap(values, colormap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] (any shape; clipped) to float32 RGB in [0, 1], shape + (3,).

    Interpolates linearly between the 256 table entries. NaNs are an error.
    """
    lut = colormap_lut(colormap)
    v = _to_numpy(values).astype(np.float64)
    if np.isnan(v).any():
        raise FxcamError("apply_colormap got NaN values; normalize the map to [0, 1] first")
    x = np.clip(v, 0.0, 1.0) * (_LUT_SIZE - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, _LUT_SIZE - 1)
    frac = (x - lo)[..., None].astype(np.float32)
    return lut[lo] * (1.0 - frac) + lut[hi] * frac


# --------------------------------------------------------------------------- conversion
def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    if isinstance(x, Image.Image):
        return np.asarray(x)
    return np.asarray(x)


def _image_array(x) -> np.ndarray:
    """Any accepted image -> HWC (C in 1, 3, 4) array, dtype uint8 or float in [0, 1]."""
    if isinstance(x, Image.Image):
        if x.mode not in ("L", "RGB", "RGBA"):
            x = x.convert("RGB")
        a = np.asarray(x)
        return a[..., None] if a.ndim == 2 else a
    is_tensor = isinstance(x, torch.Tensor)
    if not is_tensor and not isinstance(x, np.ndarray):
        raise FxcamError(
            f"expected a PIL image, a numpy array or a torch tensor, got {type(x).__name__}"
        )
    a = _to_numpy(x)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim == 3:
        chw = a.shape[0] in (1, 3, 4)
        hwc = a.shape[-1] in (1, 3, 4)
        # Tensors are channels-first by convention, arrays channels-last.
        if chw and (is_tensor or not hwc):
            a = np.moveaxis(a, 0, -1)
        elif not hwc:
            raise FxcamError(
                f"cannot read an image of shape {tuple(a.shape)}: expected (H, W), "
                "(C, H, W) or (H, W, C) with C in 1, 3, 4"
            )
    else:
        raise FxcamError(
            f"cannot read an image of shape {tuple(a.shape)}: expected (H, W), (C, H, W), "
            "(H, W, C) or (1, C, H, W)"
        )
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise FxcamError("integer images must have values in 0..255")
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise FxcamError("image contains NaN values")
        return np.clip(a, 0.0, 1.0)
    raise FxcamError(f"unsupported image dtype {a.dtype}")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image, a numpy array or a torch tensor.

    Accepted layouts: (H, W), (H, W, C) (arrays) or (C, H, W) (tensors; arrays too when
    the last axis is not 1/3/4), and (1, C, H, W); C in 1, 3, 4. uint8 values are used
    as they are, floats must be in [0, 1] (clipped), bools become 0 / 255. One channel
    gives mode "L", three "RGB", four "RGBA".
    """
    if isinstance(image, Image.Image):
        return image
    a = _as_uint8(_image_array(image))
    if a.shape[-1] == 1:
        return Image.fromarray(a[..., 0], mode="L")
    return Image.fromarray(np.ascontiguousarray(a), mode="RGB" if a.shape[-1] == 3 else "RGBA")


def _rgb_float(image) -> np.ndarray:
    a = _image_array(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a[..., :3]


def _cam_array(cam, size_hw: tuple[int, int]) -> np.ndarray:
    c = _to_numpy(cam)
    if c.ndim == 3 and c.shape[0] == 1:
        c = c[0]
    if c.ndim != 2:
        raise FxcamError(
            f"cam must be a single map of shape (H, W) or (1, H, W), got shape {tuple(c.shape)}; "
            "pass one map at a time (e.g. cams[i])"
        )
    if c.dtype == np.bool_ or np.issubdtype(c.dtype, np.integer):
        c = c.astype(np.float32)
    c = c.astype(np.float32)
    if np.isnan(c).any():
        raise FxcamError("cam contains NaN values")
    if c.shape != size_hw:
        h, w = size_hw
        c = np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.BILINEAR))
    return np.clip(c, 0.0, 1.0)


def overlay(image, cam, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Blend a colour-mapped CAM over an image; returns an RGB PIL image of the image's size.

    ``image``: PIL image, uint8 (H, W, 3) array, or float (3, H, W) / (H, W, 3) in [0, 1]
    (anything :func:`to_pil` reads). ``cam``: (H', W') or (1, H', W') tensor / array with
    values in [0, 1] (clipped); resized bilinearly to the image when the sizes differ.
    ``alpha`` is the weight of the heat map: 0 gives the image, 1 the heat map alone.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise FxcamError(f"alpha must be in [0, 1], got {alpha}")
    colormap_lut(colormap)  # validate the name before any work
    img = _rgb_float(image)
    heat = apply_colormap(_cam_array(cam, img.shape[:2]), colormap)
    out = (1.0 - alpha) * img + alpha * heat
    return Image.fromarray(_as_uint8(out), mode="RGB")


# --------------------------------------------------------------------------- grid
def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _check_labels(labels, n: int, what: str):
    if labels is None:
        return None
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise FxcamError(f"{what} has {len(labels)} entries, expected {n}")
    return labels


def grid(
    images,
    nrow: int | None = None,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    fill=(255, 255, 255),
    text_color=(0, 0, 0),
) -> Image.Image:
    """Tile images into one RGB PIL image.

    ``images``: a sequence of anything :func:`to_pil` reads, a (N, C, H, W) tensor or a
    (N, H, W, C) array. ``nrow``: images per row (default ``ceil(sqrt(N))``), as in
    torchvision's ``make_grid``. ``labels``: one caption per image, written above it.
    ``row_labels`` / ``col_labels``: titles left of each row / above each column.
    ``pad``: pixels between tiles and around the border. Tiles of different sizes are
    placed in cells of the largest size, centred.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise FxcamError(
            "grid expects a sequence of images, a (N, C, H, W) tensor or a (N, H, W, C) array, "
            f"got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if hasattr(images, "shape") else "")
        )
    if not items:
        raise FxcamError("grid got no images")
    if pad < 0:
        raise FxcamError(f"pad must be >= 0, got {pad}")
    n = len(items)
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if int(nrow) < 1:
        raise FxcamError(f"nrow must be >= 1, got {nrow}")
    ncols = min(int(nrow), n)
    nrows = math.ceil(n / ncols)
    labels = _check_labels(labels, n, "labels")
    row_labels = _check_labels(row_labels, nrows, "row_labels")
    col_labels = _check_labels(col_labels, ncols, "col_labels")

    tiles = [to_pil(im).convert("RGB") for im in items]
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 4
    cap_h = line_h if labels else 0
    top_h = line_h if col_labels else 0
    left_w = max(_text_size(probe, s, font)[0] for s in row_labels) + 6 if row_labels else 0

    width = left_w + pad + ncols * (cell_w + pad)
    height = top_h + pad + nrows * (cap_h + cell_h + pad)
    canvas = Image.new("RGB", (width, height), tuple(fill))
    draw = ImageDraw.Draw(canvas)

    def x_of(col):
        return left_w + pad + col * (cell_w + pad)

    def y_of(row):
        return top_h + pad + row * (cap_h + cell_h + pad)

    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncols)
        x, y = x_of(col), y_of(row) + cap_h
        canvas.paste(tile, (x + (cell_w - tile.width) // 2, y + (cell_h - tile.height) // 2))
        if labels:
            tw, _ = _text_size(draw, labels[i], font)
            draw.text((x + max((cell_w - tw) // 2, 0), y - line_h + 1), labels[i], fill=tuple(text_color), font=font)
    for col, text in enumerate(col_labels or []):
        tw, _ = _text_size(draw, text, font)
        draw.text((x_of(col) + max((cell_w - tw) // 2, 0), 1), text, fill=tuple(text_color), font=font)
    for row, text in enumerate(row_labels or []):
        _, th = _text_size(draw, text, font)
        y = y_of(row) + cap_h + (cell_h - th) // 2
        draw.text((2, y), text, fill=tuple(text_color), font=font)
    return canvas
