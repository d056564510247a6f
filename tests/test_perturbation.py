"""AblationCAM, Score-CAM, SS-CAM, IS-CAM and CAM: parity with pytorch-grad-cam 1.5.7 and
torchcam 0.5.0, hand-computed toys, and the options that must not change a map.

Perturbation methods run one forward per channel, so the references run on small models:
torchvision resnet18 (random weights, fixed seed) at 32x32 on a layer with few channels, and
tiny CNNs built here (one with a tap inside a residual block whose values are negative, one
with channels that are all zero after the ReLU). Maps are compared on [0, 1], tolerance 1e-4.
"""

import functools
import sys

import pytest
import torch
from torch import nn

import fxcam
from fxcam.errors import FxcamError

pgc = pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

TOL = 1e-4
TIGHT = 1e-5  # tiny models, where the maps agree to ~1e-7: catches e.g. a 1% error in SS-CAM's noise


class TinyResidual(nn.Module):
    """stem -> [conv_a -> relu -> conv_b] + stem -> relu -> GAP -> fc. ``conv_a``'s output is
    the middle of a residual block and has negative values (ablation value min - 1e7)."""

    def __init__(self, width: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True))
        self.conv_a = nn.Conv2d(width, width, 3, padding=1)
        self.act_a = nn.ReLU()  # in place, it would rewrite pytorch-grad-cam's hooked activation
        self.conv_b = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.skip = nn.AvgPool2d(2)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        s = self.stem(x)
        y = self.conv_b(self.act_a(self.conv_a(s)))
        y = self.act(y + self.skip(s))
        return self.fc(torch.flatten(self.pool(y), 1))


