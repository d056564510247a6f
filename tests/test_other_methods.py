"""FullGrad, KPCA-CAM, FEM, RandomCAM, ShapleyCAM, Finer-CAM, RefineCAM and SESS against
pytorch-grad-cam 1.5.7 (and torchcam 0.5.0 where it has the method), plus a hand-computed FullGrad.

Maps are compared on [0, 1] with tolerance 1e-4 (observed ~1e-6). Models: torchvision resnet18
(random weights, fixed seed) at 64x64, a batch of 2, and small hand-built CNNs. For FullGrad the
BatchNorm statistics and conv biases are randomized: with torchvision's initialization every
effective bias is 0 and only the input-gradient term would be tested.
"""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxcam
from fxcam.methods.composite import window_starts
from fxcam.methods.fullgrad import fullgrad_map

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget  # noqa: E402

TOL = 1e-4
T = ClassifierOutputTarget


def _diff(ours, ref) -> float:
    return float(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(ref, dtype=np.float64)).max())


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy with non-trivial BatchNorm statistics/affine parameters and conv biases."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.out_channels, generator=g) - 0.5)
    return model


class TinyNet(nn.Sequential):
    """conv(bias) -> BN -> ReLU(inplace) -> conv(bias) -> ReLU -> maxpool -> conv -> BN -> ReLU -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )


@pytest.fixture(scope="module")
def biased_resnet18(resnet18):
    return _randomize(resnet18)


@pytest.fixture(scope="module")
def mobilenet():
    """Its conv/BN layers sit inside torchvision's Conv2dNormActivation, a default fx leaf."""
    torch.manual_seed(0)
    return _randomize(torchvision.models.mobilenet_v3_small(weights=None).eval())


@pytest.fixture(scope="module")
def tinynet():
    torch.manual_seed(0)
    return _randomize(TinyNet().eval(), seed=1)


# ---------------------------------------------------------------------------------------------
# FullGrad


@pytest.mark.parametrize("net_name", ["biased_resnet18", "mobilenet", "tinynet"])
def test_fullgrad_matches_pytorch_grad_cam(net_name, images, request, pgc_cams, untouched):
    net = request.getfixturevalue(net_name)
    ref = pgc_cams(net, "FullGrad", [], images, [T(3), T(7)])  # its backward()'s .grad is undone
    net_layers = {"biased_resnet18": "layer4", "mobilenet": "features.12", "tinynet": "3"}[net_name]
    # the model is untouched (no .grad, no hooks, parameters, buffers, flags), fxcam's backward included
    with untouched(net, bare=True):
        explainer = fxcam.Explainer(net, net_layers, "fullgrad")
        ours = explainer(images, [3, T(7)])
    assert ours.shape == (2, 64, 64)
    assert _diff(ours, ref) <= TOL


def test_fullgrad_bias_terms_matter(biased_resnet18, images):
    """The bias terms change the map (so the parity above tests them), and the BatchNorm bias is the folded one."""
    explainer = fxcam.Explainer(biased_resnet18, "layer4", "fullgrad")
    probe = explainer.probe(images, [3, 7])
    bg = probe.bias_gradients()
    names = list(bg.grads)
    assert len(names) == 20 and names[0] == "bn1"  # every BatchNorm of resnet18, in graph order
    bn = biased_resnet18.bn1
    folded = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(bg.biases["bn1"], folded.detach())
    full = fullgrad_map(bg.x, bg.input_grad, bg.biases, bg.grads)
    input_only = fullgrad_map(bg.x, bg.input_grad, {}, {})
    assert _diff(fxcam.ops.normalize(full), fxcam.ops.normalize(input_only)) > 0.05


