"""fxcam: class activation maps compiled into the model's fx graph."""

from . import dff, methods, metrics, ops, reshape, targets
from .api import Explainer, explain
from .errors import FxcamError, FxcamTypeError, LayerNotFoundError, ReshapeError, TraceError
from .exporter import export  # writes .pt2/.onnx; graphs are built by fxcam.graph
from .instrument import Instrumented, instrument
from .maps import Explanation
from .layers import default_layer, layer_shapes
from .trace import list_layers

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "FxcamError",
    "FxcamTypeError",
    "Instrumented",
    "LayerNotFoundError",
    "ReshapeError",
    "TraceError",
    "default_layer",
    "dff",
    "explain",
    "export",
    "instrument",
    "layer_shapes",
    "list_layers",
    "methods",
    "metrics",
    "ops",
    "reshape",
    "targets",
    "__version__",
]
