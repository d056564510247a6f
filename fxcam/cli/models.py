"""Model specs (``torchvision:resnet50``, ``timm:NAME``, ``path/to/file.py:factory``, ``demo:cnn``) -> models.

:func:`load_model` turns a spec and ``--weights`` into a :class:`LoadedModel`: the model in
eval mode on its device, its :class:`~fxcam.cli.images.Preprocess`, class names and default
layer. :func:`resolve_device` checks ``--device``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import closest
from .common import CLIError, one_line
from .images import Preprocess
from .weights import fetch_torchvision_weights, load_state_dict_file, looks_like_file, torchvision_weights

SPEC_FORMS = "torchvision:NAME, timm:NAME, path/to/file.py:FACTORY, demo:cnn or demo:vit"

Warn = Callable[[str], None]


def _no_warn(message: str) -> None:
    pass


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
        from ..layers import default_layer

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
    if weights is not None and not looks_like_file(weights):
        return _torchvision_pretrained(spec, name, torchvision_weights(enum, weights, spec), num_classes)
    default = enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None
    return _torchvision_built(spec, name, default, weights, num_classes, warn)


def _torchvision_pretrained(spec: str, name: str, chosen: Any, num_classes: int | None) -> LoadedModel:
    """torchvision's weights ``chosen`` (an enum member), with their own preprocessing and class names."""
    from torchvision import models

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
    fetch_torchvision_weights(chosen, spec)
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


def _torchvision_built(
    spec: str, name: str, default: Any, weights: str | None, num_classes: int | None, warn: Warn
) -> LoadedModel:
    """The architecture without torchvision's weights: random, or a state_dict file (``weights``)."""
    from torchvision import models

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
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


def _load_timm(spec: str, name: str, weights: str | None, num_classes: int | None, warn: Warn) -> LoadedModel:
    if importlib.util.find_spec("timm") is None:
        raise CLIError(
            f"{spec} needs timm, which is not installed. Install it with: pip install 'fxcam[timm]' (or pip install timm)."
        )
    pretrained = weights is not None and not looks_like_file(weights)
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
                       f"{one_line(exc)[:300]}") from None
    pre = _timm_preprocess(timm.data.resolve_model_data_config(model))
    categories = _timm_categories(model)
    if weights is None:
        warn(
            f"{spec} has random weights (no --weights given): its maps mean nothing. Pass --weights DEFAULT to "
            f"download timm's weights, or --weights PATH to a state_dict."
        )
    elif not pretrained:
        load_state_dict_file(model, weights, spec)
    return LoadedModel(model, spec, pre, categories, weights=weights if pretrained else (weights and str(Path(weights).resolve())))


def _timm_preprocess(cfg: dict[str, Any]) -> Preprocess:
    h, w = (int(v) for v in cfg["input_size"][1:])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    resize = int(math.floor(min(h, w) / crop_pct)) if crop_pct < 1.0 else None
    interp = cfg.get("interpolation", "bilinear")
    interp = interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"
    return Preprocess((h, w), resize, tuple(cfg["mean"]), tuple(cfg["std"]), interp, "timm data config")


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
        f"{one_line(exc)[:300].split('. ')[0]}); this machine seems to be offline. Pass --weights PATH to a state_dict file "
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
        from ..demo import CLASSES, DEFAULT_LAYERS, IMAGE_SIZE, load_demo_model
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
    module = _import_file(spec, path)
    fn = getattr(module, factory, None)
    if not callable(fn):
        callables = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_") and
                     getattr(v, "__module__", None) == module.__name__]
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
        if weights == "DEFAULT" or not looks_like_file(weights):
            raise CLIError(
                f"--weights {weights!r} applies to torchvision/timm models; for {spec} pass a state_dict path, "
                f"or load the weights inside {factory}()."
            )
        load_state_dict_file(model, weights, spec)
        described = str(Path(weights).resolve())
    pre = Preprocess((224, 224), source="ImageNet mean/std, resize")
    return LoadedModel(model, spec, pre, None, weights=described)


def _import_file(spec: str, path: str) -> Any:
    """The module of the file ``path`` names, imported under a private name."""
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
        raise CLIError(f"Importing '{path}' failed: {type(exc).__name__}: {one_line(exc)}") from exc
    finally:
        sys.path.remove(str(file.resolve().parent))
    return module


def _num_outputs(model: nn.Module) -> int | None:
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
    return None
