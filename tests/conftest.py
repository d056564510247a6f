"""Shared fixtures: seeded torchvision models, images, the two reference runners and the one
"model untouched" assertion.

- ``pgc_cams`` runs a pytorch-grad-cam 1.5.7 method, ``torchcam_cams`` a torchcam 0.5.0
  extractor; both return a ``torch.Tensor`` ``(N, H, W)``, release every hook the reference
  registered, restore the parameters' ``.grad`` (both libraries call ``backward()``) and then
  assert, with ``untouched``, that the reference left the model as it found it, so nothing
  leaks into later tests.
- ``untouched(model)`` is a context manager: everything about ``model`` and its submodules
  that an explanation must not change is recorded on entry and compared on exit (see
  ``_record`` for the list). ``bare=True`` also requires, on entry and on exit, that the model
  carries no hook at all and no ``.grad``. ``allow_added_attrs`` (a regex) is for a known fxcam
  bug only, and every use names the strict-xfail test that tracks it.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import inspect
import io
import math
import numbers
import re

import numpy as np
import pytest
import torch
import torch.nn.modules.module as torch_module
import torchvision
from torch import nn


def _seeded(builder, seed=0, **kw):
    torch.manual_seed(seed)
    return builder(weights=None, **kw).eval()


@pytest.fixture(scope="session")
def resnet18():
    return _seeded(torchvision.models.resnet18)


@pytest.fixture(scope="session")
def vgg11():
    return _seeded(torchvision.models.vgg11)


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)


# =============================================================================================
# "model untouched"

_PLAIN = (type(None), bool, numbers.Number, str, bytes, torch.dtype, torch.device, enum.Enum)
_SPECIAL = {"_parameters", "_buffers", "_modules"}  # compared tensor by tensor / module by module
_TENSOR_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")
_GLOBAL_HOOKS = sorted(k for k in vars(torch_module) if k.startswith("_global") and k.endswith("hooks"))


def _is_plain(value) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


def _same_plain(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_plain(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_plain(a[k], b[k]) for k in a)
    return a == b


def _is_hook_dict(name, value) -> bool:
    return name.endswith("hooks") and isinstance(value, dict)


def _hooks(d) -> list:
    """A hook dict as (handle id, hook object) pairs; ``None`` (a tensor without hooks) is empty."""
    return list((d or {}).items())


def _same_hooks(a, b) -> bool:
    return len(a) == len(b) and all(k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(a, b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN payloads and the sign of zero included), not ``==``."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    a, b = a.detach().contiguous().flatten(), b.detach().contiguous().flatten()
    try:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    except RuntimeError:  # dtypes that cannot be viewed as bytes
        return torch.equal(a, b)


def _tensor_record(t: torch.Tensor) -> dict:
    return {
        "object": t,
        "type": type(t),
        "dtype": t.dtype,
        "device": t.device,
        "requires_grad": t.requires_grad,
        "bits": _bits(t),
        "grad": None if t.grad is None else (t.grad, _bits(t.grad)),
        "tensor_hooks": {h: _hooks(getattr(t, h, None)) for h in _TENSOR_HOOKS},
    }


def _record(model: nn.Module) -> dict:
    """For the model and every submodule: its type and object, its children, its parameters and
    buffers (object, type, dtype, device, requires_grad, every bit of the value, ``.grad``, tensor
    hooks), its ``__dict__`` keys, its plain attributes by value (``training``, ``inplace``, ...)
    and the others by identity, every hook dict; plus torch's global module hooks."""
    tensors: dict[int, dict] = {}  # shared parameters are recorded once
    modules = {}
    for name, m in model.named_modules():
        rec = {"object": m, "type": type(m), "keys": sorted(vars(m)), "attrs": {}, "hooks": {}}
        rec["children"] = {k: c for k, c in m._modules.items()}
        for kind in ("_parameters", "_buffers"):
            rec[kind] = {k: (None if t is None else id(t)) for k, t in getattr(m, kind).items()}
            for t in getattr(m, kind).values():
                if t is not None and id(t) not in tensors:
                    tensors[id(t)] = _tensor_record(t)
        for key, value in vars(m).items():
            if key in _SPECIAL:
                continue
            if _is_hook_dict(key, value):
                rec["hooks"][key] = _hooks(value)
            elif _is_plain(value):
                rec["attrs"][key] = ("value", copy.deepcopy(value))
            elif isinstance(value, torch.Tensor):
                rec["attrs"][key] = ("tensor", value, _bits(value))
            else:
                rec["attrs"][key] = ("object", value)
        modules[name] = rec
    return {
        "modules": modules,
        "tensors": tensors,
        "global_hooks": {k: _hooks(getattr(torch_module, k)) for k in _GLOBAL_HOOKS},
    }


