"""instrument / Explainer: exact outputs, de-inplace, autograd scope, invariants, errors."""

import copy
import importlib
import pathlib
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxcam
from fxcam import ops

ROOT = pathlib.Path(fxcam.__file__).parent


# --- a hand-computed toy case -------------------------------------------------------------
class Toy(nn.Module):
    """The input is the activation: 2 channels of 4x4, global average pool, one linear output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def toy_input():
    i, j = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    a1 = i + j  # 0 .. 6
    a2 = torch.zeros(4, 4)
    a2[0, 0] = 8.0
    return torch.stack([a1, a2])[None]


def test_gradcam_by_hand():
    # dy/dA_k = w_k / 16 everywhere -> weights (1/8, -1/16); cam = (i+j)/8 - A2/16.
    # At (0,0): 0 - 8/16 = -0.5 -> ReLU 0; elsewhere (i+j)/8, max 6/8. Normalized: (i+j)/6.
    i, j = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    expected = (i + j) / 6
    cam = fxcam.Explainer(Toy().eval(), "features", "gradcam")(toy_input(), 0)
    torch.testing.assert_close(cam[0], expected, rtol=0, atol=1e-6)


def test_hirescam_and_layercam_by_hand():
    # HiResCAM: sum_k g_k * A_k = (2/16)(i+j) - (1/16) A2  -> same map as Grad-CAM here.
    # LayerCAM: ReLU(g) * A = (2/16)(i+j) (the negative-gradient channel drops out) -> (i+j)/6 incl. (0,0)=0.
    i, j = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    hires = fxcam.Explainer(Toy().eval(), "features", "hirescam")(toy_input(), 0)
    torch.testing.assert_close(hires[0], (i + j) / 6, rtol=0, atol=1e-6)
    x = toy_input()
    x[0, 1, 0, 0] = 100.0  # only the ignored channel changes
    layer = fxcam.Explainer(Toy().eval(), "features", "layercam")(x, 0)
    torch.testing.assert_close(layer[0], (i + j) / 6, rtol=0, atol=1e-6)


def test_upsample_is_bilinear_half_pixel():
    m = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    up = ops.upsample(m, (4, 4))
    # half-pixel centres: output (0,0) clamps to input (0,0); output (0,1) sits at x=0.25 -> 0.25
    assert up[0, 0, 0] == 0 and abs(up[0, 0, 1].item() - 0.25) < 1e-7 and abs(up[0, 1, 1].item() - 0.375) < 1e-7


def test_normalize_is_scale_invariant():
    m = torch.rand(3, 5, 5)
    torch.testing.assert_close(ops.normalize(m * 1e-6), ops.normalize(m))
    assert ops.normalize(torch.zeros(1, 3, 3)).eq(0).all()


# --- instrument -------------------------------------------------------------------------------
def test_logits_bit_identical_and_layer_forms(resnet18, images):
    inst = fxcam.instrument(resnet18, ["layer4", resnet18.layer4[-1], "layer4.1.relu_1", "layer3.1.bn2"])
    logits, acts = inst(images)
    assert torch.equal(logits, resnet18(images))
    assert list(acts) == ["layer4", "layer4.1", "layer4.1.relu_1", "layer3.1.bn2"]
    assert torch.equal(acts["layer4"], acts["layer4.1"])
    assert isinstance(inst, nn.Module)


def test_list_layers(resnet18):
    names = fxcam.list_layers(resnet18)
    assert names[-6:] == ["layer4.1.relu_1", "layer4.1", "layer4", "avgpool", "flatten", "fc"]
    assert "layer4.1.relu" in names and "conv1" in names and names.index("conv1") < names.index("layer1")


def _bn2_reference(model, x):
    """The true output of resnet18.layer4[-1].bn2, computed step by step without in-place ops."""
    blk = model.layer4[-1]
    h = model.maxpool(F.relu(model.bn1(model.conv1(x))))
    h = model.layer3(model.layer2(model.layer1(h)))
    h = model.layer4[0](h)
    return blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h))))), h


def test_tap_before_inplace_ops_is_the_true_value_and_gradient(resnet18, images):
    """BasicBlock does ``out = bn2(out); out += identity; out = relu(out)`` with an in-place ReLU.
    A hook on bn2 sees a tensor that is later overwritten; the tap returns bn2's real output,
    negative values included, and its real gradient."""
    model = copy.deepcopy(resnet18)
    with torch.no_grad():
        true_bn2, identity = _bn2_reference(model, images)
    inst = fxcam.instrument(model, model.layer4[-1].bn2)
    logits, acts = inst.forward_for_grad(images)
    tapped = acts["layer4.1.bn2"]
    torch.testing.assert_close(tapped, true_bn2, rtol=0, atol=1e-5)
    assert (tapped < 0).any()
    (grad,) = torch.autograd.grad(logits[:, 5].sum(), [tapped])
    # reference gradient: d logit_5 / d bn2 through relu(bn2 + identity) -> avgpool -> fc
    leaf = true_bn2.clone().requires_grad_(True)
    out = model.fc(torch.flatten(model.avgpool(F.relu(leaf + identity)), 1))
    (expected,) = torch.autograd.grad(out[:, 5].sum(), [leaf])
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def test_deinplace_rewrites_every_inplace_form():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.conv(x)
            b = a * 1.0
            b.add_(1.0)
            b = F.relu(b, inplace=True)
            torch.relu_(b)
            b = self.act(b)
            b += a
            return self.fc(b.mean((2, 3)))

    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(2, 3, 8, 8)
    inst = fxcam.instrument(m, ["conv", "mul"])
    logits, acts = inst(x)
    assert torch.equal(logits, m(x))
    with torch.no_grad():
        torch.testing.assert_close(acts["conv"], m.conv(x))
        torch.testing.assert_close(acts["mul"], m.conv(x) * 1.0)
    assert m.act.inplace is True  # the user's module is untouched
    for node in inst.graph_module.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        assert not (name.endswith("_") and not name.startswith("_")), node.format_node()
        assert node.kwargs.get("inplace") is not True, node.format_node()
        if node.op == "call_module":
            assert getattr(inst.graph_module.get_submodule(node.target), "inplace", False) is False


def test_prefix_records_no_autograd_history(resnet18, images):
    inst = fxcam.instrument(resnet18, "layer4")
    logits, acts = inst.forward_for_grad(images)
    assert acts["layer4"].grad_fn is None and acts["layer4"].requires_grad
    reached, stack, seen = set(), [logits.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            reached.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    params = {id(p): n for n, p in resnet18.named_parameters()}
    assert {params[r] for r in reached if r in params} == {"fc.weight", "fc.bias"}


def test_dtype_and_device(resnet18, images):
    model = copy.deepcopy(resnet18).to(torch.bfloat16)
    cam = fxcam.Explainer(model, "layer4")(images.to(torch.bfloat16), 3)
    assert cam.dtype == torch.bfloat16 and cam.device == images.device
    assert torch.isfinite(cam.float()).all() and cam.min() >= 0 and cam.max() <= 1
    ref = fxcam.Explainer(resnet18, "layer4")(images, 3)
    assert (cam.float() - ref).abs().mean() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device(resnet18, images):
    model = copy.deepcopy(resnet18).cuda()
    cam = fxcam.Explainer(model, "layer4", "gradcampp")(images.cuda(), 3)
    assert cam.is_cuda
    torch.testing.assert_close(cam.cpu(), fxcam.Explainer(resnet18, "layer4", "gradcampp")(images, 3), atol=1e-4, rtol=0)


def test_explanation_fields_and_size(resnet18, images):
    exp = fxcam.Explainer(resnet18, ["layer3", "layer4"]).explain(images, None, size=(20, 30))
    assert exp.cams.shape == (2, 20, 30)
    assert torch.equal(exp.class_idx, resnet18(images).argmax(1))
    assert set(exp.per_layer) == {"layer3", "layer4"}
    torch.testing.assert_close(exp.scores, resnet18(images).max(1).values)


# --- invariants ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "eigencam", "smoothgradcampp"])
def test_model_is_never_modified(resnet18, images, method, untouched):
    model = copy.deepcopy(resnet18)
    # bare: no hook of any kind and no .grad, before and after
    with untouched(model, bare=True):
        fxcam.Explainer(model, ["layer3.1.bn2", "layer4"], method, aug_smooth=method == "gradcam")(images, [1, 2])
        fxcam.instrument(model, model.layer4[-1].bn2)(images)


def test_import_is_lazy_and_every_public_name_resolves():
    """``import fxcam`` loads no torch, torchvision, timm or onnx (PEP 562); each public name loads on use,
    and a function is never shadowed by a submodule of the same name (``fxcam.instrument``)."""
    code = (
        "import sys, fxcam; print([m for m in ('torch', 'torchvision', 'timm', 'onnx', 'onnxruntime', 'tqdm') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for name in fxcam.__all__:
        assert getattr(fxcam, name) is not None, name
    importlib.import_module("fxcam.instrumented")  # the module of instrument(): the attribute stays the function
    assert callable(fxcam.instrument) and fxcam.instrument.__name__ == "instrument"
    assert callable(fxcam.export) and fxcam.export.__module__ == "fxcam.exporter"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fxcam.nope  # noqa: B018


def test_no_hooks_in_the_package():
    pattern = re.compile(r"register_(forward|full_backward|backward)_(pre_)?hook|\.register_hook\(")
    offenders = [str(p) for p in ROOT.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_training_mode_explains_the_eval_model_and_touches_nothing(resnet18, images, untouched):
    """A model in train() mode (a CAM logged from a training loop): the maps are the eval-mode maps, exactly,
    BatchNorm's running statistics and every flag stay as they were, and repeated calls agree (no dropout)."""
    model = copy.deepcopy(resnet18).train()
    model.fc = nn.Sequential(nn.Dropout(0.5), model.fc)
    reference = copy.deepcopy(model).eval()
    with untouched(model):
        for method in ("gradcam", "ablationcam", "fullgrad"):
            explainer = fxcam.Explainer(model, "layer4", method)
            first, second = explainer(images, [1, 2]), explainer(images, [1, 2])
            assert torch.equal(first, second)
            assert torch.allclose(first, fxcam.Explainer(reference, "layer4", method)(images, [1, 2]), atol=1e-6)
    assert model.training and model.fc[0].training


