"""Writing files: :func:`export` writes a module to ``.pt2`` (torch.export) or ``.onnx``.

What it writes: an :class:`~fxcam.Instrumented` model ``x -> (logits, {layer: activation})``,
an explainer graph (:func:`fxcam.graph.explainer_graph`, ``Explainer.to_graph``), an
explainer (its top-1 graph is built first), or any module taking image batches. This module
only writes; building graphs is :mod:`fxcam.graph`. The function is public as ``fxcam.export``.

Names in the exported files
---------------------------
============================  ================================  ================================
what                          ``.onnx`` input/output names      ``.pt2`` (``ep.module()(...)``)
============================  ================================  ================================
image batch ``(N, C, H, W)``  ``input``                         first positional argument
class indices ``(N,)`` int64  ``class_idx``                     second positional argument
model output                  ``logits``                        ``out[0]``
  (not one tensor)            ``output.<key path>`` per tensor  ``out[0]`` (same structure)
activation of ``layer``       ``act:<layer>``                   ``out[1]["<layer>"]``
explainer map ``(N, H, W)``   ``cam``                           ``out[1]``
============================  ================================  ================================

The batch dimension is dynamic (``dynamic_batch=True``): one file serves any batch size.
Everything else (channels, height, width) is fixed to the example input's.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install fxcam[onnx]``) and
imported only inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .compiling import compiling
from .errors import FxcamError
from .graph import ACT, CLASS_IDX, INPUT, LOGITS, META, batched, first_line
from .instrumented import Instrumented

SUFFIXES = (".pt2", ".onnx")
ONNX_HINT = "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: pip install fxcam[onnx]"
_PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which ONNX weights go to an external data file


# -- writing files ---------------------------------------------------------------------------


def export(
    module: nn.Module | Any,
    example_input: Tensor | Sequence[Tensor],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``module`` to ``path``: ``.pt2`` (torch.export) or ``.onnx``, chosen by the suffix.

    ``module``: an :class:`~fxcam.Instrumented` model (``x -> (logits, {layer: act})``), an
    explainer graph from :meth:`Explainer.to_graph` (``x -> (logits, cam)``), an
    :class:`~fxcam.Explainer` (its top-1 graph is built from ``example_input`` first), or any
    module taking image batches. ``example_input``: an image batch ``(N, C, H, W)`` (for a
    graph with a ``class_idx`` input, zeros are added), or the tuple of inputs.

    With ``dynamic_batch`` (default) the batch dimension is symbolic: one file runs any batch
    size, including 1 (the example is duplicated when its batch is 1, which torch.export would
    otherwise specialize). Outputs are named as the module docstring's table says: ``logits``,
    ``act:<layer>``, ``cam``; the names and the layer list are also stored in the file
    (``.pt2`` extra file ``fxcam.json``, ONNX ``metadata_props["fxcam"]``).

    The file is written to a temporary name next to ``path`` and moved into place, so a
    failed export never leaves a half-written file. Reloaded with ``torch.export.load(path)``
    / ``onnxruntime.InferenceSession(path)``, the outputs equal eager within float32 rounding:
    ``.pt2`` bit-identical in fxcam's tests, ONNX within 1e-5 (absolute + relative) on logits
    and activations, and explainer maps within ~1e-6 of the eager ``Explainer`` (tested at
    1e-4 on [0, 1] maps). Returns ``path``.

    >>> fxcam.export(fxcam.instrument(model.eval(), "layer4"), torch.randn(1, 3, 224, 224), "resnet.onnx")
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FxcamError(
            f"Cannot export to {str(path)!r}: unknown suffix {path.suffix!r}. Use '.pt2' (torch.export, reload with "
            f"torch.export.load) or '.onnx' (ONNX, run with onnxruntime)."
        )
    if suffix == ".onnx":
        _require_onnx()
    if not path.parent.is_dir():
        raise FxcamError(f"Cannot export to {str(path)!r}: directory {str(path.parent)!r} does not exist.")
    module = _as_module(module, example_input)
    args = _example_args(module, example_input)
    if _in_training(module):
        raise FxcamError(
            f"{_describe(module)} is in training mode: the export would bake in BatchNorm's batch statistics and "
            f"random dropout. Call model.eval() before exporting."
        )
    inputs, outputs, meta = _names(module, args)
    if dynamic_batch and meta.get("input_shape", [None])[0] is not None:
        raise FxcamError(
            f"This explainer graph was traced for batch size {meta['input_shape'][0]} (dynamic_batch=False); export "
            f"it with dynamic_batch=False, or rebuild it with to_graph(..., dynamic_batch=True)."
        )
    ep = _torch_export(module, args, dynamic_batch)
    meta = {**meta, "inputs": inputs, "outputs": outputs, "dynamic_batch": dynamic_batch}
    with _staging(path) as staged:
        if suffix == ".pt2":
            torch.export.save(ep, staged / path.name, extra_files={f"{META}.json": json.dumps(meta)})
        else:
            _write_onnx(ep, staged / path.name, inputs, outputs, meta)
    return path


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise FxcamError(f"{ONNX_HINT} (missing: {', '.join(missing)}).")


def _as_module(module: Any, example_input: Any) -> nn.Module:
    if callable(getattr(module, "to_graph", None)) and not isinstance(module, nn.Module):  # an Explainer
        x = example_input[0] if isinstance(example_input, (tuple, list)) else example_input
        return module.to_graph(x)
    if not isinstance(module, nn.Module):
        raise FxcamError(
            f"export() takes an fxcam.Instrumented model, an explainer graph (Explainer.to_graph()), an Explainer or "
            f"an nn.Module; got {type(module).__name__}."
        )
    return module


def _example_args(module: nn.Module, example_input: Any) -> tuple[Tensor, ...]:
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise FxcamError(
            f"example_input must be a tensor (N, C, H, W) or a tuple of tensors; got {type(example_input).__name__}."
        )
    if not batched(module, args[0]):
        raise FxcamError(
            f"example_input must be a batched image tensor (N, C, H, W); got shape {tuple(args[0].shape)}. "
            f"Add a batch dimension with x[None]."
        )
    meta = getattr(module, "meta", {}).get(META, {}) if isinstance(module, fx.GraphModule) else {}
    traced = meta.get("input_shape")
    if traced is not None and list(args[0].shape[1:]) != traced[1:]:
        raise FxcamError(
            f"This explainer graph was traced for inputs (N, {', '.join(map(str, traced[1:]))}); the example input has "
            f"shape {tuple(args[0].shape)}. Pass an example of the traced size, or build the graph again: to_graph(x)."
        )
    if len(args) == 1 and meta.get("inputs") == [INPUT, CLASS_IDX]:
        args += (torch.zeros(args[0].shape[0], dtype=torch.long, device=args[0].device),)
    return tuple(a.detach() for a in args)


def _in_training(module: nn.Module) -> bool:
    """Whether a module of the model is in training mode (fxcam's own wrappers and containers do not count)."""
    if isinstance(module, Instrumented) or (isinstance(module, fx.GraphModule) and META in module.meta):
        return False  # compiled by fxcam from an eval-mode copy of the model (fxcam.trace.eval_copy)
    ours = (Instrumented, fx.GraphModule)
    return any(m.training for m in module.modules() if not isinstance(m, ours) and type(m) is not nn.Module)


def _describe(module: nn.Module) -> str:
    return f"{getattr(module, 'model_name', None) or type(module).__name__}"


def _names(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[list[str], list[str], dict[str, Any]]:
    """ONNX input and output names (see the module docstring) and the metadata stored in the file."""
    meta = getattr(module, "meta", {}).get(META) if isinstance(module, fx.GraphModule) else None
    if meta is not None:
        return list(meta["inputs"]), list(meta["outputs"]), dict(meta)
    inputs = [INPUT] + [f"input_{i}" for i in range(1, len(args))]
    with torch.no_grad():
        out = module(*args)
    if isinstance(module, Instrumented):
        output, acts = out
        names = _tree_names(output, LOGITS, "output") + [f"{ACT}{k}" for k in acts]
        return inputs, names, {"kind": "instrumented", "layers": list(module.layers), "model": module.model_name}
    return inputs, _tree_names(out, LOGITS, "output"), {"kind": "module", "model": type(module).__name__}


def _tree_names(value: Any, single: str, prefix: str) -> list[str]:
    """``single`` for one tensor; ``prefix.<key path>`` for each tensor leaf of a structure."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    if isinstance(value, Tensor):
        return [single]
    leaves, _ = tree_flatten_with_path(value)
    names = []
    for key_path, leaf in leaves:
        if isinstance(leaf, Tensor):
            key = keystr(key_path).replace("][", ".").strip("[]").replace("'", "")
            names.append(f"{prefix}.{key}")
    return names


def _torch_export(module: nn.Module, args: tuple[Tensor, ...], dynamic_batch: bool) -> torch.export.ExportedProgram:
    if dynamic_batch and args[0].shape[0] == 1:
        args = tuple(torch.cat([a, a]) for a in args)  # torch.export specializes a size-1 dimension
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if a.ndim else None for a in args)
    try:
        with compiling():
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        hint = " Pass dynamic_batch=False to export a fixed batch size." if dynamic_batch else ""
        raise FxcamError(
            f"torch.export could not export {_describe(module)}: {type(exc).__name__}: {first_line(exc)}.{hint}"
        ) from exc


def _write_onnx(ep: Any, target: Path, inputs: list[str], outputs: list[str], meta: dict[str, Any]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notes
        program = torch.onnx.export(ep, (), None, input_names=inputs, output_names=outputs, dynamo=True, verbose=False)
    program.model.metadata_props[META] = json.dumps(meta)
    weights = sum(t.numel() * t.element_size() for t in ep.state_dict.values() if isinstance(t, Tensor))
    program.save(str(target), external_data=weights > _PROTOBUF_LIMIT)


class _staging:  # noqa: N801 - a context manager used like a function
    """A temporary directory next to ``path``; on success its files are moved into place, the named file last."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.dir

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                staged = sorted(self.dir.iterdir(), key=lambda p: p.name == self.path.name)
                for p in staged:  # external data first: the model file appears only when complete
                    os.replace(p, self.path.parent / p.name)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ["export", "SUFFIXES"]