def _compare_tensor(where, old, t) -> list[str]:
    diffs = []
    if t is not old["object"]:
        diffs.append(f"{where}: replaced by another tensor object")
    for field in ("type", "dtype", "device", "requires_grad"):
        now = type(t) if field == "type" else getattr(t, field)
        if now != old[field]:
            diffs.append(f"{where}: {field} {old[field]} -> {now}")
    if not _bit_equal(old["bits"], t):
        diffs.append(f"{where}: value changed")
    if old["grad"] is None and t.grad is not None:
        diffs.append(f"{where}: .grad was None, is now set")
    elif old["grad"] is not None and (t.grad is not old["grad"][0] or not _bit_equal(old["grad"][1], t.grad)):
        diffs.append(f"{where}: .grad changed")
    for h in _TENSOR_HOOKS:
        if not _same_hooks(old["tensor_hooks"][h], _hooks(getattr(t, h, None))):
            diffs.append(f"{where}: tensor hooks {h} changed: {_hooks(getattr(t, h, None))}")
    return diffs


def _compare_attr(where, old, value) -> list[str]:
    kind = old[0]
    if kind == "value":
        return [] if _same_plain(old[1], value) else [f"{where}: {old[1]!r} -> {value!r}"]
    if value is not old[1]:
        return [f"{where}: replaced ({type(old[1]).__name__} -> {type(value).__name__})"]
    if kind == "tensor" and not _bit_equal(old[2], value):
        return [f"{where}: tensor attribute value changed"]
    return []


def _compare_module(name, old, m, allow_added_attrs=None) -> list[str]:
    where = name or "<model>"
    diffs = []
    if m is not old["object"] or type(m) is not old["type"]:
        diffs.append(f"{where}: module replaced ({old['type'].__name__} -> {type(m).__name__})")
    allowed = re.compile(allow_added_attrs) if allow_added_attrs else None
    keys = sorted(k for k in vars(m) if k in old["keys"] or not (allowed and allowed.fullmatch(k)))
    if keys != old["keys"]:
        added, removed = sorted(set(keys) - set(old["keys"])), sorted(set(old["keys"]) - set(keys))
        diffs.append(f"{where}: __dict__ keys changed: added {added}, removed {removed}")
    if list(m._modules) != list(old["children"]) or any(m._modules[k] is not c for k, c in old["children"].items()):
        diffs.append(f"{where}: children changed: {list(old['children'])} -> {list(m._modules)}")
    for kind in ("_parameters", "_buffers"):
        now = {k: (None if t is None else id(t)) for k, t in getattr(m, kind).items()}
        if list(now) != list(old[kind]):
            diffs.append(f"{where}: {kind[1:]} names changed: {list(old[kind])} -> {list(now)}")
        elif now != old[kind]:
            diffs.append(f"{where}: {kind[1:]} replaced: {[k for k in now if now[k] != old[kind][k]]}")
    for key, hooks in old["hooks"].items():
        if key in vars(m) and not _same_hooks(hooks, _hooks(getattr(m, key))):
            diffs.append(f"{where}: {key} changed: {len(hooks)} -> {len(getattr(m, key))} hook(s)")
    for key, attr in old["attrs"].items():
        if key in vars(m):
            diffs.extend(_compare_attr(f"{where}.{key}", attr, vars(m)[key]))
    return diffs


