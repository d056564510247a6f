"""Images in and maps out: model preprocessing, finding and reading images, maps drawn back onto them.

- :class:`Preprocess` turns a PIL image into the model's input tensor and remembers which
  box of the original image that input covers, so a map can be drawn back onto the
  original image (:func:`cam_to_image`).
- :func:`find_images` / :func:`check_image` / :func:`read_image`: inputs, with one-line errors.

Bit depths. 8-bit images of any mode (``1``, ``L``, ``LA``, ``P``, ``RGBA``, ``CMYK``, ...)
are read with ``convert("RGB")``, as always. PIL holds images deeper than 8 bits as one grey
channel; :func:`read_image` returns those as a mode ``F`` image with values in [0, 1], which
:class:`Preprocess` resizes in float and repeats to 3 channels:

- 16-bit integers (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; PNG, TIFF, PGM): value / 65535;
- ``I`` (32-bit integers; PIL's mode for 16-bit PGMs, rescaled to 0..65535 by PIL, and for
  integer TIFFs): read as 16-bit, value / 65535; values outside 0..65535 are an error;
- ``F`` (32-bit float TIFFs): taken as they are; values outside [0, 1], NaN or infinity are
  an error (fxcam does not guess a range: rescale the image to [0, 1]).

(PIL reads 16-bit colour PNGs as 8-bit RGB itself.)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..ops import upsample
from .common import CLIError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")


# --------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocess:
    """PIL image -> ``(3, H, W)`` float tensor, and the box of the image that tensor shows.

    ``size``: the model's input ``(H, W)``. ``resize``: ``None`` resizes the whole image to
    ``size`` (every pixel is explained); an int resizes the shorter side to ``resize`` and
    center-crops ``size``, which is what torchvision's and timm's eval transforms do.
    ``mean``/``std``: per-channel normalization after scaling to [0, 1] (``None``: none,
    for models that normalize inside, like the demo models).
    """

    size: tuple[int, int]
    resize: int | None = None
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "ImageNet mean/std, resize"

    def __call__(self, image: Image.Image) -> tuple[Tensor, tuple[float, float, float, float]]:
        """``(x, box)``: ``x`` is ``(3, H, W)`` float32; ``box`` is ``(left, top, right, bottom)``
        in the original image's pixels (the region the model sees).

        ``image``: RGB, or a grey mode ``F`` image with values in [0, 1] (what
        :func:`read_image` returns for images deeper than 8 bits), resized in float."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        mode = InterpolationMode(self.interpolation)
        w0, h0 = image.size
        if self.resize is None:
            img = TF.resize(image, list(self.size), interpolation=mode, antialias=True)
            box = (0.0, 0.0, float(w0), float(h0))
        else:  # the same calls, in the same order, as torchvision's ImageClassification
            img = TF.resize(image, [self.resize], interpolation=mode, antialias=True)
            w1, h1 = img.size
            img = TF.center_crop(img, list(self.size))
            ch, cw = self.size
            top, left = int(round((h1 - ch) / 2.0)), int(round((w1 - cw) / 2.0))
            sx, sy = w0 / w1, h0 / h1
            box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        x = _to_tensor(img)
        if self.mean is not None:
            x = TF.normalize(x, list(self.mean), list(self.std))
        return x, box

    def describe(self) -> dict[str, Any]:
        return {
            "input_size": list(self.size),
            "resize_shorter_side": self.resize,
            "center_crop": self.resize is not None,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "interpolation": self.interpolation,
            "from": self.source,
        }

    def with_size(self, size: tuple[int, int] | None) -> Preprocess:
        """The same pipeline at input ``size``, keeping the crop fraction of a crop pipeline."""
        if size is None or tuple(size) == self.size:
            return self
        resize = None
        if self.resize is not None:
            resize = int(math.floor(min(size) * self.resize / min(self.size)))
        return Preprocess(tuple(size), resize, self.mean, self.std, self.interpolation, self.source + ", --size")


def _to_tensor(img: Image.Image) -> Tensor:
    """A resized RGB or ``F`` PIL image -> ``(3, H, W)`` float32 in [0, 1]."""
    from torchvision.transforms import functional as TF

    if img.mode == "F":  # grey in [0, 1]; a bicubic resize may overshoot a little, as uint8 would clip
        return TF.pil_to_tensor(img).clamp(0, 1).expand(3, -1, -1).contiguous()
    return TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float32)


