"""An explainer as one graph: ``x -> (logits, cam)``, built from the eager pipeline itself.

:func:`explainer_graph` (``Explainer.to_graph``) builds one fx GraphModule ``x -> (logits, cam)``
(or ``(x, class_idx) -> (logits, cam)``): the forward, the backward of the suffix, the
method's weighting, the reshape, ReLU, normalization, upsampling and fusion, as plain ATen
operations. The backward is not hand-written: ``make_fx`` runs :func:`fxcam.maps.run`, the
eager explainer's own pipeline (``Instrumented.forward_for_grad``, ``torch.autograd.grad``, the
method function, :func:`fxcam.maps.to_maps`, aug_smooth and its undo), on fake tensors and
records every operation the autograd engine executes, so the graph computes what the eager
explainer computes. Only the targets differ in form: inside the graph they are resolved by the
traceable :func:`fxcam.targets.resolve_indices`.

Writing the graph to a file is :func:`fxcam.export` (module :mod:`fxcam.exporter`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import maps as _maps
from . import targets as _targets
from .compiling import compiling
from .errors import FxcamError

INPUT, CLASS_IDX, LOGITS, CAM, ACT = "input", "class_idx", "logits", "cam", "act:"
TARGETS = ("top1", "input")
META = "fxcam"  # GraphModule.meta key / .pt2 extra file / ONNX metadata key describing the graph


def explainer_graph(
    recipe: _maps.Recipe,
    example_input: Tensor | None = None,
    *,
    targets: str = "top1",
    size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
) -> fx.GraphModule:
    """An explainer as one fx GraphModule: ``x -> (logits, cam)`` or ``(x, class_idx) -> (logits, cam)``.

    ``recipe``: the :class:`fxcam.maps.Recipe` of an explainer (``Explainer.recipe``: the model,
    its instrumented graph, the method and its options). ``cam`` is ``(N, *size)`` in [0, 1],
    exactly the eager ``explainer(x, targets)`` (same code, traced; equal to float32 rounding),
    and ``logits`` are the eager explainer's output (with ``aug_smooth``, the clean image's).
    ``targets="top1"`` explains each image's top-1 class (argmax inside the graph);
    ``targets="input"`` adds an int64 ``class_idx`` input ``(N,)`` (negative indices count from
    the end, as in eager).

    The graph is traced for ``example_input``'s channels, height and width (default: one
    ``(1, C, 224, 224)`` zero image, ``C`` from the model's first convolution) and, with
    ``dynamic_batch``, any batch size. It holds no Python: no autograd engine, no hooks, no
    loops; its parameters share storage with the model (``requires_grad=False``, not copies).
    Run it as is, ``torch.compile`` it (``fullgraph=True``), or write it with :func:`fxcam.export`.

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
    _check_graphable(recipe, targets)
    x = example_input_for(recipe.model, example_input)  # the compiled model is in eval mode, whatever the model's
    size = tuple(int(s) for s in size) if size is not None else tuple(x.shape[2:])
    with torch.inference_mode():
        _, raw = recipe.instrumented(x)
    reshapes = _maps.resolve_reshapes(recipe, raw, x)

    def explained(x, class_idx):  # no annotations: make_fx copies them into the generated code
        result = _maps.run(recipe, x, class_idx, size, resolve=_resolve, reshapes=reshapes, tracing=True)
        return result.output, result.cams

    def top1(x):
        return explained(x, None)

    inputs = (INPUT, CLASS_IDX) if targets == "input" else (INPUT,)
    fn = explained if targets == "input" else top1
    what = f"Method '{recipe.method.name}'"
    with compiling():
        gm = _trace(fn, x, with_class_idx=targets == "input", dynamic_batch=dynamic_batch, what=what)
        _check_ops(gm, what)
        gm = _named_parameters(gm, recipe.instrumented.graph_module)
        _insert_size_check(gm, tuple(x.shape[1:]), example_input is None)
    gm.__class__.__name__ = f"{recipe.instrumented.model_name}{_camel(recipe.method.name)}Graph"
    gm.meta[META] = {
        "kind": "explainer",
        "inputs": list(inputs),
        "outputs": [LOGITS, CAM],
        "method": recipe.method.name,
        "method_options": {k: repr(v) for k, v in recipe.method_options.items()},
        "layers": list(recipe.layers),
        "fuse": recipe.fuse,
        "aug_smooth": recipe.aug_smooth,
        "targets": targets,
        "input_shape": [None if dynamic_batch else x.shape[0], *x.shape[1:]],
        "size": list(size),
        "dtype": str(x.dtype).removeprefix("torch."),
    }
    return gm


