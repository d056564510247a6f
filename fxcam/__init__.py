"""fxcam: class activation maps compiled into the model's fx graph.

The package imports lazily (PEP 562): ``import fxcam`` loads nothing but this file, and each
public name loads its module on first use (``fxcam.Explainer`` loads the compiler, and with it
torchvision's tracing policy). So ``import fxcam`` costs no more than Python's own start-up,
and torchvision, timm and onnx are imported only when something needs them.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module that defines it (a module's own name: the submodule itself)
_EXPORTS = {
    "Explainer": "api",
    "explain": "api",
    "Explanation": "maps",
    "Instrumented": "instrumented",
    "instrument": "instrumented",
    "export": "exporter",  # writes .pt2/.onnx; graphs are built by fxcam.graph
    "FxcamError": "errors",
    "FxcamTypeError": "errors",
    "LayerNotFoundError": "errors",
    "ReshapeError": "errors",
    "TraceError": "errors",
    "default_layer": "layers",
    "layer_shapes": "layers",
    "list_layers": "trace",
}
_SUBMODULES = ("dff", "methods", "metrics", "ops", "reshape", "targets")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'fxcam' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return list(__all__)


if _TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports
    from . import dff, methods, metrics, ops, reshape, targets
    from .api import Explainer, explain
    from .errors import FxcamError, FxcamTypeError, LayerNotFoundError, ReshapeError, TraceError
    from .exporter import export
    from .instrumented import Instrumented, instrument
    from .layers import default_layer, layer_shapes
    from .maps import Explanation
    from .trace import list_layers