# --- errors ------------------------------------------------------------------------------------
def test_unknown_layer_lists_close_names(resnet18):
    with pytest.raises(fxcam.LayerNotFoundError) as info:
        fxcam.instrument(resnet18, "layer4.1.bn3")
    msg = str(info.value)
    assert "layer4.1.bn2" in msg and "fxcam.list_layers(model)" in msg


def test_foreign_module_and_ambiguous_module(resnet18):
    with pytest.raises(fxcam.LayerNotFoundError, match="not a submodule"):
        fxcam.instrument(resnet18, nn.Conv2d(1, 1, 1))
    with pytest.raises(fxcam.LayerNotFoundError, match=r"called 2 times.*layer4\.1\.relu_1"):
        fxcam.instrument(resnet18, resnet18.layer4[-1].relu)


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x * 2
        return x


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).mean((2, 3)))


def test_untraceable_model_error_names_module_line_and_fix(images):
    model = Gated().eval()
    with pytest.raises(fxcam.TraceError) as info:
        fxcam.instrument(model, "conv")
    msg = str(info.value)
    assert "'gate' (Gate)" in msg and "if x.sum() > 0" in msg and "leaf_modules=[Gate]" in msg
    # the suggested fix works
    cam = fxcam.Explainer(model, "gate", leaf_modules=[Gate])(images)
    assert cam.shape == (2, 64, 64)