def test_fullgrad_hand_computed(pgc_cams):
    r"""y = out[0, 0, 0] of  conv1x1(1->2, bias b) -> BN(2) -> avgpool 2 -> conv1x1(2->1, bias c)  on a 4x4 input.

    dy/d(out) is 1 at (0, 0); through the average pool every upstream gradient is constant on the
    top-left 2x2 block and 0 elsewhere. Each per-channel map is min-max normalized, so:
    - input term: |x * g| = const * |x| on the block -> |x| / max_block |x| there, 0 elsewhere;
    - conv1 (both biases non-zero): 2 x block;  BN: channel 0 folded bias is exactly 0 -> 1 x block;
    - conv2: [[1, 0], [0, 0]] upsampled (half-pixel bilinear) to 4x4: outer([1, .75, .25, 0]).
    """
    conv1 = nn.Conv2d(1, 2, 1)
    bn = nn.BatchNorm2d(2)
    conv2 = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
        conv1.bias.copy_(torch.tensor([0.5, -1.0]))
        bn.running_mean.copy_(torch.tensor([0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0]))
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        s0 = torch.sqrt(torch.tensor(0.25) + bn.eps)
        bn.bias.copy_(torch.stack([0.2 * 2.0 / s0, torch.tensor(0.7)]))  # channel 0: folded bias 0
        conv2.weight.copy_(torch.tensor([1.5, 1.0]).view(1, 2, 1, 1))
        conv2.bias.copy_(torch.tensor([0.25]))
    net = nn.Sequential(conv1, bn, nn.AvgPool2d(2), conv2, nn.Flatten()).eval()
    x = torch.tensor([[1.0, -2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    x = x[None, None]

    block = torch.zeros(4, 4)
    block[:2, :2] = 1
    inp = torch.zeros(4, 4)
    inp[:2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]]) / 4.0
    profile = torch.tensor([1.0, 0.75, 0.25, 0.0])
    total = inp + 2 * block + 1 * block + profile[:, None] * profile[None, :]
    expected = (total - total.min()) / (total.max() - total.min())

    ours = fxcam.Explainer(net, "0", "fullgrad")(x, 0)[0]
    assert (ours - expected).abs().max() <= 1e-5
    ref = pgc_cams(net, "FullGrad", [], x, [T(0)])[0]
    assert _diff(ours, ref) <= 1e-5


def test_fullgrad_runs_the_model_once(biased_resnet18, images, monkeypatch):
    """One forward with autograd on; no extra clean inference pass; output and scores still reported."""
    explainer = fxcam.Explainer(biased_resnet18, "layer4", "fullgrad")
    def no_clean_pass(x):
        raise AssertionError("fullgrad ran an extra inference pass")

    monkeypatch.setattr(explainer.instrumented, "forward", no_clean_pass)  # the clean pass would run it
    expl = explainer.explain(images, [3, 7])
    logits = biased_resnet18(images)
    assert torch.allclose(expl.output, logits, atol=1e-5)
    assert expl.class_idx.tolist() == [3, 7]
    assert torch.allclose(expl.scores, logits[:, [3, 7]].diagonal(), atol=1e-5)


class ConvBN(nn.Sequential):
    pass


def test_fullgrad_warns_about_bias_layers_inside_user_leaves(images):
    """A user leaf module hides its conv/BN from the graph: FullGrad says so and uses the rest."""
    torch.manual_seed(0)
    net = _randomize(
        nn.Sequential(
            ConvBN(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ).eval()
    )
    explainer = fxcam.Explainer(net, "2", "fullgrad", leaf_modules=[ConvBN])
    with pytest.warns(UserWarning, match=r"2 bias layer\(s\) inside leaf modules \['ConvBN'\]"):
        cams = explainer(images, 0)
    assert [b.name for b in explainer.compiler.bias()[1]] == ["2"]
    assert cams.shape == (2, 64, 64)


# ---------------------------------------------------------------------------------------------
# activation-only methods: KPCA-CAM, FEM, RandomCAM


@pytest.mark.parametrize(
    "layers, options",
    [
        (["layer3"], {}),
        (["layer4"], {}),
        (["layer3", "layer4"], {}),
        (["layer3"], {"kernel": "rbf", "gamma": 1e-3}),
        (["layer3"], {"kernel": "poly", "gamma": 0.01}),
        (["layer3"], {"kernel": "cosine"}),
    ],
    ids=["sigmoid-l3", "sigmoid-l4", "sigmoid-l3+l4", "rbf", "poly", "cosine"],
)
def test_kpcacam_matches_pytorch_grad_cam(resnet18, images, layers, options, pgc_cams):
    ref = pgc_cams(resnet18, "KPCA_CAM", layers, images, None, **options)
    ours = fxcam.Explainer(resnet18, layers, "kpcacam", **options)(images)
    assert _diff(ours, ref) <= TOL


@pytest.mark.parametrize("layers, k", [(["layer3", "layer4"], 2.0), (["layer3"], 1.0)])
def test_fem_matches_pytorch_grad_cam(resnet18, images, layers, k, pgc_cams):
    ref = pgc_cams(resnet18, "FEM", layers, images, None, k=k)
    ours = fxcam.Explainer(resnet18, layers, "fem", k=k)(images)
    assert _diff(ours, ref) <= TOL


def test_randomcam_matches_pytorch_grad_cam_and_is_seeded(resnet18, images, monkeypatch, pgc_cams):
    """pytorch-grad-cam draws from numpy's global generator: feed it the weights fxcam draws from
    its seeded torch generator, then the maps must agree."""
    from pytorch_grad_cam import random_cam

    weights = torch.rand((2, 512), generator=torch.Generator().manual_seed(5)) * 2 - 1
    monkeypatch.setattr(random_cam.np.random, "uniform", lambda low, high, size: weights.double().numpy())
    ref = pgc_cams(resnet18, "RandomCAM", ["layer4"], images, [T(3), T(7)])
    ours = fxcam.Explainer(resnet18, "layer4", "randomcam", generator=torch.Generator().manual_seed(5))(images)
    assert _diff(ours, ref) <= TOL
    again = fxcam.Explainer(resnet18, "layer4", "randomcam", generator=torch.Generator().manual_seed(5))(images)
    other = fxcam.Explainer(resnet18, "layer4", "randomcam", generator=torch.Generator().manual_seed(6))(images)
    assert torch.equal(ours, again)
    assert _diff(ours, other) > 0.05


# ---------------------------------------------------------------------------------------------
# ShapleyCAM, Finer-CAM, RefineCAM


def test_shapleycam_matches_pytorch_grad_cam(resnet18, images, pgc_cams):
    """With the ReST target (softmax inside) the Hessian term is non-zero at layer3, so the map
    differs from Grad-CAM's; pytorch-grad-cam supports one layer (its HVP frees the graph)."""
    targets = [ClassifierOutputReST(3), ClassifierOutputReST(7)]
    ref = pgc_cams(resnet18, "ShapleyCAM", ["layer3"], images, targets)
    ours = fxcam.Explainer(resnet18, "layer3", "shapleycam")(images, targets)
    assert _diff(ours, ref) <= TOL
    gradcam = fxcam.Explainer(resnet18, "layer3", "gradcam")(images, targets)
    assert _diff(ours, gradcam) > 0.05
    # two layers: each layer's weights are its own (no cross-layer Hessian terms)
    both = fxcam.Explainer(resnet18, ["layer3", "layer4"], "shapleycam").explain(images, targets)
    assert _diff(both.per_layer["layer3"], fxcam.ops.normalize(ours)) <= TOL


def test_finercam_matches_pytorch_grad_cam(resnet18, images, pgc_cams):
    layer = "layer3"
    ref_top1 = pgc_cams(resnet18, "FinerCAM", [layer], images, None)
    ref_5 = pgc_cams(resnet18, "FinerCAM", [layer], images, None, call={"target_idx": 5})
    assert _diff(fxcam.Explainer(resnet18, layer, "finercam")(images), ref_top1) <= TOL
    assert _diff(fxcam.Explainer(resnet18, layer, "finercam")(images, 5), ref_5) <= TOL
    assert _diff(fxcam.Explainer(resnet18, layer, "gradcam")(images), ref_top1) > 0.05


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_finercam_matches_torchcam(resnet18, images, layer, torchcam_cams):
    ref = torchcam_cams(resnet18, "FinerCAM", layer, images, [3, 7])
    ours = fxcam.Explainer(resnet18, layer, "finercam", variant="torchcam")(images, [3, 7], size=ref.shape[-2:])
    assert _diff(ours, ref) <= TOL


def test_refinecam_matches_pytorch_grad_cam(resnet18, images, pgc_cams):
    layers = ["layer2", "layer3", "layer4"]
    ref = pgc_cams(resnet18, "RefineCAM", layers, images, [T(3), T(7)])
    ours = fxcam.Explainer(resnet18, layers, "refinecam")(images, [3, 7])
    assert _diff(ours, ref) <= TOL
    mean = fxcam.Explainer(resnet18, layers, "gradcampp")(images, [3, 7])
    assert _diff(ours, mean) > 0.05


def test_refinecam_matches_torchcam(resnet18, images, torchcam_cams):
    tcm = pytest.importorskip("torchcam.methods")
    layers = ["layer2", "layer3", "layer4"]
    ref = torchcam_cams(resnet18, "RefineCAM", layers, images, [3, 7], base_method=tcm.GradCAM)
    ours = fxcam.Explainer(resnet18, layers, "refinecam", base="gradcam", resolution="layers")(
        images, [3, 7], size=ref.shape[-2:]
    )
    assert _diff(ours, ref) <= TOL


# ---------------------------------------------------------------------------------------------
# SESS


def test_window_starts():
    assert window_starts(64, 64, 64) == [0]
    assert window_starts(82, 64, 64) == [0, 18]
    assert window_starts(100, 30, 40) == [0, 30, 60]
    assert window_starts(20, 8, 32) == [0]


@pytest.mark.parametrize(
    "options",
    [
        {"num_scales": 2},
        {"num_scales": 2, "pool": "max", "smooth": False, "pre_filter_ratio": 0.5, "step_size": 40},
        {"scales": [64, 80], "theta": 0.3, "use_softmax_scores": False},
    ],
    ids=["default", "max-prefilter", "scales-theta-raw"],
)
def test_sess_matches_pytorch_grad_cam(tinynet, images, options, pgc_cams):
    ref = pgc_cams(tinynet, "SESS", ["3"], images, [T(3), T(7)], **options)
    ours = fxcam.Explainer(tinynet, "3", "sess", batch_size=4, **options)(images, [3, 7])
    assert _diff(ours, ref) <= TOL


def test_sess_two_layers_default_targets(tinynet, images, pgc_cams):
    ref = pgc_cams(tinynet, "SESS", ["0", "3"], images, None, num_scales=2)
    ours = fxcam.Explainer(tinynet, ["0", "3"], "sess", num_scales=2)(images)
    assert _diff(ours, ref) <= TOL


def test_bad_options_name_the_choices(resnet18):
    with pytest.raises(fxcam.FxcamError, match="no option"):
        fxcam.Explainer(resnet18, "layer4", "fullgrad", kernel="rbf")
    with pytest.raises(ValueError, match="kernel must be one of"):
        fxcam.Explainer(resnet18, "layer4", "kpcacam", kernel="laplace")(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="kind"):
        fxcam.Explainer(resnet18, "layer4", "finercam", base="kpcacam")(torch.zeros(1, 3, 64, 64))
