"""Export: files reloaded with torch.export.load / onnxruntime, and explainer graphs, against eager fxcam.

The reference is always the eager path of the same (seeded, random-weight) model: the
Instrumented module for ``(logits, activations)`` and the eager ``Explainer`` for maps.
Every file is exported once from a batch-1 example and run at batch sizes 1 and 3.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer

import fxcam
from fxcam import FxcamError


GRAPH_METHODS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "layercam")
ACT_TOL = dict(rtol=1e-5, atol=1e-5)  # (logits, activations) after a round trip through a file
MAP_TOL = dict(rtol=0, atol=1e-4)  # [0, 1] maps: graph vs eager Explainer


def _small_vit() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    torch.nn.init.normal_(m.heads.head.weight, std=0.2)  # torchvision zero-initialises the head: no gradient at all
    return m.eval()


def _small_swin() -> SwinTransformer:
    torch.manual_seed(0)
    m = SwinTransformer(
        patch_size=[4, 4], embed_dim=24, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=10
    )
    return m.eval()


@pytest.fixture(scope="module")
def vit():
    return _small_vit()


@pytest.fixture(scope="module")
def swin():
    return _small_swin()


def _case(name, resnet18, vit, swin):
    """(model, layers, image size) for a named architecture (transformers: fxcam's default layer)."""
    if name == "resnet18":
        return resnet18, ["layer4", "layer3.1.relu_1"], 64
    model = {"vit": vit, "swin": swin}[name]
    return model, [fxcam.default_layer(model, (32, 32))], 32


def _batches(size, channels=3):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(n, channels, size, size, generator=g) for n in (1, 3)]