class TinyDead(nn.Module):
    """conv -> ReLU -> conv -> ReLU (``act2``: the tap) -> GAP -> fc, with ``dead`` channels of
    ``act2`` forced to all-zero by a very negative bias."""

    def __init__(self, width: int = 10, dead: tuple[int, ...] = (1, 4, 7), classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, width, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        with torch.no_grad():
            self.conv2.bias[list(dead)] = -1e4

    def forward(self, x):
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@functools.lru_cache(maxsize=None)
def _torchvision(name):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _seeded(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw).eval()


@pytest.fixture(scope="module")
def tiny_res():
    return _seeded(TinyResidual)


@pytest.fixture(scope="module")
def tiny_dead():
    return _seeded(TinyDead)


@pytest.fixture(scope="module")
def x16():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _weights(method, net, layer, x, classes, **options):
    """fxcam's per-channel weights ``(N, C)``: contributions divided by the activations."""
    explainer = fxcam.Explainer(net, layer, method, **options)
    probe = explainer.probe(x, classes)
    contrib = explainer.method.fn(probe, **options)[layer]
    acts = probe.acts[layer]
    return (contrib.flatten(2).sum(2) / acts.flatten(2).sum(2)), acts


# -- AblationCAM ---------------------------------------------------------------------------------
def test_ablationcam_matches_pytorch_grad_cam_resnet18(resnet18, x32, pgc_cams):
    """layer2 of resnet18 (post-ReLU: ablation value 0), 128 channels at 4x4, two images, two classes."""
    ref = pgc_cams(resnet18, "AblationCAM", "layer2", x32, [3, 7])
    ours = fxcam.Explainer(resnet18, "layer2", "ablationcam")(x32, [3, 7])
    assert ours.shape == (2, 32, 32)
    assert (ours - ref).abs().max() <= TOL


def test_ablationcam_inside_residual_block_negative_values(tiny_res, x16, pgc_cams):
    """A tap inside a residual block (conv_b, before the add: the skip branch crosses the split)
    whose minimum is negative: every channel is ablated to min - 1e7, which the ReLU after the
    add does not undo. pytorch-grad-cam computes that value only with batch_size=1 (see the
    docstring); fxcam's chunking must not matter."""
    inst = fxcam.instrument(tiny_res, "conv_b")
    assert len(inst.split_for("conv_b").boundary) == 2  # the activation and the skip branch
    assert inst(x16)[1]["conv_b"].min() < 0
    ref = pgc_cams(tiny_res, "AblationCAM", "conv_b", x16, [1, 4], batch_size=1)
    for batch_size in (None, 1, 5):
        ours = fxcam.Explainer(tiny_res, "conv_b", "ablationcam", batch_size=batch_size)(x16, [1, 4])
        assert (ours - ref).abs().max() <= TOL


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # pytorch-grad-cam: 0/0 for dead channels
def test_ablationcam_ratio_channels_to_ablate_matches(tiny_dead, x16, pgc_cams):
    ref = pgc_cams(tiny_dead, "AblationCAM", "act2", x16, [0, 2], ratio_channels_to_ablate=0.3)
    ours = fxcam.Explainer(tiny_dead, "act2", "ablationcam", ratio_channels_to_ablate=0.3)(x16, [0, 2])
    assert (ours - ref).abs().max() <= TOL
    full = fxcam.Explainer(tiny_dead, "act2", "ablationcam")(x16, [0, 2])
    assert (full - ours).abs().max() > 1e-3  # the ratio really leaves channels out


def test_ablationcam_hand_computed():
    """tap A (2 channels, 2x2) -> GAP -> Linear(w=[2, -1], b=1): y = 1 + 2 mean(A_0) - mean(A_1).

    A_0 = [[1, 3], [0, 4]] (mean 2), A_1 = [[2, 0], [0, 2]] (mean 1), min 0 -> ablate to 0:
    y = 4, y_0 = 1 - 1 = 0, y_1 = 1 + 4 = 5, so w = ((4 - 0) / 4, (4 - 5) / 4) = (1, -0.25) and
    L = ReLU(A_0 - 0.25 A_1) = [[0.5, 3], [0, 3.5]] -> / 3.5."""

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2, 1)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))
                self.fc.bias.fill_(1.0)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))

    x = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]], [[2.0, 0.0], [0.0, 2.0]]]])
    w, _ = _weights("ablationcam", Toy().eval(), "features", x, [0])
    assert torch.allclose(w, torch.tensor([[1.0, -0.25]]), atol=1e-6)
    cam = fxcam.Explainer(Toy().eval(), "features", "ablationcam")(x, 0)
    expected = torch.tensor([[[0.5, 3.0], [0.0, 3.5]]]) / 3.5
    assert torch.allclose(cam, expected, atol=1e-6)


def test_ablationcam_options_do_not_change_the_map(tiny_dead, x16):
    """Skipping unchanged (all-zero) channels and any chunk size give the same map."""
    base = fxcam.Explainer(tiny_dead, "act2", "ablationcam", skip_unchanged=False, batch_size=1)(x16, [0, 2])
    for opts in ({}, {"batch_size": 4}, {"max_memory": 1}):
        ours = fxcam.Explainer(tiny_dead, "act2", "ablationcam", **opts)(x16, [0, 2])
        assert (ours - base).abs().max() <= 1e-5
    live = [c for c in range(10) if c not in (1, 4, 7)]
    skip, _ = _weights("ablationcam", tiny_dead, "act2", x16, [0, 2])
    full, _ = _weights("ablationcam", tiny_dead, "act2", x16, [0, 2], skip_unchanged=False)
    assert torch.allclose(skip[:, live], full[:, live], rtol=1e-4, atol=1e-6)


def test_ablationcam_two_layers_each_uses_its_own_suffix(tiny_res, x16, pgc_cams):
    """conv_b lies in conv_a's suffix: each layer is ablated and re-run from its own split."""
    both = fxcam.Explainer(tiny_res, ["conv_a", "conv_b"], "ablationcam").explain(x16, [1, 4]).per_layer
    for layer in ("conv_a", "conv_b"):
        alone = fxcam.Explainer(tiny_res, layer, "ablationcam").explain(x16, [1, 4]).per_layer[layer]
        assert (both[layer] - alone).abs().max() <= 1e-5
        ref = pgc_cams(tiny_res, "AblationCAM", layer, x16, [1, 4], batch_size=1)
        assert (both[layer] - ref).abs().max() <= TOL


