import pytest
import torch
import torch.fx

from fxcam.demo import (
    CLASSES,
    DEFAULT_LAYERS,
    IMAGE_SIZE,
    DemoCNN,
    DemoViT,
    load_demo_model,
    make_scenes,
    standardize,
)
from fxcam.metrics import pointing_game

# Held-out scenes: the training script uses seed 0 for training and 10000 for its test set.
HELD_OUT_SEED = 777


@pytest.fixture(scope="module")
def held_out():
    return make_scenes(200, seed=HELD_OUT_SEED)


@pytest.fixture(scope="module", params=["cnn", "vit"])
def demo_model(request):
    return request.param, load_demo_model(request.param)


# --------------------------------------------------------------------------- scenes
def test_scene_shapes_and_ranges():
    images, labels, masks = make_scenes(13, seed=1)
    assert images.shape == (13, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert labels.shape == (13,) and labels.dtype == torch.int64
    assert masks.shape == (13, IMAGE_SIZE, IMAGE_SIZE) and masks.dtype == torch.bool
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() < len(CLASSES)


def test_scenes_are_deterministic():
    a = make_scenes(20, seed=5)
    b = make_scenes(20, seed=5)
    c = make_scenes(20, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # The global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    make_scenes(4, seed=9)
    assert torch.equal(torch.rand(3), before)


def test_labels_balanced():
    _, labels, _ = make_scenes(60, seed=2)
    assert torch.bincount(labels, minlength=len(CLASSES)).tolist() == [10] * len(CLASSES)
    _, labels, _ = make_scenes(64, seed=3)
    counts = torch.bincount(labels, minlength=len(CLASSES))
    assert counts.min() >= 10 and counts.max() <= 11


def test_masks_match_the_object():
    images, labels, masks = make_scenes(60, seed=4)
    area = masks.flatten(1).sum(1)
    assert area.min() > 150 and area.max() < 2500  # a sizeable object, never the whole scene
    # The object lies inside the frame: no mask pixel on the border.
    border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    assert not border.any()
    # Inside the mask the colour is nearly uniform (one colour, mild shading and noise);
    # a 3-pixel band just outside it is not (background, clutter).
    m = masks.unsqueeze(1).float()
    dil = torch.nn.functional.max_pool2d(m, 7, stride=1, padding=3)
    band = (dil - m).bool().squeeze(1)
    inside_std, band_diff = [], []
    for img, msk, bnd in zip(images, masks, band):
        inside = img[:, msk]  # (3, P)
        inside_std.append(inside.std(1).mean())
        band_diff.append((img[:, bnd] - inside.mean(1, keepdim=True)).abs().mean())
    inside_std, band_diff = torch.stack(inside_std), torch.stack(band_diff)
    assert inside_std.max() < 0.12
    assert (band_diff > 2 * inside_std).float().mean() > 0.9


def test_distractor_count_option():
    plain, _, _ = make_scenes(4, seed=8, distractors=(0, 0))
    busy, _, _ = make_scenes(4, seed=8, distractors=(6, 6))
    assert plain.shape == busy.shape
    with pytest.raises(ValueError, match="distractors"):
        make_scenes(2, seed=0, distractors=(3, 1))
    with pytest.raises(ValueError, match="n must be"):
        make_scenes(-1)
    assert make_scenes(0)[0].shape == (0, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_standardize_matches_model_preprocessing():
    x = torch.rand(2, 3, 8, 8)
    model = DemoCNN()
    assert torch.allclose(model.normalize(x), standardize(x))


# --------------------------------------------------------------------------- models
def test_models_trace_with_fx():
    x = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for cls in (DemoCNN, DemoViT):
        model = cls().eval()
        gm = torch.fx.symbolic_trace(model)
        assert torch.equal(gm(x), model(x))
    vit = DemoViT()
    gm = torch.fx.symbolic_trace(vit)
    assert any(n.target == "softmax" for n in gm.graph.nodes)
    assert vit.num_prefix_tokens == 1 and vit.patch_size == 8
    assert vit.patch_embed.dynamic_feat_size((96, 96)) == (12, 12)


def test_default_layers_exist_and_shapes():
    x = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    cnn, vit = DemoCNN().eval(), DemoViT().eval()
    modules = dict(cnn.named_modules())
    assert DEFAULT_LAYERS["cnn"] in modules
    assert cnn.features[-1] is modules[DEFAULT_LAYERS["cnn"]]
    with torch.no_grad():
        assert cnn.features(cnn.normalize(x)).shape == (1, 96, 12, 12)
    assert DEFAULT_LAYERS["vit"] in dict(vit.named_modules())
    assert vit.blocks[-1].norm1 is dict(vit.named_modules())[DEFAULT_LAYERS["vit"]]


def test_load_demo_model(demo_model):
    name, model = demo_model
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())
    with pytest.raises(ValueError, match="cnn"):
        load_demo_model("resnet")
    with pytest.raises(ValueError, match="'avg' or 'max', got 'lse'"):
        DemoCNN(pool="lse")
    assert isinstance(DemoCNN(pool="avg").pool, torch.nn.AdaptiveAvgPool2d)
    assert isinstance(DemoCNN().pool, torch.nn.AdaptiveMaxPool2d)  # the shipped model's


def test_demo_models_accuracy(demo_model, held_out):
    name, model = demo_model
    images, labels, _ = held_out
    with torch.inference_mode():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    assert acc >= 0.95, f"{name}: held-out accuracy {acc:.3f}"


# --------------------------------------------------------------------------- with the core
def _explainer():
    fxcam = pytest.importorskip("fxcam")
    if not hasattr(fxcam, "Explainer"):
        pytest.skip("fxcam.Explainer is not available")
    return fxcam.Explainer


# Issue 6's target is GradCAM on the CNN >= 90%. The other rows hold the shipped weights to
# what they measure on these 200 scenes, with a margin, so that a regression shows: CNN
# EigenCAM 0.98; ViT GradCAM 0.43 (its gradient maps peak on the outline) and EigenCAM 0.92.
@pytest.mark.parametrize(
    "name,method,threshold",
    [("cnn", "gradcam", 0.9), ("cnn", "eigencam", 0.9), ("vit", "gradcam", 0.35), ("vit", "eigencam", 0.85)],
)
def test_pointing_game(name, method, threshold, held_out):
    Explainer = _explainer()
    images, labels, masks = held_out
    model = load_demo_model(name)
    cams = Explainer(model, DEFAULT_LAYERS[name], method=method)(images, targets=labels.tolist())
    assert cams.shape == masks.shape
    hits = pointing_game(cams, masks).float().mean().item()
    assert hits >= threshold, f"{name} {method}: pointing game {hits:.3f}"


# --------------------------------------------------------------------------- training script
@pytest.fixture(scope="module")
def train_demo():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "train_demo.py"
    spec = importlib.util.spec_from_file_location("train_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OPS = [(t, w, h) for t in (False, True) for w in (False, True) for h in (False, True)]


def test_d4_ops_are_the_symmetries_of_the_square(train_demo):
    x = torch.arange(12.0).view(1, 3, 4)  # not square: a transpose changes the shape
    images = {tuple(train_demo._d4(x, op).flatten().tolist()) for op in OPS}
    assert len(images) == 8  # eight different results
    sq = torch.arange(16.0).view(4, 4)
    for op in OPS:
        assert torch.equal(train_demo._d4(train_demo._d4(sq, op), op, inverse=True), sq)
    # (True, False, False) is the transpose; (False, True, True) the rotation by 180 degrees.
    assert torch.equal(train_demo._d4(sq, (True, False, False)), sq.T)
    assert torch.equal(train_demo._d4(sq, (False, True, True)), sq.flip(0).flip(1))


def test_cam_equivariance_loss(train_demo):
    # A peak centred on an object at (4, 3) of a 12x12 grid, and the same scene flipped
    # left-right: an equivariant model puts the peak at (4, 8); the loss is 0.
    op = (False, True, False)
    cam = torch.zeros(1, 12, 12)
    cam[0, 4, 3] = 1.0
    both = torch.cat([cam, train_demo._d4(cam, op)])
    assert train_demo.cam_equivariance(both, op).item() == 0.0
    # A model whose peak sits one cell to the right of the object, whichever way the scene
    # is flipped, is not equivariant: on the flipped scene it answers (4, 9), not (4, 7).
    off = torch.zeros(1, 12, 12)
    off[0, 4, 9] = 1.0
    loss = train_demo.cam_equivariance(torch.cat([torch.roll(cam, 1, -1), off]), op)
    # Two unit peaks in different cells: squared difference 2/144, mean variance
    # (1/144 - 1/144**2) * 144/143, plus 1e-3 in the denominator.
    var = (1 / 144 - 1 / 144**2) * 144 / 143
    assert loss.item() == pytest.approx((2 / 144) / (var + 1e-3), rel=1e-5)
    # The variance in the denominator carries no gradient (see the docstring).
    a = torch.rand(2, 12, 12, requires_grad=True)
    train_demo.cam_equivariance(a, op).backward()
    scale = (a[0].var() + train_demo._d4(a[1], op, inverse=True).var()).detach() / 2 + 1e-3
    diff = a[0] - train_demo._d4(a[1], op, inverse=True)
    expected0 = 2 * diff / 144 / scale  # d/d a0 of mean(diff^2) / scale (one pair in the batch)
    assert torch.allclose(a.grad[0], expected0.detach(), atol=1e-6)
