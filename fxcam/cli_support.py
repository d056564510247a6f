"""What the ``fxcam`` command needs around the library: model specs, images, atomic output.

This is an edge module (like :mod:`fxcam.viz`): it may use PIL and numpy. Nothing in the
core imports it.

- :func:`load_model` turns a spec (``torchvision:resnet50``, ``timm:NAME``,
  ``path/to/file.py:factory``, ``demo:cnn``) and ``--weights`` into a :class:`LoadedModel`:
  the model in eval mode, its :class:`Preprocess`, class names and default layer.
- :class:`Preprocess` turns a PIL image into the model's input tensor and remembers which
  box of the original image that input covers, so a map can be drawn back onto the
  original image (:func:`cam_to_image`).
- :func:`find_images` / :func:`read_image`: inputs, with one-line errors.
- :func:`atomic_dir`: output written to a hidden temporary folder beside the destination
  and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from .errors import FxcamError, closest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
SPEC_FORMS = "torchvision:NAME, timm:NAME, path/to/file.py:FACTORY, demo:cnn or demo:vit"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class CLIError(FxcamError):
    """A bad input to the command line: printed as one line, exit status 1."""


Warn = Callable[[str], None]


def _no_warn(message: str) -> None:
    pass


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
        in the original image's pixels (the region the model sees)."""
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
        x = TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float32)
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