def test_ablationcam_does_not_touch_the_model(tiny_res, x16, untouched):
    with untouched(tiny_res, bare=True):
        fxcam.Explainer(tiny_res, "conv_a", "ablationcam")(x16)
    assert tiny_res.act.inplace  # de-inplaced in fxcam's graph copy only


def test_ablationcam_vit_tokens_matches_pytorch_grad_cam(pgc_cams):
    """A ViT block's norm1 (tokens (N, 1 + 16, 24), negative values): fxcam ablates the token
    tensor's channel axis over every token, class token included, as pytorch-grad-cam's
    AblationLayerVit (batch_size=1: see the docstring on negative values)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=6
    ).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def tokens_to_nchw(t):
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ref = pgc_cams(
        vit,
        "AblationCAM",
        [vit.blocks[-1].norm1],
        x,
        [1, 4],
        reshape_transform=tokens_to_nchw,
        ablation_layer=pgc.ablation_layer.AblationLayerVit(),
        batch_size=1,
    )
    ours = fxcam.Explainer(vit, "blocks.1.norm1", "ablationcam")(x, [1, 4])
    assert (ours - ref).abs().max() <= TOL


def test_channel_axis_of_each_layout():
    from fxcam.methods.ablation import channel_axis

    assert channel_axis(fxcam.reshape.nchw(), torch.zeros(2, 5, 3, 4), "l") == 1
    assert channel_axis(fxcam.reshape.vit(grid=(3, 4), prefix_tokens=1), torch.zeros(2, 13, 5), "l") == 2
    assert channel_axis(fxcam.reshape.swin(), torch.zeros(2, 3, 4, 5), "l") == 3
    with pytest.raises(FxcamError, match="which of its axes"):
        channel_axis(lambda t: t.float().mean(1, keepdim=True).expand(-1, 3, -1, -1), torch.zeros(2, 5, 3, 4), "l")


# -- Score-CAM family ------------------------------------------------------------------------
def test_scorecam_matches_torchcam_resnet18(resnet18, x32, torchcam_cams):
    """layer1 of resnet18 at 32x32: 64 masks of 8x8 upsampled to 32x32 (torchcam: normalize, then
    bilinear upsampling with align_corners=False). Two images: see the tiny-model tests."""
    ref = torchcam_cams(resnet18, "ScoreCAM", "layer1", x32[:1], [3])
    ours = fxcam.Explainer(resnet18, "layer1", "scorecam")(x32[:1], [3], size=ref.shape[-2:])
    assert (ours - ref).abs().max() <= TOL


def test_scorecam_matches_pytorch_grad_cam_resnet18(resnet18, x32, pgc_cams):
    """masks="pytorch-grad-cam": upsample with align_corners=True, then normalize. The two
    references' maps differ (the test checks that too, so neither comparison is vacuous)."""
    ref = pgc_cams(resnet18, "ScoreCAM", "layer1", x32[:1], [7])
    ours = fxcam.Explainer(resnet18, "layer1", "scorecam", masks="pytorch-grad-cam")(x32[:1], [7])
    assert (ours - ref).abs().max() <= TOL
    torchcam_style = fxcam.Explainer(resnet18, "layer1", "scorecam")(x32[:1], [7])
    assert (torchcam_style - ref).abs().max() > 1e-3