def _differences(model: nn.Module, before: dict, allow_added_attrs: str | None = None) -> list[str]:
    diffs = []
    now = dict(model.named_modules())
    if list(now) != list(before["modules"]):
        added = sorted(set(now) - set(before["modules"]))
        removed = sorted(set(before["modules"]) - set(now))
        diffs.append(f"module tree changed: added {added}, removed {removed}")
    for name, old in before["modules"].items():
        if name in now:
            diffs.extend(_compare_module(name, old, now[name], allow_added_attrs))
    names = {}
    for prefix, m in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            for k, t in getattr(m, kind).items():
                if t is not None:
                    names.setdefault(id(t), f"{prefix + '.' if prefix else ''}{k}")
    for key, old in before["tensors"].items():
        if key in names:  # a replaced tensor is reported by its module above
            diffs.extend(_compare_tensor(names[key], old, old["object"]))
    for k, hooks in before["global_hooks"].items():
        if not _same_hooks(hooks, _hooks(getattr(torch_module, k))):
            diffs.append(f"torch.nn.modules.module.{k} changed")
    return diffs


def _bare_violations(model: nn.Module) -> list[str]:
    """Hooks of any kind and ``.grad`` anywhere on the model."""
    out = []
    for name, m in model.named_modules():
        for key, value in vars(m).items():
            if _is_hook_dict(key, value) and value:
                out.append(f"{name or '<model>'}: {len(value)} {key}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out += [f"{name}: tensor hooks {h}" for h in _TENSOR_HOOKS if getattr(t, h, None)]
        if t.grad is not None:
            out.append(f"{name}: .grad is set")
    out += [f"torch.nn.modules.module.{k}" for k in _GLOBAL_HOOKS if getattr(torch_module, k)]
    return out


def _report(title, diffs, limit=40):
    lines = diffs[:limit] + ([f"... and {len(diffs) - limit} more"] if len(diffs) > limit else [])
    return f"{title} ({len(diffs)}):\n  " + "\n  ".join(lines)


@contextlib.contextmanager
def untouched_model(model: nn.Module, *, bare: bool = False, allow_added_attrs: str | None = None):
    """Assert that the block leaves ``model`` exactly as it found it (see ``_record``).

    ``bare=True``: the model must also carry no hook of any kind and no ``.grad``, before and after.
    ``allow_added_attrs``: a regex of ``__dict__`` keys that may appear (known bugs only).
    """
    if bare:
        found = _bare_violations(model)
        assert not found, _report("the model is not bare on entry", found)
    before = _record(model)
    yield
    diffs = _differences(model, before, allow_added_attrs)
    assert not diffs, _report("the model was modified", diffs)
    if bare:
        found = _bare_violations(model)
        assert not found, _report("hooks or gradients left on the model", found)


@pytest.fixture(scope="session")
def untouched():
    return untouched_model


# =============================================================================================
# reference runners


def _as_list(layers) -> list:
    return [layers] if isinstance(layers, (str, nn.Module)) else list(layers)


@contextlib.contextmanager
def _reference_run(model: nn.Module):
    """Undo what a reference library leaves behind that is not part of its result: ``.grad``
    (both call ``backward()``); then check that nothing else changed (hooks released...)."""
    grads = [(p, p.grad) for p in model.parameters()]
    before = _record(model)
    try:
        yield
    finally:
        for p, g in grads:
            p.grad = g
    diffs = _differences(model, before)
    assert not diffs, _report("the reference library left the model modified", diffs)


def _release_pgc(cam) -> None:
    """Remove a pytorch-grad-cam method's hooks: its own, its base method's (FinerCAM, SESS) or
    its per-layer base methods' (RefineCAM). Not ``__exit__``: it swallows IndexError."""
    for obj in [cam, getattr(cam, "base_cam", None), *(getattr(cam, "base_cam_per_layer", None) or [])]:
        if obj is not None and hasattr(obj, "activations_and_grads"):
            obj.activations_and_grads.release()


def pgc_cams_run(model, method, layers, x, classes=None, *, aug_smooth=False, eigen_smooth=False, call=None, **init):
    """pytorch-grad-cam's maps ``(N, H, W)`` as a tensor (its dtype kept).

    ``method``: a class or its name in ``pytorch_grad_cam``; ``layers``: module(s) or name(s)
    (``[]`` for FullGrad); ``classes``: None (top-1), or one entry per image, an int (made a
    ``ClassifierOutputTarget``) or a pytorch-grad-cam target object. ``init`` goes to the
    constructor (``reshape_transform``, ``batch_size``, ``k``...), ``aug_smooth``,
    ``eigen_smooth`` and ``call`` (e.g. ``{"target_idx": 5}``) to the call. tqdm bars are silenced.
    """
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pgc, method) if isinstance(method, str) else method
    modules = [model.get_submodule(layer) if isinstance(layer, str) else layer for layer in _as_list(layers)]
    targets = None
    if classes is not None:
        targets = [ClassifierOutputTarget(int(c)) if isinstance(c, numbers.Integral) else c for c in classes]
    kwargs = dict(call or {}, **({"aug_smooth": True} if aug_smooth else {}))
    kwargs.update({"eigen_smooth": True} if eigen_smooth else {})
    with _reference_run(model):
        cam = cls(model, modules, **init)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                out = cam(x, targets, **kwargs)
        finally:
            _release_pgc(cam)
    return torch.from_numpy(np.asarray(out))