def cam_to_image(cam: Tensor, image_size: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """A map at the model's input resolution ``(h, w)`` -> float32 ``(H, W)`` on the original image.

    ``image_size`` is PIL's ``(W, H)``. The map is resized bilinearly into ``box`` (the
    region the model saw); pixels outside the box (cropped away) are 0.
    """
    w0, h0 = image_size
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(max(right, left + 1), w0), min(max(bottom, top + 1), h0)
    region = F.interpolate(
        cam.detach().float().cpu()[None, None], size=(bottom - top, right - left), mode="bilinear", align_corners=False
    )[0, 0]
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
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise CLIError(
                    f"Folder '{raw}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                    f"pass image files or a folder that contains some."
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise CLIError(f"'{raw}' is neither a file nor a folder; pass image files or folders of images.")
        else:
            raise CLIError(f"Image '{raw}' does not exist (working directory: {os.getcwd()}); check the path.")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def check_image(path: Path) -> tuple[int, int]:
    """Read only the header: ``(W, H)``, or a one-line error for a file PIL cannot read."""
    try:
        with Image.open(path) as img:
            return img.size
    except UnidentifiedImageError:
        raise CLIError(
            f"Cannot read '{path}' as an image: it is not a format PIL recognizes. "
            f"Pass image files (e.g. {', '.join(IMAGE_SUFFIXES[:4])})."
        ) from None
    except OSError as exc:
        raise CLIError(f"Cannot read image '{path}': {exc}.") from None


def read_image(path: Path) -> Image.Image:
    """The whole image, decoded, EXIF orientation applied, as RGB."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise CLIError(f"Cannot read '{path}' as an image: it is not a format PIL recognizes.") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise CLIError(f"Cannot decode image '{path}': {exc}. Is the file complete?") from None


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output name stems: the file stems, with ``-2``, ``-3`` ... appended to repeats."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


# --------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model ready to explain: eval mode, on its device, with how to feed it."""

    model: nn.Module
    spec: str
    preprocess: Preprocess
    categories: list[str] | None = None
    known_layer: str | None = None  # the demo models name theirs
    weights: str | None = None  # what was loaded, for the manifest

    def default_layer(self) -> str:
        if self.known_layer is not None:
            return self.known_layer
        from .layers import default_layer

        return default_layer(self.model, self.preprocess.size)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(
            f"--device {name}: CUDA is not available here (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}). Use --device cpu."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0.")
    return device


def load_model(
    spec: str,
    weights: str | None = None,
    *,
    size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
    warn: Warn = _no_warn,
) -> LoadedModel:
    """Build the model ``spec`` names, load ``weights``, put it in eval mode on ``device``.

    ``weights``: ``None`` (random for torchvision/timm; what the factory/demo loads),
    ``"DEFAULT"`` or a torchvision weight name (downloads, or reads torch's hub cache), or a
    path to a ``state_dict`` file. ``size``: the input ``(H, W)``, overriding the model's own.
    """
    kind, sep, name = spec.partition(":")
    if sep and kind == "torchvision":
        loaded = _load_torchvision(spec, name, weights, num_classes, warn)
    elif sep and kind == "timm":
        loaded = _load_timm(spec, name, weights, num_classes, warn)
    elif sep and kind == "demo":
        loaded = _load_demo(spec, name, weights, num_classes)
    elif ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        path, _, factory = spec.rpartition(":")
        loaded = _load_factory(spec, path, factory, weights, num_classes)
    else:
        raise CLIError(_bad_spec_message(spec))
    loaded.preprocess = loaded.preprocess.with_size(size)
    loaded.model = loaded.model.eval().to(device)
    return loaded


def _bad_spec_message(spec: str) -> str:
    hint = ""
    if spec.endswith(".py"):
        hint = f" Name the function that builds the model: '{spec}:make_model'."
    elif spec.startswith("demo") or spec in ("cnn", "vit"):
        hint = " Try 'demo:cnn' or 'demo:vit'."
    else:
        import torchvision

        if spec in torchvision.models.list_models():
            hint = f" Did you mean 'torchvision:{spec}'?"
        elif spec.partition(":")[0] in ("tv", "torch", "torchvision.models", "hf", "hub"):
            hint = " Use torchvision:NAME or timm:NAME."
    return f"Model spec {spec!r} is not understood; the forms are {SPEC_FORMS}.{hint}"


def _load_torchvision(spec: str, name: str, weights: str | None, num_classes: int | None, warn: Warn) -> LoadedModel:
    from torchvision import models

    names = models.list_models()
    if name not in names:
        raise CLIError(
            f"torchvision has no model {name!r}. Closest: {closest(name, names)}. "
            f"All {len(names)} names: torchvision.models.list_models()."
        )
    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        enum = None
    default = enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    chosen = None
    if weights is not None and not _looks_like_file(weights):
        chosen = _weights_member(enum, weights, spec)
    if chosen is not None:
        if num_classes is not None and num_classes != len(chosen.meta.get("categories", [])):
            raise CLIError(
                f"--num-classes {num_classes} does not fit {chosen} ({len(chosen.meta['categories'])} classes); "
                f"drop --num-classes, or pass --weights PATH to a checkpoint with {num_classes} classes."
            )
        t = chosen.transforms()
        if not hasattr(t, "crop_size"):
            raise CLIError(
                f"{spec} is not an image classifier ({type(t).__name__} preprocessing); the CLI explains classifiers. "
                f"Use the Python API with a target from fxcam.targets for detection or segmentation models."
            )
        _fetch_torchvision_weights(chosen, spec)
        model = models.get_model(name, weights=chosen)  # reads the checkpoint just cached
        pre = Preprocess(
            (int(t.crop_size[0]),) * 2,
            int(t.resize_size[0]),
            tuple(t.mean),
            tuple(t.std),
            t.interpolation.value,
            f"{chosen}.transforms()",
        )
        return LoadedModel(model, spec, pre, list(chosen.meta.get("categories") or []) or None, weights=str(chosen))
    try:
        model = models.get_model(name, weights=None, **kwargs)
    except TypeError as exc:
        raise CLIError(f"torchvision:{name} cannot be built with {kwargs}: {exc}.") from None
    crop = 224
    categories = None
    if default is not None:
        t = default.transforms()
        crop = int(getattr(t, "crop_size", [224])[0])
        cats = default.meta.get("categories")
        if cats and len(cats) == _num_outputs(model):
            categories = list(cats)
    pre = Preprocess((crop, crop), source="ImageNet mean/std, resize (no torchvision weights transforms)")
    if weights is None:
        warn(
            f"{spec} has random weights (no --weights given): its maps mean nothing. Pass --weights DEFAULT to "
            f"download torchvision's weights, or --weights PATH to a state_dict."
        )
        return LoadedModel(model, spec, pre, categories, weights=None)
    load_state_dict_file(model, weights, spec)
    return LoadedModel(model, spec, pre, categories, weights=str(Path(weights).resolve()))


def _looks_like_file(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES) or Path(value).exists()


def _weights_member(enum: Any, value: str, spec: str):
    members = list(enum.__members__) if enum is not None else []
    if enum is None or not members:
        raise CLIError(
            f"--weights {value}: torchvision has no pretrained weights for {spec}; pass --weights PATH to a state_dict."
        )
    key = value.split(".")[-1]  # accept ResNet50_Weights.IMAGENET1K_V2
    if key not in enum.__members__:
        raise CLIError(
            f"--weights {value!r} is neither a file nor a weights name of {spec}; valid names: {members} "
            f"(DEFAULT = {enum.DEFAULT.name if hasattr(enum, 'DEFAULT') else '-'}), or a path to a state_dict file."
        )
    return enum[key]


def _fetch_torchvision_weights(weights: Any, spec: str) -> None:
    """Put the checkpoint in torch's hub cache (a no-op when it is there), or explain why not."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        return
    try:
        torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, map_location="cpu")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CLIError(
            f"--weights {weights.name.split('.')[-1] if hasattr(weights, 'name') else weights}: could not download "
            f"{weights} for {spec} from {weights.url} ({reason}); this machine seems to be offline. "
            f"Pass --weights PATH to a state_dict file (.pt/.pth, saved with torch.save(model.state_dict(), PATH)), "
            f"or copy the checkpoint to {cached}."
        ) from None


def _load_timm(spec: str, name: str, weights: str | None, num_classes: int | None, warn: Warn) -> LoadedModel:
    if importlib.util.find_spec("timm") is None:
        raise CLIError(
            f"{spec} needs timm, which is not installed. Install it with: pip install 'fxcam[timm]' (or pip install timm)."
        )
    pretrained = weights is not None and not _looks_like_file(weights)
    if pretrained and weights != "DEFAULT":
        raise CLIError(
            f"--weights {weights!r}: for timm models use DEFAULT (timm's pretrained weights; pick a tag with "
            f"timm:NAME.TAG) or a path to a state_dict file."
        )
    if pretrained and "huggingface_hub" not in sys.modules and not _can_resolve("huggingface.co"):
        # no network: read the Hugging Face cache only, instead of a minute of retries (set before the import)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise CLIError(
            f"timm has no model {name!r}. Closest: {closest(base, timm.list_models())}. "
            f"Search with timm.list_models('*{base[:6]}*')."
        )
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm and huggingface_hub raise many kinds
        if pretrained and _is_download_error(exc):
            raise CLIError(_timm_offline(spec, exc)) from None
        raise CLIError(f"timm could not build {name} ({kwargs or 'no options'}): {type(exc).__name__}: "
                       f"{_one_line(exc)[:300]}") from None
    cfg = timm.data.resolve_model_data_config(model)
    h, w = (int(v) for v in cfg["input_size"][1:])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = int(math.floor(min(h, w) / crop_pct)) if crop_pct < 1.0 else None
    interp = cfg.get("interpolation", "bilinear")
    interp = interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"
    pre = Preprocess((h, w), resize, tuple(cfg["mean"]), tuple(cfg["std"]), interp, "timm data config")
    categories = _timm_categories(model)
    if weights is None:
        warn(
            f"{spec} has random weights (no --weights given): its maps mean nothing. Pass --weights DEFAULT to "
            f"download timm's weights, or --weights PATH to a state_dict."
        )
    elif not pretrained:
        load_state_dict_file(model, weights, spec)
    return LoadedModel(model, spec, pre, categories, weights=weights if pretrained else (weights and str(Path(weights).resolve())))


def _is_download_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, TimeoutError, urllib.error.URLError)):
        return True
    if type(exc).__module__.split(".")[0] in ("huggingface_hub", "requests", "urllib3", "httpx"):
        return True
    return any(w in str(exc).lower() for w in ("offline", "connection", "download", "resolve host"))


def _can_resolve(host: str) -> bool:
    """Whether ``host`` resolves (True behind a proxy, which may resolve it for us)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _timm_offline(spec: str, exc: BaseException) -> str:
    return (
        f"--weights DEFAULT: could not download the pretrained weights of {spec} ({type(exc).__name__}: "
        f"{_one_line(exc)[:300].split('. ')[0]}); this machine seems to be offline. Pass --weights PATH to a state_dict file "
        f"(.pt/.pth/.safetensors), or run once with internet access to fill the Hugging Face cache."
    )


def _timm_categories(model: nn.Module) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(info.num_classes())]
        return names if len(names) == _num_outputs(model) else None
    except Exception:  # noqa: BLE001 - class names are a nicety
        return None


def _load_demo(spec: str, name: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    try:
        from .demo import CLASSES, DEFAULT_LAYERS, IMAGE_SIZE, load_demo_model
    except ImportError as exc:
        raise CLIError(f"The demo models are not available in this installation ({exc}).") from None
    if name not in DEFAULT_LAYERS:
        raise CLIError(f"Unknown demo model {name!r}; choose demo:{' or demo:'.join(sorted(DEFAULT_LAYERS))}.")
    if num_classes is not None and num_classes != len(CLASSES):
        raise CLIError(f"--num-classes does not apply to {spec}: it has {len(CLASSES)} classes {list(CLASSES)}.")
    try:
        model = load_demo_model(name)
    except FileNotFoundError as exc:
        raise CLIError(f"{spec}: {exc}") from None
    described = "shipped demo weights"
    if weights is not None and weights != "DEFAULT":
        load_state_dict_file(model, weights, spec)
        described = str(Path(weights).resolve())
    pre = Preprocess(
        (IMAGE_SIZE, IMAGE_SIZE), None, None, None, "bilinear", "demo models take [0, 1] images and normalize inside"
    )
    return LoadedModel(model, spec, pre, list(CLASSES), known_layer=DEFAULT_LAYERS[name], weights=described)


def _load_factory(spec: str, path: str, factory: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"Model file '{path}' (from spec {spec!r}) does not exist; check the path.")
    module_name = f"_fxcam_user_model_{abs(hash(str(file.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(module_name, file)
    if mod_spec is None or mod_spec.loader is None:
        raise CLIError(f"Cannot import '{path}' as a Python module.")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.resolve().parent))  # the file's own imports of its neighbours
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        raise CLIError(f"Importing '{path}' failed: {type(exc).__name__}: {_one_line(exc)}") from exc
    finally:
        sys.path.remove(str(file.resolve().parent))
    fn = getattr(module, factory, None)
    if not callable(fn):
        callables = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_") and
                     getattr(v, "__module__", None) == module_name]
        raise CLIError(
            f"'{path}' has no callable {factory!r}; functions and classes defined there: {callables or 'none'}. "
            f"Spec form: path/to/file.py:FACTORY, where FACTORY() returns an nn.Module."
        )
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        if kwargs:
            raise CLIError(f"{factory}(num_classes={num_classes}) failed: {exc}; drop --num-classes.") from None
        raise CLIError(f"Calling {factory}() from '{path}' failed: {exc}. The factory must take no arguments.") from exc
    if not isinstance(model, nn.Module):
        raise CLIError(f"{factory}() from '{path}' returned {type(model).__name__}, not a torch.nn.Module.")
    described = None
    if weights is not None:
        if weights == "DEFAULT" or not _looks_like_file(weights):
            raise CLIError(
                f"--weights {weights!r} applies to torchvision/timm models; for {spec} pass a state_dict path, "
                f"or load the weights inside {factory}()."
            )
        load_state_dict_file(model, weights, spec)
        described = str(Path(weights).resolve())
    pre = Preprocess((224, 224), source="ImageNet mean/std, resize")
    return LoadedModel(model, spec, pre, None, weights=described)