def cam_to_image(cam: Tensor, image_size: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """A map at the model's input resolution ``(h, w)`` -> float32 ``(H, W)`` on the original image.

    ``image_size`` is PIL's ``(W, H)``. The map is resized bilinearly into ``box`` (the
    region the model saw); pixels outside the box (cropped away) are 0.
    """
    w0, h0 = image_size
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(max(right, left + 1), w0), min(max(bottom, top + 1), h0)
    region = upsample(cam.detach().float().cpu()[None], (bottom - top, right - left))[0]
    if (left, top, right, bottom) == (0, 0, w0, h0):
        return region.clamp(0, 1).numpy()
    canvas = torch.zeros(h0, w0)
    canvas[top:bottom, left:right] = region
    return canvas.clamp(0, 1).numpy()


# --------------------------------------------------------------------------- images
def find_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given and the image files inside folders (sorted by name, not recursive)."""
    found: list[Path] = []
    for raw in inputs:
        try:
            found.extend(_images_at(raw))
        except OSError as exc:  # a name too long, a loop of links, a folder not readable
            raise CLIError(f"Cannot read '{raw}': {exc.strerror or exc}; check the path.") from None
    return list(dict.fromkeys(p.resolve() for p in found))


def _images_at(raw: str) -> list[Path]:
    """``[raw]`` if it is a file, the image files in it if it is a folder."""
    path = Path(raw)
    if path.is_dir():
        inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not inside:
            raise CLIError(
                f"Folder '{raw}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                f"pass image files or a folder that contains some."
            )
        return inside
    if path.is_file():
        return [path]
    if path.exists():
        raise CLIError(f"'{raw}' is neither a file nor a folder; pass image files or folders of images.")
    raise CLIError(f"Image '{raw}' does not exist (working directory: {os.getcwd()}); check the path.")


def check_image(path: Path) -> tuple[int, int]:
    """Read only the header: ``(W, H)``, or a one-line error for a file PIL cannot read."""
    if path.stat().st_size == 0:
        raise CLIError(f"Image '{path}' is an empty file (0 bytes); pass image files.")
    with _decoding(path, "read"):
        with Image.open(path) as img:
            return img.size


def read_image(path: Path) -> Image.Image:
    """The whole image, decoded, EXIF orientation applied: RGB for 8-bit images, a grey mode
    ``F`` image with values in [0, 1] for deeper ones (see the module's docstring)."""
    with _decoding(path, "decode"):
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    if img.mode in DEEP_MODES:
        return _unit_float(img, path)
    try:
        return img.convert("RGB")
    except ValueError as exc:  # a mode PIL cannot convert
        raise CLIError(
            f"Cannot convert image '{path}' (mode {img.mode}) to RGB: {exc}; save it as RGB or grey."
        ) from None


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """PIL's exceptions while opening or decoding ``path`` -> one-line CLIErrors.

    PIL's decoders raise OSError, SyntaxError and ValueError for truncated or corrupt data,
    but a damaged file can raise others (struct.error, IndexError, ...): all are the file's fault."""
    try:
        yield
    except UnidentifiedImageError:
        raise CLIError(
            f"Cannot read '{path}' as an image: it is not a format PIL recognizes. "
            f"Pass image files (e.g. {', '.join(IMAGE_SUFFIXES[:4])})."
        ) from None
    except Image.DecompressionBombError as exc:
        raise CLIError(f"Cannot read image '{path}': {exc} Pass a smaller image.") from None
    except MemoryError:  # a header that claims more pixels than the data holds, or a huge image
        raise CLIError(
            f"Cannot {what} image '{path}': not enough memory for the size its header gives; "
            f"is the file damaged, or too large for this machine?"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        reason = str(exc) if isinstance(exc, (OSError, ValueError, SyntaxError)) else f"{type(exc).__name__}: {exc}"
        if what == "read":
            raise CLIError(f"Cannot read image '{path}': {reason}.") from None
        raise CLIError(f"Cannot decode image '{path}': {reason}. Is the file complete?") from None


DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _unit_float(img: Image.Image, path: Path) -> Image.Image:
    """A grey image deeper than 8 bits -> mode ``F`` in [0, 1]: integers / 65535, floats as they are."""
    values = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(values).all():
            raise CLIError(
                f"Float image '{path}' holds NaN or infinite values; fxcam reads float images as "
                f"intensities in [0, 1]. Replace them, or save the image as 8- or 16-bit."
            )
        low, high = float(values.min()), float(values.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise CLIError(
                f"Float image '{path}' has values in [{low:g}, {high:g}]; fxcam reads float images as "
                f"intensities in [0, 1]. Rescale it to [0, 1], or save it as 8- or 16-bit."
            )
        unit = values.astype(np.float32).clip(0, 1)
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise CLIError(
                f"Integer image '{path}' (mode {img.mode}) has values in [{low}, {high}]; fxcam reads integer "
                f"images deeper than 8 bits as 16-bit (0..65535). Save it as 16-bit, or as float in [0, 1]."
            )
        unit = (values.astype(np.float64) / 65535).astype(np.float32)
    return Image.fromarray(unit)  # float32 (H, W): mode F


def display_image(image: Image.Image) -> Image.Image:
    """What :func:`read_image` returned, as 8-bit RGB for overlays (``F`` in [0, 1] -> 0..255)."""
    if image.mode == "RGB":
        return image
    grey = np.round(np.asarray(image, dtype=np.float32) * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8 (H, W): mode L


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output name stems: the file stems, with ``-2``, ``-3`` ... appended to repeats."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems
