"""Property-based tests (hypothesis): random small CNNs against an independent autograd reference.

Each example builds a random network from a seed: a stem convolution, then 1-6 blocks drawn
from conv/BatchNorm/ReLU units (some ``ReLU(inplace=True)``), depthwise convolutions
(``groups=C``), residual blocks whose add is out of place, ``out += x``, ``out.add_(x)`` or
``x += out`` (the block's *input*, i.e. the previous layer's activation, mutated in place),
optionally followed by ``F.relu(..., inplace=True)``, ``torch.cat`` blocks (two branches, or
DenseNet-like input + branch), max/avg pooling and dropout; then global average pooling and a
Linear layer with 3-10 classes. BatchNorm layers get random affine parameters and non-trivial
running statistics; the model is in eval mode. A layer is drawn among the network's modules
whose output is a spatial map of at least 2x2 at the drawn input size (8-40 px, batch 1-3),
and the targets among None (top-1), one int, one int per image and a tensor of classes.

Properties:

- ``test_maps_match_an_autograd_reference``: Grad-CAM, HiResCAM and LayerCAM maps equal,
  within 1e-5, maps computed from a plain autograd pass over a deep copy of the model in which
  every in-place operation is made out of place and the chosen layer's module is wrapped to keep
  its output (``torch.autograd.grad(score, activation)``); the weighting is written out here,
  only the resize and min-max steps come from ``fxcam.ops`` (as in ``fxcam.maps.to_maps``:
  ReLU, normalize, upsample, normalize). The logits equal the model's own; the model is left
  exactly as it was (``untouched(model, bare=True)``).
- ``test_valid_input_raises_only_fxcam_errors``: any layer ``fxcam.list_layers`` offers (1x1
  maps, the pooled vector, the logits included), any of the gradient/activation methods, any
  output ``size``: the explainer either returns ``(N, *size)`` finite maps in [0, 1] or raises
  an ``fxcam.FxcamError`` whose message says something; never another exception.

The default profile is small and derandomized (``max_examples=50``, fixed seed: a few seconds,
well under a minute on two busy cores). A longer run::

    FXCAM_PROPERTY_EXAMPLES=1000 python -m pytest -q -p no:cacheprovider tests/test_properties.py

Other switches: ``FXCAM_PROPERTY_SEED=<int>`` draws other examples than the default profile
(derandomization off, hypothesis seeded with that value); ``FXCAM_PROPERTY_SHRINK=1`` shrinks a
failing example to a minimal one (off by default: shrinking a failure can take minutes). A
failure prints the network, the layer, the batch and the targets (``note``); rebuild them with
``build(spec)`` and ``make_batch(batch)``. ``--hypothesis-show-statistics`` shows how often each
outcome (maps, FxcamError of each kind) occurred.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, event, given, note, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fxcam  # noqa: E402
from fxcam import ops  # noqa: E402

EXAMPLES = int(os.environ.get("FXCAM_PROPERTY_EXAMPLES", "50"))
SEED = os.environ.get("FXCAM_PROPERTY_SEED")
SHRINK = os.environ.get("FXCAM_PROPERTY_SHRINK", "") not in ("", "0")
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def profile(test):
    test = PROFILE(test)
    return seed(int(SEED))(test) if SEED is not None else test


ATOL = 1e-5
METHODS = ("gradcam", "hirescam", "layercam")
# every method the second property may use: pure functions of (acts, grads) or of acts
ANY_METHODS = (
    "gradcam",
    "hirescam",
    "layercam",
    "gradcampp",
    "xgradcam",
    "gradcam_elementwise",
    "eigengradcam",
)


# =============================================================================================
# the networks


def conv_unit(cin, cout, *, k=3, stride=1, groups=1, bn=True, act="relu"):
    """conv [-> BatchNorm] [-> ReLU / ReLU(inplace=True)] as a named Sequential."""
    parts = OrderedDict(conv=nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=not bn))
    if bn:
        parts["bn"] = nn.BatchNorm2d(cout)
    if act != "none":
        parts["act"] = nn.ReLU(inplace=act == "relu_inplace")
    return nn.Sequential(parts)


class Residual(nn.Module):
    """conv-bn-relu-conv-bn, plus the block's input, then an activation.

    ``add``: ``"out"`` (``out + x``), ``"iadd"`` (``out += x``), ``"add_"`` (``out.add_(x)``) or
    ``"x_iadd"`` (``x += out``: the block's input, which is the previous layer's output, is
    mutated). ``act``: ``"relu"``, ``"relu_inplace"`` (a ``ReLU(inplace=True)`` module),
    ``"functional_inplace"`` (``F.relu(out, inplace=True)``) or ``"none"``. Every in-place
    operation of the block is controlled by ``self.inplace``, so the reference copy can turn
    them all off.
    """

    def __init__(self, c, add, act, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.relu1 = nn.ReLU(inplace=act == "relu_inplace")
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()
        if act in ("relu", "relu_inplace"):
            self.act = nn.ReLU(inplace=act == "relu_inplace")
        elif act == "none":
            self.act = nn.Identity()
        self.add = add
        self.functional_act = act == "functional_inplace"
        self.inplace = add != "out" or act == "functional_inplace"

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if not self.inplace or self.add == "out":
            out = out + x
        elif self.add == "iadd":
            out += x
        elif self.add == "add_":
            out.add_(x)
        else:  # "x_iadd"
            x += out
            out = x
        if self.functional_act:
            return F.relu(out, inplace=self.inplace)
        return self.act(out)


class Concat(nn.Module):
    """``torch.cat([a(x), b(x)], 1)`` or, ``dense``, ``torch.cat([x, a(x)], 1)``; then an optional
    ``ReLU(inplace=True)`` over the concatenation."""

    def __init__(self, cin, c1, c2, dense, act):
        super().__init__()
        self.dense = dense
        self.a = conv_unit(cin, c1, k=1, act="relu")
        if not dense:
            self.b = conv_unit(cin, c2, k=3, act="relu_inplace")
        self.act = nn.ReLU(inplace=act == "relu_inplace") if act != "none" else nn.Identity()

    def forward(self, x):
        y = torch.cat([x, self.a(x)], 1) if self.dense else torch.cat([self.a(x), self.b(x)], 1)
        return self.act(y)


class Net(nn.Module):
    def __init__(self, body: nn.Sequential, channels: int, classes: int, head_dropout: float | None):
        super().__init__()
        self.body = body
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(head_dropout) if head_dropout is not None else nn.Identity()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.gap(self.body(x)), 1)))


def build(spec: dict) -> nn.Module:
    """The network described by ``spec`` (see :func:`networks`), with weights from ``spec['seed']``."""
    torch.manual_seed(spec["seed"])
    c = spec["stem"]
    blocks = [conv_unit(3, c, act=spec["stem_act"])]
    for b in spec["blocks"]:
        kind = b["kind"]
        if kind == "conv":
            blocks.append(conv_unit(c, b["out"], k=b["k"], stride=b["stride"], bn=b["bn"], act=b["act"]))
            c = b["out"]
        elif kind == "depthwise":
            blocks.append(conv_unit(c, c, k=3, stride=b["stride"], groups=c, bn=b["bn"], act=b["act"]))
        elif kind == "residual":
            blocks.append(Residual(c, b["add"], b["act"], b["bn"]))
        elif kind == "concat":
            c1, c2 = b["c1"], (0 if b["dense"] else b["c2"])
            blocks.append(Concat(c, c1, c2, b["dense"], b["act"]))
            c = (c + c1) if b["dense"] else (c1 + c2)
        elif kind == "maxpool":
            blocks.append(nn.MaxPool2d(3, 2, 1) if b["overlap"] else nn.MaxPool2d(2))
        elif kind == "avgpool":
            blocks.append(nn.AvgPool2d(2))
        elif kind == "dropout":
            blocks.append(nn.Dropout2d(b["p"]) if b["2d"] else nn.Dropout(b["p"], inplace=b["inplace"]))
        else:  # pragma: no cover
            raise AssertionError(kind)
    model = Net(nn.Sequential(*blocks), c, spec["classes"], spec["head_dropout"])
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.num_batches_tracked.fill_(7)
    return model.eval()


ACTS = st.sampled_from(["relu", "relu_inplace", "none"])
CHANNELS = st.integers(2, 8)


@st.composite
def blocks(draw, downsample_left: int):
    kinds = ["conv", "depthwise", "residual", "concat", "dropout"]
    if downsample_left:
        kinds += ["maxpool", "avgpool"]
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        stride = draw(st.sampled_from([1, 2] if downsample_left else [1]))
        k = draw(st.sampled_from([1, 3]))
        out = draw(CHANNELS)
        return {"kind": kind, "out": out, "k": k, "stride": stride, "bn": draw(st.booleans()), "act": draw(ACTS)}
    if kind == "depthwise":
        stride = draw(st.sampled_from([1, 2] if downsample_left else [1]))
        return {"kind": kind, "stride": stride, "bn": draw(st.booleans()), "act": draw(ACTS)}
    if kind == "residual":
        return {
            "kind": kind,
            "add": draw(st.sampled_from(["out", "iadd", "add_", "x_iadd"])),
            "act": draw(st.sampled_from(["relu", "relu_inplace", "functional_inplace", "none"])),
            "bn": draw(st.booleans()),
        }
    if kind == "concat":
        c1, c2 = draw(CHANNELS), draw(CHANNELS)
        return {"kind": kind, "c1": c1, "c2": c2, "dense": draw(st.booleans()), "act": draw(ACTS)}
    if kind == "maxpool":
        return {"kind": kind, "overlap": draw(st.booleans())}
    if kind == "avgpool":
        return {"kind": kind}
    p = draw(st.sampled_from([0.1, 0.5]))
    return {"kind": kind, "p": p, "2d": draw(st.booleans()), "inplace": draw(st.booleans())}


def downsamples(b: dict) -> bool:
    return b["kind"] in ("maxpool", "avgpool") or b.get("stride", 1) == 2


@st.composite
def networks(draw) -> dict:
    """A network spec: at most two /2 downsamplings, so an 8 px input keeps a 2x2 map to the end."""
    n = draw(st.integers(1, 6))
    body, left = [], 2
    for _ in range(n):
        b = draw(blocks(left))
        left -= downsamples(b)
        body.append(b)
    return {
        "seed": draw(st.integers(0, 2**16)),
        "stem": draw(CHANNELS),
        "stem_act": draw(ACTS),
        "blocks": body,
        "classes": draw(st.integers(3, 10)),
        "head_dropout": draw(st.sampled_from([None, 0.2])),
    }


@st.composite
def batches(draw) -> dict:
    """A batch (its shape and seed; see :func:`make_batch`) and the form of its targets."""
    h = draw(st.integers(8, 40))
    return {
        "n": draw(st.integers(1, 3)),
        "h": h,
        "w": draw(st.one_of(st.just(h), st.integers(8, 40))),
        "seed": draw(st.integers(0, 2**16)),
        "targets": draw(st.sampled_from(["top1", "int", "list", "tensor"])),
    }


def make_batch(b: dict) -> torch.Tensor:
    return torch.randn(b["n"], 3, b["h"], b["w"], generator=torch.Generator().manual_seed(b["seed"]))


def targets_for(form: str, n: int, classes: int, data) -> tuple[object, list[int] | None]:
    if form == "top1":
        return None, None
    if form == "int":
        c = data.draw(st.integers(0, classes - 1), label="class")
        return c, [c] * n
    cls = data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n), label="classes")
    return (cls if form == "list" else torch.tensor(cls)), cls


# =============================================================================================
# the reference


class Keep(nn.Module):
    """Runs ``module`` and keeps its output (the reference's only instrument)."""

    def __init__(self, module: nn.Module, store: list):
        super().__init__()
        self.module = module
        self.store = store

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.store.append(out)
        return out


def reference_maps(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int] | None) -> dict:
    """``{"maps": {method: (N, H, W)}, "classes": (N,)}`` from plain autograd over an out-of-place copy."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    parent_name, _, child = layer.rpartition(".")
    parent = ref.get_submodule(parent_name)
    store: list = []
    setattr(parent, child, Keep(getattr(parent, child), store))
    with torch.enable_grad():
        out = ref(x)
        assert len(store) == 1, f"the reference tapped {layer!r} {len(store)} times"
        act = store[0]
        idx = out.argmax(1) if classes is None else torch.tensor(classes)
        score = out[torch.arange(x.shape[0]), idx].sum()
        (grad,) = torch.autograd.grad(score, act)
    a, g = act.detach().float(), grad.float()
    sums = {
        "gradcam": (g.mean((2, 3), keepdim=True) * a).sum(1),
        "hirescam": (g * a).sum(1),
        "layercam": (g.clamp(min=0) * a).sum(1),
    }
    size = tuple(x.shape[2:])
    maps = {k: ops.normalize(ops.upsample(ops.normalize(torch.relu(v)), size)) for k, v in sums.items()}
    return {"maps": maps, "classes": idx}


# =============================================================================================
# helpers


def spatial_layers(model: nn.Module, size: tuple[int, int]) -> list[str]:
    """The model's module names (not the head) whose output is a spatial map of at least 2x2."""
    shapes = fxcam.layer_shapes(model, size)
    offered = set(fxcam.list_layers(model))
    names = []
    for name, _ in model.named_modules():
        if not name or name in ("gap", "drop", "fc"):
            continue
        assert name in offered, f"module {name!r} is not in fxcam.list_layers(model)"
        shape = shapes.get(name)
        if shape is not None and len(shape) == 4 and shape[2] >= 2 and shape[3] >= 2:
            names.append(name)
    return names


def fxcam_call(what: str, fn, *, allow_fxcam_error: bool = False):
    """``fn()``; any exception but an FxcamError with a message is a failure saying what raised.

    ``allow_fxcam_error``: an FxcamError is an accepted outcome (returned, not raised)."""
    try:
        return fn()
    except fxcam.FxcamError as e:
        assert len(str(e)) >= 20, f"{what}: FxcamError with an unhelpful message: {e!r}"
        if allow_fxcam_error:
            return e
        raise AssertionError(f"{what} raised on a valid input: {type(e).__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the property is about exactly this
        tb = "".join(traceback.format_exception(e))[-3000:]
        raise AssertionError(
            f"{what} raised {type(e).__name__} (not an fxcam.FxcamError) on a valid input: {e}\n{tb}"
        ) from e


# =============================================================================================
# the properties


@profile
@given(spec=networks(), batch=batches(), data=st.data())
def test_maps_match_an_autograd_reference(spec, batch, data, untouched):
    x, form = make_batch(batch), batch["targets"]
    model = build(spec)
    size = tuple(x.shape[2:])
    layers = spatial_layers(model, size)
    assert layers, f"no spatial layer at {size}: {fxcam.layer_shapes(model, size)}"
    layer = data.draw(st.sampled_from(layers), label="layer")
    targets, classes = targets_for(form, x.shape[0], spec["classes"], data)
    note(f"model:\n{model}\nlayer={layer!r} x={tuple(x.shape)} targets={targets!r}")

    ref = reference_maps(model, layer, x, classes)
    with torch.no_grad():
        logits = model(x.clone())
    x_before = x.clone()
    for method in METHODS:
        with untouched(model, bare=True):
            explainer = fxcam_call(
                f"Explainer(model, {layer!r}, {method!r})", lambda: fxcam.Explainer(model, layer, method)
            )
            e = fxcam_call(f"{method} at {layer!r}", lambda: explainer.explain(x, targets))
        assert torch.equal(x, x_before), f"{method}: the input batch was modified"
        assert e.cams.shape == (x.shape[0], *size)
        err = (e.cams - ref["maps"][method]).abs().max().item()
        logit_err = (e.output - logits).abs().max().item()
        assert err <= ATOL, (
            f"{method} at {layer!r}: max |fxcam - reference| = {err:.3g} > {ATOL} "
            f"(logits differ from the model's by {logit_err:.3g}; x {tuple(x.shape)}, targets {targets!r})"
        )
        torch.testing.assert_close(
            e.output, logits, msg=lambda m: f"{method} at {layer!r}: logits differ from the model's: {m}"
        )
        assert e.class_idx.tolist() == ref["classes"].tolist(), f"{method}: explained classes differ"


@profile
@given(spec=networks(), batch=batches(), data=st.data())
def test_valid_input_raises_only_fxcam_errors(spec, batch, data, untouched):
    x, form = make_batch(batch), batch["targets"]
    model = build(spec)
    layer = data.draw(st.sampled_from(fxcam.list_layers(model)), label="layer")
    method = data.draw(st.sampled_from(ANY_METHODS), label="method")
    targets, _ = targets_for(form, x.shape[0], spec["classes"], data)
    size = data.draw(st.sampled_from([None, (x.shape[2], x.shape[3]), (5, 7), (33, 20)]), label="size")
    note(f"model:\n{model}\nlayer={layer!r} method={method!r} x={tuple(x.shape)} targets={targets!r} size={size}")
    with untouched(model, bare=True):
        explainer = fxcam_call(
            f"Explainer(model, {layer!r}, {method!r})",
            lambda: fxcam.Explainer(model, layer, method),
            allow_fxcam_error=True,
        )
        if isinstance(explainer, fxcam.FxcamError):
            event(f"Explainer(): {type(explainer).__name__}")
            return
        cams = fxcam_call(
            f"{method} at {layer!r}",
            lambda: explainer(x, targets, size=size),
            allow_fxcam_error=True,
        )
    if isinstance(cams, fxcam.FxcamError):
        event(f"explainer(x): {type(cams).__name__}")
        return
    event("maps")
    out_size = tuple(size) if size is not None else tuple(x.shape[2:])
    assert cams.shape == (x.shape[0], *out_size)
    assert torch.isfinite(cams).all(), f"{method} at {layer!r}: non-finite maps"
    assert cams.min() >= 0 and cams.max() <= 1, f"{method} at {layer!r}: maps outside [0, 1]"