def _num_outputs(model: nn.Module) -> int | None:
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
    return None


def load_state_dict_file(model: nn.Module, path: str, spec: str) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (or safetensors) into ``model``, strictly."""
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"Weights file '{path}' does not exist; --weights takes a state_dict file or DEFAULT.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except ImportError:
        raise CLIError(f"Reading '{path}' needs the safetensors package: pip install safetensors.") from None
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors of all kinds
        raise CLIError(
            f"Cannot load weights '{path}': {type(exc).__name__}: {_one_line(exc)[:200]}. --weights takes a "
            f"state_dict saved with torch.save(model.state_dict(), PATH) (a whole pickled model is not accepted)."
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"'{path}' does not hold a state_dict (a dict of tensors); got {type(state).__name__}.")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        hint = " If the classifier has another number of classes, pass --num-classes." if mismatched else ""
        raise CLIError(
            f"Weights '{path}' do not fit {spec}: {'; '.join(parts) or _one_line(exc)[:200]}.{hint}"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------- output
def check_out(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing destination unless ``overwrite``; refuse a file where a folder goes."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise CLIError(f"{what} '{out}' exists and is not a folder; choose another {what}.")
        if not overwrite:
            raise CLIError(f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}.")


def check_out_file(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing file unless ``overwrite``, a folder, or a missing parent folder."""
    if out.is_dir():
        raise CLIError(f"{what} '{out}' is a folder; pass a file name (e.g. {out / 'model.onnx'}).")
    if out.exists() and not overwrite:
        raise CLIError(f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}.")
    if not out.parent.is_dir():
        raise CLIError(f"The folder of {what} '{out}' does not exist; create '{out.parent}' first.")


class _Terminated(BaseException):
    """SIGTERM during a run: unwinds like KeyboardInterrupt so the temporary output is removed."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out``; on success it becomes ``out``, else it is removed.

    An existing ``out`` is replaced only with ``overwrite`` and only once the new result is
    complete. Parent folders created for ``out`` are removed again on failure. A run killed
    with SIGKILL can leave a hidden ``.NAME.tmp-*`` folder behind, never a partial ``out``.
    """
    out = Path(out)
    check_out(out, overwrite)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the result's mode
    try:
        with _sigterm_unwinds():
            yield tmp
            check_out(out, overwrite)  # it may have appeared meanwhile
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, _Terminated):
            raise KeyboardInterrupt("terminated") from None
        raise


# --------------------------------------------------------------------------- tables
def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, align: str | None = None) -> str:
    """Plain-text columns; ``align``: one ``<`` or ``>`` per column."""
    rows = [[str(c) for c in r] for r in rows]
    if header is not None:
        rows = [[str(h) for h in header]] + rows
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = align or "<" * len(widths)
    lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in rows]
    if header is not None:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

