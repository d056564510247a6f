"""Export: the instrumented model and a whole explainer as one graph.

Three things leave PyTorch from here:

- :func:`export` writes ``path.pt2`` (``torch.export`` + ``torch.export.save``) or
  ``path.onnx`` (``torch.onnx.export``, the torch.export-based exporter) of an
  :class:`~fxcam.Instrumented` model ``x -> (logits, {layer: activation})``, of an explainer
  graph, or of an :class:`~fxcam.Explainer` (whose graph is built first).
- :func:`explainer_graph` (``Explainer.to_graph``) builds one fx GraphModule
  ``x -> (logits, cam)`` (or ``(x, class_idx) -> (logits, cam)``): the forward, the backward of
  the suffix, the method's weighting, the reshape, ReLU, normalization, upsampling and fusion,
  as plain ATen operations. The backward is not hand-written: ``make_fx`` runs the eager
  explainer's own code (``Instrumented.forward_for_grad``, ``torch.autograd.grad``, the method
  function, ``Explainer._maps``) on fake tensors and records every operation the autograd
  engine executes, so the graph computes what the eager explainer computes.
- :func:`export_cli` is what ``fxcam export MODEL --layer L --method M --out F`` calls.

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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .errors import FxcamError

SUFFIXES = (".pt2", ".onnx")
INPUT, CLASS_IDX, LOGITS, CAM, ACT = "input", "class_idx", "logits", "cam", "act:"
TARGETS = ("top1", "input")
META = "fxcam"  # GraphModule.meta key / .pt2 extra file / ONNX metadata key describing the graph
ONNX_HINT = "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: pip install fxcam[onnx]"
_PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which ONNX weights go to an external data file


# -- the explainer as one graph --------------------------------------------------------------


def explainer_graph(
    explainer: Any,
    example_input: Tensor | None = None,
    *,
    targets: str = "top1",
    size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
) -> fx.GraphModule:
    """``explainer`` as one fx GraphModule: ``x -> (logits, cam)`` or ``(x, class_idx) -> (logits, cam)``.

    ``cam`` is ``(N, *size)`` in [0, 1], exactly the eager ``explainer(x, targets)`` (same code,
    traced; equal to float32 rounding). ``targets="top1"`` explains each image's top-1 class
    (argmax inside the graph); ``targets="input"`` adds an int64 ``class_idx`` input ``(N,)``
    (negative indices count from the end, as in eager).

    The graph is traced for ``example_input``'s channels, height and width (default: one
    ``(1, C, 224, 224)`` zero image, ``C`` from the model's first convolution) and, with
    ``dynamic_batch``, any batch size. It holds no Python: no autograd engine, no hooks, no
    loops; its parameters share storage with the model (``requires_grad=False``, not copies).
    Run it as is, ``torch.compile`` it (``fullgraph=True``), or write it with :func:`export`.

    Gradient methods (gradcam, hirescam, gradcam_elementwise, gradcampp, xgradcam, layercam,
    and any registered gradient method whose function is traceable) and activation methods are
    supported, with several layers, ``fuse``, ``aug_smooth`` and any reshape
    (``fxcam.reshape.resolve`` is called once, at build time, on the example's activations).
    Not supported (an :class:`FxcamError` says which and why): driver methods (they run the
    model themselves from Python: extra passes, other layers, higher-order gradients);
    projecting methods, ``eigen_smooth`` and any method whose graph holds an SVD or
    eigendecomposition (ONNX has no such operator); methods that draw random numbers (the
    graph could not reproduce eager maps); callable targets (use ``targets="input"``).
    Attention is traced as matmul/softmax (``SDPBackend.MATH``): the fused kernels' backward
    has no ONNX form.

    >>> graph = Explainer(model.eval(), "layer4").to_graph(torch.randn(1, 3, 224, 224))
    >>> logits, cams = graph(x)          # cams == Explainer(model, "layer4")(x) within 1e-5
    """
    _check_graphable(explainer, targets)
    x = _example_input(explainer.model, example_input)
    if explainer.model.training:
        raise FxcamError(
            f"{type(explainer.model).__name__} is in training mode: the graph would bake in BatchNorm's batch "
            f"statistics (and update the running ones) and random dropout. Call model.eval() before to_graph()."
        )
    size = tuple(int(s) for s in size) if size is not None else tuple(x.shape[2:])
    reshapes = _reshapes_at(explainer, x)

    def cams_of(x, class_idx):
        return _explain(explainer, reshapes, x, class_idx, size)

    def explained(x, class_idx):  # no annotations: make_fx copies them into the generated code
        if explainer.aug_smooth:
            output, cams = _augmented(cams_of, x, class_idx)
        else:
            output, cams = cams_of(x, class_idx)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return output, cams.to(dtype)

    def top1(x):
        return explained(x, None)

    inputs = (INPUT, CLASS_IDX) if targets == "input" else (INPUT,)
    fn = explained if targets == "input" else top1
    what = f"Method '{explainer.method.name}'"
    gm = _trace(fn, x, with_class_idx=targets == "input", dynamic_batch=dynamic_batch, what=what)
    _check_ops(gm, what)
    gm = _named_parameters(gm, explainer.instrumented.graph_module)
    gm.__class__.__name__ = f"{explainer.instrumented.model_name}{_camel(explainer.method.name)}Graph"
    gm.meta[META] = {
        "kind": "explainer",
        "inputs": list(inputs),
        "outputs": [LOGITS, CAM],
        "method": explainer.method.name,
        "method_options": {k: repr(v) for k, v in explainer.method_options.items()},
        "layers": list(explainer.layers),
        "fuse": explainer.fuse,
        "aug_smooth": explainer.aug_smooth,
        "targets": targets,
        "input_shape": [None if dynamic_batch else x.shape[0], *x.shape[1:]],
        "size": list(size),
        "dtype": str(x.dtype).removeprefix("torch."),
    }
    return gm


def _check_graphable(explainer: Any, targets: str) -> None:
    method = explainer.method
    if targets not in TARGETS:
        raise FxcamError(
            f"targets={targets!r} is not valid for an explainer graph; choose 'top1' (each image's top-1 class, "
            f"chosen inside the graph) or 'input' (an int64 class_idx input of shape (N,))."
        )
    if method.kind == "driver":
        raise FxcamError(
            f"Method '{method.name}' cannot be compiled into one graph: it is a driver method, which runs the "
            f"compiled model itself from Python (extra passes over noisy, masked or ablated inputs, other layers, "
            f"or higher-order gradients) instead of being one function of the activations and their gradient. "
            f"Use the eager Explainer for it, or a gradient method (e.g. 'gradcam', 'gradcampp', 'layercam') "
            f"for export."
        )
    if method.kind not in ("gradient", "activation"):
        raise FxcamError(f"Method '{method.name}' has kind {method.kind!r}; only gradient and activation methods "
                         f"can be compiled into one graph.")
    if method.project or explainer.eigen_smooth:
        what = f"Method '{method.name}'" if method.project else "eigen_smooth=True"
        raise FxcamError(_DECOMPOSITION_ERROR.format(what=what))


_DECOMPOSITION_ERROR = (
    "{what} cannot be exported as one graph: it needs a matrix decomposition per image (torch.linalg.svd / eigh, "
    "e.g. for the first principal component of the activations, whose sign is then fixed per image); ONNX has no "
    "SVD or eigendecomposition operator, so the graph could not leave PyTorch. Use the eager Explainer for it, "
    "or a non-projecting method for export."
)
# ATen ops a graph must not contain: decompositions (no ONNX operator) and random draws (a graph would
# redraw them from the runtime's generator, so its maps could never equal the eager explainer's)
_DECOMPOSITIONS = {
    "_linalg_svd", "linalg_svd", "svd", "_linalg_eigh", "linalg_eigh", "linalg_eig", "_linalg_eig",
    "linalg_eigvals", "linalg_eigvalsh", "linalg_qr", "qr", "geqrf", "linalg_lu", "linalg_lu_factor_ex",
    "lu_unpack", "cholesky", "linalg_cholesky_ex", "linalg_inv_ex", "_linalg_solve_ex", "linalg_lstsq",
}
_RANDOM = {
    "rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "bernoulli", "uniform", "normal",
    "multinomial", "randperm", "native_dropout", "exponential", "geometric", "cauchy", "log_normal",
}


def _check_ops(gm: fx.GraphModule, what: str) -> None:
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        op = getattr(node.target, "_opname", None) or getattr(packet, "__name__", "")
        if op in _DECOMPOSITIONS:
            raise FxcamError(_DECOMPOSITION_ERROR.format(what=what) + f" (graph op: aten.{op})")
        if op in _RANDOM:
            raise FxcamError(
                f"{what} draws random numbers (aten.{op}): in a graph they would be redrawn by the runtime's "
                f"generator on every call, so its maps could never equal the eager explainer's. Use the eager "
                f"Explainer for it."
            )


def _example_input(model: nn.Module, example_input: Tensor | None) -> Tensor:
    if example_input is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else 3
        p = next(model.parameters(), None)
        dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, "cpu")
        return torch.zeros(1, channels, 224, 224, dtype=dtype, device=device)
    if not isinstance(example_input, Tensor) or not _batched(model, example_input):
        raise FxcamError(
            f"example_input must be a batched image tensor (N, C, H, W); got "
            f"{tuple(example_input.shape) if isinstance(example_input, Tensor) else type(example_input).__name__}."
        )
    return example_input.detach()


def _batched(model: nn.Module, x: Tensor) -> bool:
    """``(N, C, *S)``: at least 3 dims, and 4 for a model with 2-D convolutions (as ``Explainer.explain`` checks)."""
    return x.ndim >= 4 or (x.ndim == 3 and not any(isinstance(m, nn.Conv2d) for m in model.modules()))


def _reshapes_at(explainer: Any, x: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
    """The reshape transforms, resolved once on real activations of the example (as eager does per call)."""
    _, raw = explainer._forward(x)
    return explainer._reshapes(raw, x)


def _logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        raise FxcamError(
            f"An explainer graph explains class logits, but the model returns {type(output).__name__}. Explain it "
            f"with the eager Explainer and a callable target, or wrap the model so that it returns one logits tensor."
        )
    return output.reshape(output.shape[0], -1) if output.ndim > 2 else output


def _explain(explainer: Any, reshapes: dict, x: Tensor, class_idx: Tensor | None, size: tuple[int, ...]):
    """The eager explainer's pipeline with in-graph targets: ``(output, fused map)``."""
    layers = explainer.layers
    method = explainer.method
    if method.kind == "gradient":
        output, acts = explainer.instrumented.forward_for_grad(x)
    else:
        with torch.no_grad():
            output, acts = explainer.instrumented(x)
    logits = _logits(output)
    if class_idx is None:
        idx = logits.argmax(1)
    else:
        idx = torch.where(class_idx < 0, class_idx + logits.shape[1], class_idx)
    if method.kind == "gradient":
        scores = logits.gather(1, idx[:, None]).squeeze(1)
        needed = [acts[k] for k in layers]
        if scores.requires_grad:
            grads = torch.autograd.grad(scores.sum(), needed, allow_unused=True)
        else:  # the output does not depend on any tap
            grads = (None,) * len(needed)
        missing = [k for k, g in zip(layers, grads) if g is None]
        if missing:
            raise FxcamError(
                f"The explained score does not depend on layer(s) {missing}: their gradient is undefined. "
                f"Pick layers before the model's output (see fxcam.list_layers(model))."
            )
        contrib = {
            k: method.fn(reshapes[k](acts[k].detach()).float(), reshapes[k](g).float(), **explainer.method_options)
            for k, g in zip(layers, grads)
        }
    else:
        contrib = {k: method.fn(reshapes[k](acts[k]).float(), **explainer.method_options) for k in layers}
    cams, _ = explainer._maps(contrib, size)
    output = output.detach() if isinstance(output, Tensor) else output
    return output, cams


def _augmented(cams_of: Callable, x: Tensor, class_idx: Tensor | None) -> tuple[Any, Tensor]:
    """``aug_smooth`` as eager does it: 6 copies (flip x brightness) as one batch, maps flipped back, averaged."""
    from .api import AUG_FACTORS  # local: api imports this module lazily too

    copies = [torch.flip(x, dims=(-1,)) * f if flip else x * f for flip in (False, True) for f in AUG_FACTORS]
    n_aug = len(copies)
    idx = class_idx.repeat(n_aug) if class_idx is not None else None
    output, cams = cams_of(torch.cat(copies), idx)
    cams = cams.unflatten(0, (n_aug, -1))
    half = n_aug // 2
    cams = torch.cat([cams[:half], torch.flip(cams[half:], dims=(-1,))]).mean(0)
    return output[: x.shape[0]], cams


def _trace(fn: Callable, x: Tensor, *, with_class_idx: bool, dynamic_batch: bool, what: str) -> fx.GraphModule:
    """``make_fx`` on fake inputs whose batch (and only the batch) is symbolic."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=True)
    if dynamic_batch and x.shape[0] == 1:
        x = x.expand(2, *x.shape[1:])  # a batch of 1 would be specialized to the constant 1
    sizes = [DimDynamic.DYNAMIC if dynamic_batch else DimDynamic.STATIC] + [DimDynamic.STATIC] * (x.ndim - 1)
    fake_x = mode.from_tensor(x, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))
    args: tuple[Tensor, ...] = (fake_x,)
    if with_class_idx:
        with mode:
            args += (torch.zeros(fake_x.shape[0], dtype=torch.long, device=x.device),)
    try:
        # attention as matmul/softmax: the fused CPU/CUDA attention kernels' backward ops have no ONNX form
        with sdpa_kernel(SDPBackend.MATH):
            gm = make_fx(fn, tracing_mode="symbolic")(*args)
    except FxcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise FxcamError(
            f"Could not trace {what} into one graph: {type(exc).__name__}: {_first_line(exc)}. Every step (model, "
            f"reshape, method) must be traceable torch operations: no data-dependent Python control flow (.item(), "
            f"`if tensor:`), no random draws, no code that needs concrete sizes. The eager Explainer still works."
        ) from exc
    if dynamic_batch:
        # a batch size the trace fixed to a constant (``x.view(2, ...)``, ``if n == 2``); inequality guards
        # (the convolution backend's memory format for n < 16) do not change the recorded operations
        batch = shape_env.replace(fake_x.shape[0].node.expr)
        if batch.is_number:
            raise FxcamError(
                f"The traced graph of {what} depends on the batch size (the model or a reshape branches on it), so "
                f"one graph cannot serve every batch size. Pass dynamic_batch=False and build one graph per batch size."
            )
    for ph, name in zip([n for n in gm.graph.nodes if n.op == "placeholder"], ("x", "class_idx")):
        with gm.graph.inserting_before(ph):
            named = gm.graph.placeholder(name)
        named.meta = dict(ph.meta)
        ph.replace_all_uses_with(named)
        gm.graph.erase_node(ph)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def _named_parameters(gm: fx.GraphModule, source: nn.Module) -> fx.GraphModule:
    """Rename make_fx's ``_param_constant3`` attributes to the model's names (``layer4.1.conv1.weight``).

    The tensors are the model's own (make_fx closes over them); they are stored detached:
    same storage, ``requires_grad=False``, so running the graph records no autograd history.
    """
    names: dict[int, str] = {}
    for name, t in [*source.named_parameters(remove_duplicate=False), *source.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), name)
    root: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
        name = names.get(id(value), node.target)
        if isinstance(value, nn.Parameter):
            value = nn.Parameter(value.detach(), requires_grad=False)
        elif isinstance(value, Tensor):
            value = value.detach()
        root.setdefault(name, value)
        node.target = name
    gm.graph._tracer_cls = None  # make_fx's tracer cannot re-trace dotted names when the module is unpickled
    new = fx.GraphModule(root, gm.graph, type(gm).__name__)
    new.eval()  # its own flag only: the submodules are fresh containers, not the model's
    new.meta = dict(gm.meta)
    return new


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")).replace("cam", "CAM").replace("pp", "PP")


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
    from .api import Explainer  # local: api imports this module lazily

    if isinstance(module, Explainer):
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
    if not _batched(module, args[0]):
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
    from .api import Instrumented  # local: api imports this module lazily

    if isinstance(module, fx.GraphModule) and META in module.meta:
        return False  # an explainer graph: the mode was checked when it was traced, its ops are fixed
    ours = (Instrumented, fx.GraphModule)
    return any(m.training for m in module.modules() if not isinstance(m, ours) and type(m) is not nn.Module)


def _describe(module: nn.Module) -> str:
    return f"{getattr(module, 'model_name', None) or type(module).__name__}"


def _names(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[list[str], list[str], dict[str, Any]]:
    """ONNX input and output names (see the module docstring) and the metadata stored in the file."""
    from .api import Instrumented  # local: api imports this module lazily

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
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        hint = " Pass dynamic_batch=False to export a fixed batch size." if dynamic_batch else ""
        raise FxcamError(
            f"torch.export could not export {_describe(module)}: {type(exc).__name__}: {_first_line(exc)}.{hint}"
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


# -- the CLI's entry point -------------------------------------------------------------------


def export_cli(
    model: nn.Module,
    layers: str | Iterable[str] | None,
    method: str | None,
    out: str | os.PathLike,
    example_input: Tensor | None = None,
    *,
    targets: str = "top1",
    dynamic_batch: bool = True,
    **options: Any,
) -> Path:
    """What ``fxcam export MODEL --layer L [--method M] --out F`` does.

    ``method=None``: the instrumented model ``x -> (logits, {layer: act})``; a method name: that
    explainer's graph ``x -> (logits, cam)`` (``targets="input"`` adds a ``class_idx`` input).
    ``layers=None`` picks :func:`fxcam.default_layer`. ``example_input`` defaults to one
    ``(1, C, 224, 224)`` image. ``options`` go to the :class:`~fxcam.Explainer` (method options,
    ``fuse``, ``reshape``, ``aug_smooth``). The model must be in eval mode (it is not changed
    here; a training-mode model is an error). Returns the written path.
    """
    from .api import Explainer, instrument  # local: api imports this module lazily

    x = _example_input(model, example_input)
    if method is None:
        if options:
            raise FxcamError(f"Options {sorted(options)} apply to an explainer; pass a method to use them.")
        if layers is None:
            from .layers import default_layer

            layers = default_layer(model, tuple(x.shape[2:]))
        module: nn.Module = instrument(model, layers)
    else:
        explainer = Explainer(model, layers, method, **options)
        module = explainer_graph(explainer, x, targets=targets, dynamic_batch=dynamic_batch)
    return export(module, x, out, dynamic_batch=dynamic_batch)


__all__ = ["export", "explainer_graph", "export_cli", "SUFFIXES"]