def test_bad_method_target_and_option(resnet18, images):
    with pytest.raises(fxcam.FxcamError, match="Unknown method 'gradkam'.*gradcam"):
        fxcam.Explainer(resnet18, "layer4", "gradkam")
    with pytest.raises(fxcam.FxcamError, match=r"no option \['alhpa'\].*alpha"):
        fxcam.Explainer(resnet18, "layer4", "gradcampp", alhpa="paper")
    with pytest.raises(fxcam.FxcamError, match="out of range.*999"):
        fxcam.Explainer(resnet18, "layer4")(images, 1000)
    with pytest.raises(fxcam.FxcamError, match="3 targets for a batch of 2"):
        fxcam.Explainer(resnet18, "layer4")(images, [1, 2, 3])
    with pytest.raises(fxcam.FxcamError, match="batched image tensor"):
        fxcam.Explainer(resnet18, "layer4")(images[0])


class SideBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.unused = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        self.unused(x)  # computed, never used by the output
        return self.fc(self.conv(x).mean((2, 3)))


def test_layer_the_output_does_not_use_has_no_gradient(images):
    with pytest.raises(fxcam.FxcamError, match=r"does not depend on layer\(s\) \['unused'\]"):
        fxcam.Explainer(SideBranch().eval(), "unused")(images)
    assert fxcam.Explainer(SideBranch().eval(), "conv")(images).shape == (2, 64, 64)


def test_method_names_and_aliases():
    assert {"gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "layercam", "eigencam",
            "eigengradcam", "smoothgradcampp"} <= set(fxcam.methods.available())
    assert fxcam.methods.get("GradCAM++").name == "gradcampp"
    assert fxcam.methods.get("grad-cam").name == "gradcam"


def test_aug_smooth_reports_the_clean_images_output(resnet18, images):
    exp = fxcam.Explainer(resnet18, "layer4", aug_smooth=True).explain(images)
    torch.testing.assert_close(exp.output, resnet18(images))
    assert torch.equal(exp.class_idx, resnet18(images).argmax(1))
    assert fxcam.instrument(resnet18, "layer4").training is False