def torchcam_cams_run(model, method, layers, x, classes, *, normalized=True, seed=None, **init):
    """torchcam's map ``(N, h, w)`` at the layer's resolution, detached; several maps are fused
    with the extractor's ``fuse_cams``.

    ``method``: a class or its name in ``torchcam.methods``; ``layers``: module(s) or name(s);
    ``classes``: one class index per image (or one for all). Gradient-based extractors get the
    scores of a forward with autograd; the activation-based ones (CAM, the Score-CAM family) a
    forward under ``no_grad`` and no scores. ``seed``: ``torch.manual_seed`` right before the
    extractor call (after the forward). ``init`` goes to the constructor (``fc_layer``,
    ``num_samples``, ``batch_size``, ``base_method``...); ``input_shape`` defaults to ``x``'s
    (torchcam only uses it to find a layer when none is given).
    """
    tcm = pytest.importorskip("torchcam.methods")

    cls = getattr(tcm, method) if isinstance(method, str) else method
    if "input_shape" in inspect.signature(cls).parameters:
        init.setdefault("input_shape", tuple(x.shape[1:]))
    target = layers if isinstance(layers, (str, nn.Module)) else list(layers)
    class_idx = classes if isinstance(classes, numbers.Integral) else list(classes)
    with _reference_run(model), cls(model, target, **init) as extractor:
        base = getattr(extractor, "base_cam", extractor)
        if isinstance(base, (tcm.CAM, tcm.ScoreCAM)):
            with torch.no_grad():
                model(x)
            args = {}
        else:
            args = {"scores": model(x)}
        if seed is not None:
            torch.manual_seed(seed)
        cams = extractor(class_idx=class_idx, normalized=normalized, **args)
        fused = extractor.fuse_cams(cams) if len(cams) > 1 else cams[0]
    return fused.detach()


@pytest.fixture(scope="session")
def pgc_cams():
    return pgc_cams_run


@pytest.fixture(scope="session")
def torchcam_cams():
    return torchcam_cams_run