def test_scorecam_skip_zero_is_exact(tiny_dead, x16, torchcam_cams):
    """All-zero channels are scored once per image (0 * x) and keep their place in the softmax:
    the weights equal torchcam's, not just the map."""
    probe = fxcam.Explainer(tiny_dead, "act2", "scorecam").probe(x16, [0, 2])
    assert bool((probe.acts["act2"].flatten(2) == 0).all(2)[:, [1, 4, 7]].all())
    skip, acts = _weights("scorecam", tiny_dead, "act2", x16, [0, 2])
    full, _ = _weights("scorecam", tiny_dead, "act2", x16, [0, 2], skip_zero=False)
    live = [c for c in range(10) if c not in (1, 4, 7)]
    assert torch.allclose(skip[:, live], full[:, live], rtol=1e-5, atol=1e-7)
    ref = torchcam_cams(tiny_dead, "ScoreCAM", "act2", x16, [0, 2], batch_size=7)
    for opts in ({}, {"skip_zero": False, "batch_size": 3}):
        ours = fxcam.Explainer(tiny_dead, "act2", "scorecam", **opts)(x16, [0, 2], size=ref.shape[-2:])
        assert (ours - ref).abs().max() <= TOL


@pytest.mark.parametrize("skip_zero", [True, False])
def test_sscam_matches_torchcam(tiny_dead, x16, skip_zero, torchcam_cams):
    """Same noise stream: torchcam draws from the global generator, one (N, C, H, W) tensor per
    sample; fxcam draws the same. skip_zero leaves dead channels out of the softmax, which scales
    the other weights uniformly: the normalized map is unchanged."""
    torch.manual_seed(7)
    ref = torchcam_cams(tiny_dead, "SSCAM", "act2", x16, [0, 2], num_samples=3)
    torch.manual_seed(7)
    ours = fxcam.Explainer(tiny_dead, "act2", "sscam", num_samples=3, skip_zero=skip_zero)(
        x16, [0, 2], size=ref.shape[-2:]
    )
    assert (ours - ref).abs().max() <= TIGHT
    torch.manual_seed(8)  # other noise, other map: the noise really matters
    other = fxcam.Explainer(tiny_dead, "act2", "sscam", num_samples=3)(x16, [0, 2], size=ref.shape[-2:])
    assert (other - ref).abs().max() > 1e-3


def test_sscam_generator_is_reproducible(tiny_dead, x16):
    run = lambda: fxcam.Explainer(  # noqa: E731
        tiny_dead, "act2", "sscam", num_samples=2, generator=torch.Generator().manual_seed(5)
    )(x16)
    assert torch.equal(run(), run())


@pytest.mark.parametrize("net_name, layer", [("tiny_dead", "act2"), ("tiny_res", "conv_b")])
def test_iscam_matches_torchcam(request, x16, net_name, layer, torchcam_cams):
    net = request.getfixturevalue(net_name)
    ref = torchcam_cams(net, "ISCAM", layer, x16, [0, 2], num_samples=4)
    ours = fxcam.Explainer(net, layer, "iscam", num_samples=4)(x16, [0, 2], size=ref.shape[-2:])
    assert (ours - ref).abs().max() <= TIGHT
    score = fxcam.Explainer(net, layer, "scorecam")(x16, [0, 2], size=ref.shape[-2:])
    assert (ours - score).abs().max() > 1e-4  # IS-CAM is not Score-CAM


def test_scorecam_callable_targets(tiny_dead, x16, pgc_cams):
    """A callable target (softmax probability) per image, batched over masked copies."""
    targets = [fxcam.targets.SoftmaxOutput(0), fxcam.targets.SoftmaxOutput(3)]
    ours = fxcam.Explainer(tiny_dead, "act2", "scorecam", masks="pytorch-grad-cam")(x16, targets)
    ref = pgc_cams(tiny_dead, "ScoreCAM", "act2", x16, [ClassifierOutputSoftmaxTarget(c) for c in (0, 3)])
    assert (ours - ref).abs().max() <= TOL


def test_scorecam_rejects_unknown_mask_style(tiny_dead, x16):
    with pytest.raises(FxcamError, match="masks must be one of"):
        fxcam.Explainer(tiny_dead, "act2", "scorecam", masks="opencv")(x16)


