"""fxcam: class activation maps compiled into the model's fx graph."""

from . import dff, methods, ops, reshape, targets
from .api import Explainer, Explanation, Instrumented, explain, instrument
from .errors import FxcamError, LayerNotFoundError, ReshapeError, TraceError
from .export import export  # fxcam.export is this function; helpers: `from fxcam.export import ...`
from .layers import default_layer, layer_shapes
from .trace import list_layers

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "FxcamError",
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
    "ops",
    "reshape",
    "targets",
    "__version__",
]