def check_input_size(x: Tensor, shape: tuple[int, ...], default: bool) -> None:
    """The first node of an explainer graph: its input must have the traced (C, H, W).

    With torch.export and torch.compile the shape is known when tracing, so this check is
    evaluated then and leaves no operation in the exported or compiled program. Re-tracing the
    graph with torch.fx (unpickling a GraphModule does) passes a Proxy: nothing to check then."""
    if isinstance(x, fx.Proxy):
        return
    if tuple(x.shape[1:]) != tuple(shape):
        how = "to_graph() without an example input traces a (1, C, 224, 224) image; " if default else ""
        raise FxcamError(
            f"This explainer graph was traced for inputs (N, {', '.join(map(str, shape))}); got {tuple(x.shape)}. "
            f"{how}build a graph for this size: explainer.to_graph(torch.zeros(1, {', '.join(map(str, x.shape[1:]))}))."
        )


def _insert_size_check(gm: fx.GraphModule, shape: tuple[int, ...], default: bool) -> None:
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(x):
        gm.graph.call_function(check_input_size, (x, shape, default))
    gm.graph.lint()
    gm.recompile()


def _resolve(class_idx: Tensor | None, output: Any) -> tuple[Tensor, Tensor]:
    """In-graph targets: :func:`fxcam.targets.resolve_indices` on the class logits."""
    if not isinstance(output, Tensor):
        raise FxcamError(
            f"An explainer graph explains class logits, but the model returns {type(output).__name__}. Explain it "
            f"with the eager Explainer and a callable target, or wrap the model so that it returns one logits tensor."
        )
    return _targets.resolve_indices(class_idx, output)


def _check_graphable(recipe: _maps.Recipe, targets: str) -> None:
    method = recipe.method
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
    if method.project or recipe.eigen_smooth:
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


def example_input_for(model: nn.Module, example_input: Tensor | None) -> Tensor:
    """``example_input`` checked (a batched image tensor, detached), or one ``(1, C, 224, 224)`` zero image
    in the model's dtype and device, ``C`` from its first convolution."""
    if example_input is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else 3
        p = next(model.parameters(), None)
        dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, "cpu")
        return torch.zeros(1, channels, 224, 224, dtype=dtype, device=device)
    if not isinstance(example_input, Tensor) or not batched(model, example_input):
        raise FxcamError(
            f"example_input must be a batched image tensor (N, C, H, W); got "
            f"{tuple(example_input.shape) if isinstance(example_input, Tensor) else type(example_input).__name__}."
        )
    return example_input.detach()


def batched(model: nn.Module, x: Tensor) -> bool:
    """``(N, C, *S)``: at least 3 dims, and 4 for a model with 2-D convolutions (the one rule for explainer,
    graph and export inputs)."""
    return x.ndim >= 4 or (x.ndim == 3 and not any(isinstance(m, nn.Conv2d) for m in model.modules()))


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
            f"Could not trace {what} into one graph: {type(exc).__name__}: {first_line(exc)}. Every step (model, "
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


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")).replace("cam", "CAM").replace("pp", "PP")


# -- writing files ---------------------------------------------------------------------------