# -- CAM ---------------------------------------------------------------------------------------
def test_cam_matches_torchcam_resnet18(resnet18, torchcam_cams):
    """torchcam normalizes sum_k w_k A_k without a ReLU; fxcam ReLUs first (documented).
    At 128x128 layer4 is a 4x4 map."""
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    raw = torchcam_cams(resnet18, "CAM", "layer4", x, [3, 7], fc_layer="fc", normalized=False)
    assert raw.min() < 0 < raw.max()
    ours = fxcam.Explainer(resnet18, "layer4", "cam")(x, [3, 7], size=raw.shape[-2:])
    assert (ours - fxcam.ops.normalize(torch.relu(raw))).abs().max() <= TOL


def test_cam_hand_computed():
    """Classifier rows w_0 = [1, 2], w_1 = [0, -1] on A_0 = [[1, 0], [0, 1]], A_1 = [[0, 1], [2, 0]]:
    class 0 -> [[1, 2], [4, 1]] -> (v - 1) / 3; class 1 -> ReLU(-A_1) = 0 everywhere -> 0."""

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.fc = nn.Linear(2, 2)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
                self.fc.bias.fill_(5.0)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 0.0]]]]).repeat(2, 1, 1, 1)
    cam = fxcam.Explainer(Toy().eval(), "features", "cam")(x, [0, 1])
    assert torch.allclose(cam[0], torch.tensor([[0.0, 1.0], [3.0, 0.0]]) / 3, atol=1e-6)
    assert torch.equal(cam[1], torch.zeros(2, 2))


@pytest.mark.parametrize(
    "name, layer",
    [("densenet121", "features.norm5"), ("densenet121", "relu"), ("efficientnet_b0", "features"),
     ("mobilenet_v3_small", "features")],
)
def test_cam_finds_the_classifier_or_says_why(name, layer):
    net = _torchvision(name)
    x = torch.randn(1, 3, 32, 32)
    explainer = fxcam.Explainer(net, layer, "cam")
    if layer == "features.norm5":  # densenet: norm5 -> ReLU -> GAP -> Linear: the ReLU is in the way
        with pytest.raises(FxcamError, match="relu"):
            explainer(x)
    elif name == "mobilenet_v3_small":  # classifier = Linear -> Hardswish -> Dropout -> Linear
        with pytest.raises(FxcamError, match="not the model's output"):
            explainer(x)
    else:
        cam = explainer(x, 3)
        fc = net.classifier if name == "densenet121" else net.classifier[1]
        acts = fxcam.instrument(net, layer)(x)[1][layer]
        expected = torch.relu((fc.weight[3][:, None, None] * acts[0]).sum(0))
        expected = fxcam.ops.normalize(fxcam.ops.upsample(fxcam.ops.normalize(expected[None]), (32, 32)))
        assert (cam - expected).abs().max() <= TOL


def test_cam_errors(resnet18, vgg11, x32):
    with pytest.raises(FxcamError, match="global average pool"):  # vgg: AdaptiveAvgPool2d((7, 7)) + MLP
        fxcam.Explainer(vgg11, "features.20", "cam")(x32)
    with pytest.raises(FxcamError, match="layer3"):  # layer3 feeds layer4, not the pool
        fxcam.Explainer(resnet18, "layer3", "cam")(x32)
    with pytest.raises(FxcamError, match="class indices"):
        fxcam.Explainer(resnet18, "layer4", "cam")(x32, lambda row: row[0])


# -- progress --------------------------------------------------------------------------------
def test_progress_bar_only_when_asked(tiny_dead, x16, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    fxcam.Explainer(tiny_dead, "act2", "scorecam")(x16)
    fxcam.Explainer(tiny_dead, "act2", "ablationcam")(x16)
    assert capsys.readouterr().err == ""
    fxcam.Explainer(tiny_dead, "act2", "scorecam", progress=True)(x16)
    assert "scorecam act2" in capsys.readouterr().err
    fxcam.Explainer(tiny_dead, "act2", "ablationcam", progress=True)(x16)
    assert "ablationcam act2" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm not installed
    with pytest.warns(UserWarning, match="needs tqdm"):
        fxcam.Explainer(tiny_dead, "act2", "scorecam", progress=True)(x16)