# -- the instrumented model: x -> (logits, {layer: act}) ---------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_instrumented_pt2_roundtrip(arch, resnet18, vit, swin, tmp_path, untouched):
    model, layers, size = _case(arch, resnet18, vit, swin)
    with untouched(model):
        inst = fxcam.instrument(model, layers)
        path = fxcam.export(inst, _batches(size)[0], tmp_path / "m.pt2")
        assert path == tmp_path / "m.pt2" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]
        loaded = torch.export.load(path).module()
        for x in _batches(size):  # one export, batch 1 and 3
            logits, acts = inst(x)
            got_logits, got_acts = loaded(x)
            assert list(got_acts) == layers  # dict keys are the layer names, in order
            torch.testing.assert_close(got_logits, logits, **ACT_TOL)
            for k in layers:
                torch.testing.assert_close(got_acts[k], acts[k], **ACT_TOL)
        with zipfile.ZipFile(path) as z:
            meta = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("fxcam.json")))
        assert meta["outputs"] == ["logits", *[f"act:{k}" for k in layers]] and meta["layers"] == layers


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_instrumented_onnx_roundtrip(arch, resnet18, vit, swin, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, layers, size = _case(arch, resnet18, vit, swin)
    inst = fxcam.instrument(model, layers)
    path = fxcam.export(inst, _batches(size)[0], tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # weights inside, no temp files left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", *[f"act:{k}" for k in layers]]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic batch dimension
    assert json.loads(session.get_modelmeta().custom_metadata_map["fxcam"])["layers"] == layers
    for x in _batches(size):
        logits, acts = inst(x)
        got = session.run(None, {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got[0]), logits.detach(), **ACT_TOL)
        for k, g in zip(layers, got[1:]):
            torch.testing.assert_close(torch.from_numpy(g), acts[k].detach(), **ACT_TOL)


# -- the explainer graph: x -> (logits, cam) ----------------------------------------------------


@pytest.mark.parametrize(
    "arch,method",
    [("resnet18", m) for m in GRAPH_METHODS] + [("vit", "gradcam"), ("vit", "gradcampp"), ("swin", "gradcam")],
)
def test_explainer_graph_equals_eager(arch, method, resnet18, vit, swin, untouched):
    model, layers, size = _case(arch, resnet18, vit, swin)
    layers = layers if method == "layercam" else layers[:1]  # layercam: two layers, fused
    with untouched(model) if method == "gradcam" else contextlib.nullcontext():
        explainer = fxcam.Explainer(model, layers, method)
        xs = _batches(size)
        graph = explainer.to_graph(xs[0])
        assert isinstance(graph, fx.GraphModule)
        # one graph of ATen ops: no module calls (so no hooks, no Python forward), no autograd engine
        ops = [n for n in graph.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
        assert all(n.op == "call_function" for n in ops)
        # the backward is in it
        assert any("convolution_backward" in str(n.target) or "mm" in str(n.target) for n in ops)
        assert not any(p.requires_grad for p in graph.parameters())
        shared = {p.data_ptr() for p in model.parameters()}
        assert all(p.data_ptr() in shared for p in graph.parameters())  # the model's weights, not copies
        for x in xs:
            logits, cams = graph(x)
            torch.testing.assert_close(logits, model(x).detach(), **ACT_TOL)
            expected = explainer(x)
            assert cams.shape == expected.shape == (x.shape[0], size, size)
            torch.testing.assert_close(cams, expected, **MAP_TOL)
            assert float(expected.amax()) > 0.99  # a real map, not all zeros


def test_explainer_graph_options_equal_eager(resnet18):
    """Class indices as an input (negative ones too), aug_smooth, several layers fused by max."""
    x = _batches(64)[1]
    explainer = fxcam.Explainer(resnet18, "layer4", "gradcampp", aug_smooth=True)
    graph = explainer.to_graph(x[:1], targets="input")
    idx = torch.tensor([5, -1, 300])
    torch.testing.assert_close(graph(x, idx)[1], explainer(x, [5, 999, 300]), **MAP_TOL)
    explainer = fxcam.Explainer(resnet18, ["layer4", "layer3", "layer2"], "xgradcam", fuse="max")
    torch.testing.assert_close(explainer.to_graph(x[:1])(x)[1], explainer(x), **MAP_TOL)


@pytest.mark.parametrize("targets", ["top1", "input"])
def test_explainer_graph_aug_smooth_logits_and_maps_equal_eager(resnet18, targets):
    """With aug_smooth the graph returns what the eager Explainer returns: the clean image's logits
    (it used to return the 0.9-brightness copy's) and the same maps; both are one pipeline."""
    x = _batches(64)[1]
    explainer = fxcam.Explainer(resnet18, "layer4", "gradcam", aug_smooth=True)
    graph = explainer.to_graph(x[:1], targets=targets)
    classes = [4, 1, 7]
    eager = explainer.explain(x, classes if targets == "input" else None)
    logits, cams = graph(x, torch.tensor(classes)) if targets == "input" else graph(x)
    torch.testing.assert_close(logits, eager.output, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, resnet18(x).detach(), **ACT_TOL)  # the clean image, not a copy
    assert not torch.allclose(logits, resnet18(0.9 * x).detach(), **ACT_TOL)
    torch.testing.assert_close(cams, eager.cams, **MAP_TOL)
    assert float(eager.cams.amax()) > 0.5  # real maps (each an average of 6, so its peak may be below 1)


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_explainer_graph_onnx_equals_eager(arch, resnet18, vit, swin, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, layers, size = _case(arch, resnet18, vit, swin)
    targets = "input" if arch == "vit" else "top1"
    explainer = fxcam.Explainer(model, layers[:1], "gradcam")
    xs = _batches(size)
    path = fxcam.export(explainer.to_graph(xs[0], targets=targets), xs[0], tmp_path / "cam.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = ["input", "class_idx"] if targets == "input" else ["input"]
    assert [i.name for i in session.get_inputs()] == inputs
    assert [o.name for o in session.get_outputs()] == ["logits", "cam"]
    for x in xs:
        classes = torch.arange(x.shape[0]) * 3 - 1  # includes -1: the last class
        feed = {"input": x.numpy()}
        if targets == "input":
            feed["class_idx"] = classes.numpy()
        logits, cams = session.run(None, feed)
        expected = explainer(x, classes.tolist() if targets == "input" else None)
        torch.testing.assert_close(torch.from_numpy(cams), expected, **MAP_TOL)
        torch.testing.assert_close(torch.from_numpy(logits), model(x).detach(), **ACT_TOL)


def test_explainer_graph_pt2_and_export_of_an_explainer(vit, tmp_path):
    explainer = fxcam.Explainer(vit, fxcam.default_layer(vit, (32, 32)), "layercam")
    xs = _batches(32)
    path = fxcam.export(explainer, xs[0], tmp_path / "cam.pt2")  # an Explainer: its top-1 graph
    loaded = torch.export.load(path).module()
    for x in xs:
        torch.testing.assert_close(loaded(x)[1], explainer(x), **MAP_TOL)


def test_torch_compile_fullgraph(resnet18, vit):
    """fullgraph=True: a graph break would raise. aot_eager (not inductor) keeps CPU CI fast; the
    inductor runs on resnet50 / vit_b_16 are in the README (Export) and benchmarks/export.py."""
    torch._dynamo.reset()
    x = _batches(32)[1]
    layer = fxcam.default_layer(vit, (32, 32))
    inst = fxcam.instrument(vit, layer)
    logits, acts = torch.compile(inst, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(logits, inst(x)[0], **ACT_TOL)
    torch.testing.assert_close(acts[layer], inst(x)[1][layer], **ACT_TOL)
    explainer = fxcam.Explainer(resnet18, "layer4", "gradcam")
    x = _batches(64)[1]
    buffer = io.BytesIO()
    torch.save(explainer.to_graph(x), buffer)  # a graph pickles like any GraphModule
    buffer.seek(0)
    graph = torch.compile(torch.load(buffer, weights_only=False), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(graph(x)[1], explainer(x), **MAP_TOL)
    torch._dynamo.reset()


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,options,match",
    [
        ("eigencam", {}, "decomposition"),
        ("eigengradcam", {}, "decomposition"),
        ("gradcam", {"eigen_smooth": True}, "eigen_smooth=True cannot be exported"),
        ("kpcacam", {}, "decomposition"),
        ("smoothgradcampp", {}, "driver method"),
        ("scorecam", {}, "driver method"),
    ],
)
def test_unsupported_methods_raise(method, options, match, resnet18):
    if method not in fxcam.methods.available():
        pytest.skip(f"{method} is not registered in this version")
    explainer = fxcam.Explainer(resnet18, "layer4", method, **options)
    with pytest.raises(FxcamError, match=match):
        explainer.to_graph(_batches(64)[0])


@pytest.mark.parametrize(
    "contributions,match",
    [
        (lambda a, g: a * torch.linalg.svdvals(a.flatten(2))[:, :1, None, None], "decomposition.*aten._linalg_svd"),
        (lambda a, g: a * torch.rand_like(g), "draws random numbers.*aten.rand"),
    ],
)
def test_graph_ops_without_onnx_form_raise(contributions, match, vit):
    """Any gradient method (not only the registered ones) whose graph holds an SVD or random draws."""
    explainer = fxcam.Explainer(vit, fxcam.default_layer(vit, (32, 32)), "gradcam")
    explainer.method = dataclasses.replace(explainer.method, name="custom", fn=contributions)
    with pytest.raises(FxcamError, match=match):
        explainer.to_graph(_batches(32)[0])


def test_bad_arguments_raise(resnet18, tmp_path):
    inst = fxcam.instrument(resnet18, "layer4")
    x = _batches(64)[0]
    with pytest.raises(FxcamError, match=r"unknown suffix '\.onnx2'.*'\.pt2'.*'\.onnx'"):
        fxcam.export(inst, x, tmp_path / "m.onnx2")
    with pytest.raises(FxcamError, match="does not exist"):
        fxcam.export(inst, x, tmp_path / "missing" / "m.pt2")
    with pytest.raises(FxcamError, match="targets='top5'.*'top1'.*'input'"):
        fxcam.Explainer(resnet18, "layer4").to_graph(x, targets="top5")
    with pytest.raises(FxcamError, match="batched image tensor"):
        fxcam.export(inst, x[0], tmp_path / "m.pt2")
    static = fxcam.Explainer(resnet18, "layer4").to_graph(x, dynamic_batch=False)
    with pytest.raises(FxcamError, match="dynamic_batch=False"):
        fxcam.export(static, x, tmp_path / "m.pt2")
    with pytest.raises(FxcamError, match=r"traced for inputs \(N, 3, 64, 64\)"):
        fxcam.export(static, torch.zeros(1, 3, 32, 32), tmp_path / "m.pt2", dynamic_batch=False)
    model = _small_vit().train()  # a raw module in training mode would bake in dropout: refused
    with pytest.raises(FxcamError, match="training mode.*model.eval"):
        fxcam.export(model, _batches(32)[0], tmp_path / "v.pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_model_in_training_mode_exports_its_eval_mode_graphs(tmp_path, untouched):
    """fxcam compiles an eval-mode copy of the model: its graphs compute the eval-mode maps and activations,
    whatever the model's flag, and exporting them neither refuses nor changes the model."""
    model = _small_vit().train()
    layer = fxcam.default_layer(model, (32, 32))
    x = _batches(32)[1]
    reference = copy.deepcopy(model).eval()
    with untouched(model):
        _, cams = fxcam.Explainer(model, layer).to_graph(x[:1])(x)
        path = fxcam.export(fxcam.instrument(model, layer), x[:1], tmp_path / "v.pt2")
        logits, _ = torch.export.load(path).module()(x)
    torch.testing.assert_close(cams, fxcam.Explainer(reference, layer)(x), **MAP_TOL)
    torch.testing.assert_close(logits, reference(x).detach(), **ACT_TOL)
    assert model.training


def test_failed_export_leaves_no_file(vit, tmp_path, monkeypatch):
    def broken_save(ep, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    target = tmp_path / "m.pt2"
    target.write_bytes(b"previous export")
    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fxcam.export(fxcam.instrument(vit, fxcam.default_layer(vit, (32, 32))), _batches(32)[0], target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"] and target.read_bytes() == b"previous export"


def test_onnx_missing_names_the_extra(resnet18, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(FxcamError, match=r"pip install fxcam\[onnx\]"):
        fxcam.export(fxcam.instrument(resnet18, "layer4"), _batches(64)[0], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_core_never_imports_onnx():
    """onnx, onnxscript and onnxruntime are imported only inside functions (the optional extra)."""
    root = Path(fxcam.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] in ("onnx", "onnxruntime", "onnxscript") for n in names) and id(node) not in inside:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
