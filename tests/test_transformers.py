"""Vision transformers: layouts (reshape), default layers, GradCAM parity, attention methods.

References are independent of fxcam: pytorch-grad-cam with hand-written reshape transforms,
torchcam's LeGrad, and hand computations (timm's own explicit attention path, captured with
hooks in the test). Models use random weights (weights=None, fixed seeds) and small inputs.
"""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxcam
from fxcam.passes.attention import ATTENTION, explicit_attention
from fxcam.reshape import nchw, swin, vit
from fxcam.trace import node_by_name, trace


# -- hand-written layouts (the independent side of every comparison) --------------------------


def tokens_to_map(prefix: int, grid: tuple[int, int]):
    def f(t):
        return t[:, prefix:].reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)

    return f


def channels_last_to_map(t):
    return t.permute(0, 3, 1, 2)


# -- models (built once per session; random weights, fixed seeds) -------------------------------


@functools.cache
def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "tv_vit_b_16":
        m = torchvision.models.vit_b_16(weights=None)
        nn.init.normal_(m.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    elif name == "tv_vit_tiny":  # torchvision's VisionTransformer class, tiny config
        m = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
        )
        nn.init.normal_(m.heads.head.weight, std=0.02)
    elif name.startswith("tv_"):
        m = getattr(torchvision.models, name[3:])(weights=None)
    elif name == "timm_vit_tiny_dynamic":
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    elif name == "timm_deit_tiny_distilled":
        m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64)
    elif name == "timm_vit_small_reg4_dinov2":
        m = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, num_classes=10)
    elif name == "timm_swin_tiny":
        m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(64, 96))
    elif name == "tiny_vit":  # timm VisionTransformer class, non-square 4x6 patch grid
        m = timm.models.vision_transformer.VisionTransformer(
            img_size=(32, 48), patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
        )
    elif name == "tiny_swin":  # torchvision SwinTransformer class, two small stages
        m = torchvision.models.swin_transformer.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=10
        )
    else:
        raise KeyError(name)
    return m.eval()


def batch(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_maps(cams, shape):
    assert cams.shape == shape
    assert torch.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1
    assert cams.amax((1, 2)).min() > 0.99 and cams.std() > 0.01  # a real map, not a constant


# -- the transforms themselves ------------------------------------------------------------------


def test_explicit_transforms_fold_row_major_and_drop_prefix():
    n, p, h, w, c = 2, 3, 2, 3, 4
    t = torch.arange(n * (p + h * w) * c).reshape(n, p + h * w, c)
    out = vit(grid=(h, w), prefix_tokens=p)(t)
    assert out.shape == (n, c, h, w)
    for i in range(h):
        for j in range(w):
            assert torch.equal(out[:, :, i, j], t[:, p + i * w + j])  # token p + i*w + j sits at row i, col j
    assert vit()(torch.zeros(n, 1 + 16, c)).shape == (n, c, 4, 4)  # 1 prefix + 4x4 (square fallback)
    nhwc = torch.randn(2, 3, 5, 8)
    assert torch.equal(swin()(nhwc), nhwc.permute(0, 3, 1, 2))
    assert nchw()(nhwc) is nhwc
    with pytest.raises(fxcam.ReshapeError, match=r"prefix_tokens=p with p \+ h\*w = 9"):
        vit(grid=(2, 2), prefix_tokens=1)(t)


def test_auto_layout_uses_the_model_and_the_input_size():
    resolve = fxcam.reshape.resolve
    vt = build("timm_vit_tiny_dynamic")
    z = torch.zeros
    # timm: num_prefix_tokens + patch_embed grid of the *actual* input (non-square, not the 224 default)
    assert resolve("auto", vt, "blocks.11.norm1", z(1, 1 + 15 * 20, 192), (240, 320)) == vit((15, 20), 1)
    assert resolve("auto", vt, "blocks.11.norm1", z(1, 1 + 20 * 15, 192), (320, 240)) == vit((20, 15), 1)
    assert resolve("auto", vt, "patch_embed", z(1, 15 * 20, 192), (240, 320)) == vit((15, 20), 0)
    assert resolve("auto", vt, "patch_embed.proj", z(1, 192, 15, 20), (240, 320)) == nchw()
    deit = build("timm_deit_tiny_distilled")
    assert resolve("auto", deit, "blocks.0", z(1, 2 + 16, 192), (64, 64)) == vit((4, 4), 2)
    reg = build("timm_vit_small_reg4_dinov2")
    assert resolve("auto", reg, "blocks.0", z(1, 5 + 16, 384), (56, 56)) == vit((4, 4), 5)
    # torchvision ViT: one class token, patch_size from the model
    assert resolve("auto", build("tv_vit_tiny"), "encoder", z(1, 17, 32), (32, 32)) == vit((4, 4), 1)
    # Swin: NHWC stages, and the NCHW permute after the final norm in the same model
    sw = build("tiny_swin")
    assert resolve("auto", sw, "features.3", z(1, 4, 6, 32), (32, 48)) == swin()
    assert resolve("auto", sw, "permute", z(1, 32, 4, 6), (32, 48)) == nchw()
    assert resolve("auto", sw, "features.3", z(1, 4, 4, 4), (16, 16)) == swin()  # tie: the model decides
    # an explicit vit() leaves the grid to the model and the input
    assert resolve(vit(prefix_tokens=1), vt, "x", z(1, 301, 192), (240, 320)) == vit((15, 20), 1)
    # models fxcam knows nothing about: shapes alone, when unambiguous
    plain = nn.Linear(1, 1)
    assert resolve("auto", plain, "x", z(1, 1 + 15 * 20, 8), (240, 320)) == vit((15, 20), 1)
    assert resolve("auto", plain, "x", z(1, 2048, 8, 8), (299, 299)) == nchw()  # CNN maps off the stride grid


def test_auto_layout_errors_name_the_explicit_transform():
    resolve = fxcam.reshape.resolve
    hint = r"fxcam\.reshape\.vit\(grid=\(h, w\), prefix_tokens=p\) with p \+ h\*w = "
    vt = build("timm_vit_tiny_dynamic")
    with pytest.raises(fxcam.ReshapeError, match=r"holds its 50 tokens after the model's 1 prefix.*" + hint + "50"):
        resolve("auto", vt, "blocks.3", torch.zeros(1, 50, 192), (64, 64))  # not 1 + 4x4, no 50 - 1 grid either
    with pytest.raises(fxcam.ReshapeError, match=r"several layouts: vit\(grid=\(4, 4\), prefix_tokens=1\).*" + hint):
        resolve("auto", nn.Linear(1, 1), "blocks.3", torch.zeros(1, 17, 8), (64, 64))  # 1 + 4x4 or 13 + 2x2
    with pytest.raises(fxcam.ReshapeError, match=r"fxcam\.reshape\.swin\(\)"):  # attention scores in a ViT
        resolve("auto", vt, "blocks.0.attn", torch.zeros(1, 3, 197, 197), (224, 224))
    with pytest.raises(fxcam.ReshapeError, match=r"no spatial layout"):
        resolve("auto", nn.Linear(1, 1), "head", torch.zeros(1, 10), (64, 64))


# -- real architectures: default layer, maps, GradCAM parity with pytorch-grad-cam --------------

CASES = {
    # name: (input shape, default module path, pytorch-grad-cam target module, hand-written layout)
    "tv_vit_b_16": ((1, 3, 224, 224), "encoder.layers.encoder_layer_11.ln_1",
                    lambda m: m.encoder.layers[-1].ln_1, tokens_to_map(1, (14, 14))),
    "tv_swin_t": ((1, 3, 64, 96), "features.7", lambda m: m.features[-1], channels_last_to_map),
    "tv_swin_v2_t": ((1, 3, 64, 96), "features.7", lambda m: m.features[-1], channels_last_to_map),
    "tv_maxvit_t": ((1, 3, 224, 224), "blocks.3", lambda m: m.blocks[-1], None),
    "timm_deit_tiny_distilled": ((2, 3, 64, 64), "blocks.11.norm1", lambda m: m.blocks[-1].norm1,
                                 tokens_to_map(2, (4, 4))),
    "timm_vit_small_reg4_dinov2": ((2, 3, 56, 56), "blocks.11.norm1", lambda m: m.blocks[-1].norm1,
                                   tokens_to_map(5, (4, 4))),
    "timm_swin_tiny": ((2, 3, 64, 96), "layers.3", lambda m: m.layers[-1], channels_last_to_map),
}


@pytest.mark.parametrize("name", list(CASES))
def test_default_layer_maps_and_gradcam_parity(name, pgc_cams):
    shape, path, module, layout = CASES[name]
    model = build(name)
    x = batch(shape)
    targets = [3, 7][: shape[0]]
    ex = fxcam.Explainer(model)  # layers=None, reshape="auto"
    (layer,) = ex.layers
    node = node_by_name(ex.instrumented.graph_module, ex.instrumented.nodes[layer])
    assert (node.target if node.op == "call_module" else layer) == path  # the intended module's output
    cams = ex(x, targets)
    check_maps(cams, (shape[0], *shape[2:]))
    ref = pgc_cams(model, "GradCAM", [module(model)], x, targets, reshape_transform=layout)
    assert (cams - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(224, 224), (240, 320)])
def test_dynamic_img_size_square_and_non_square(size, pgc_cams):
    model = build("timm_vit_tiny_dynamic")
    x = batch((1, 3, *size))
    cams = fxcam.Explainer(model)(x, [5])
    check_maps(cams, (1, *size))
    grid = (size[0] // 16, size[1] // 16)  # (15, 20) for 240 rows x 320 columns
    ref = pgc_cams(model, "GradCAM", [model.blocks[-1].norm1], x, [5], reshape_transform=tokens_to_map(1, grid))
    assert (cams - ref).abs().max() <= 1e-4


def test_gradcam_by_hand_through_register_tokens():
    """The map is the CNN formula on the reshaped tokens; the gradient comes from a hand-written forward."""
    model = build("timm_vit_small_reg4_dinov2")
    x, targets = batch((2, 3, 56, 56), seed=2), torch.tensor([1, 4])
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for blk in model.blocks[:-1]:
            h = blk(h)
    last = model.blocks[-1]
    a = last.norm1(h).detach().requires_grad_(True)  # the tapped layer: blocks[-1].norm1
    y = h + last.ls1(last.attn(a))
    y = y + last.ls2(last.mlp(last.norm2(y)))
    logits = model.forward_head(model.norm(y))
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a)
    # 1 class + 4 register tokens, then a 4x4 grid, row-major
    acts = a.detach()[:, 5:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    grads = g[:, 5:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))
    lo = cam.amin((1, 2), keepdim=True)
    cam = (cam - lo) / ((cam - lo).amax((1, 2), keepdim=True) + 1e-7)
    cam = F.interpolate(cam[:, None], size=(56, 56), mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin((1, 2), keepdim=True)
    cam = (cam - lo) / ((cam - lo).amax((1, 2), keepdim=True) + 1e-7)
    ours = fxcam.Explainer(model, "blocks.11.norm1")(x, targets)
    assert (ours - cam).abs().max() <= 1e-5


# -- every gradient/activation method on a ViT and a Swin ---------------------------------------

GRADIENT_AND_ACTIVATION = [m for m in fxcam.methods.available() if fxcam.methods.get(m).kind != "driver"]
TINY = {
    "tiny_vit": ((2, 3, 32, 48), tokens_to_map(1, (4, 6))),
    "tiny_swin": ((2, 3, 32, 48), channels_last_to_map),
}


@pytest.mark.parametrize("model_name", list(TINY))
@pytest.mark.parametrize("method", [*GRADIENT_AND_ACTIVATION, "smoothgradcampp"])
def test_every_method_on_vit_and_swin(method, model_name):
    shape, layout = TINY[model_name]
    model = build(model_name)
    x = batch(shape, seed=3)
    ex = fxcam.Explainer(model, method=method)  # default layer: blocks[-1].norm1 / features[-1]
    torch.manual_seed(0)
    cams = ex(x, [1, 2])
    assert cams.shape == (2, *shape[2:]) and torch.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1 and cams.amax((1, 2)).min() > 0.99
    ex.reshape = layout  # the hand-written layout gives the same maps: "auto" picked the right one
    torch.manual_seed(0)
    assert torch.allclose(ex(x, [1, 2]), cams, atol=1e-6)


# -- attention: the explicit-attention pass and the attention methods ---------------------------


@pytest.mark.parametrize("name, expected", [("tiny_vit", 2), ("tv_vit_tiny", 3), ("timm_swin_tiny", 12)])
def test_explicit_attention_pass(name, expected, untouched):
    """sdpa (timm) and nn.MultiheadAttention (torchvision) become softmax nodes; outputs unchanged."""
    model = build(name)
    # parameters, buffers, types, flags (fused_attn, training), no tensor constants stored by tracing
    with untouched(model):
        gm = explicit_attention(trace(model).graph_module)
        probs = [n for n in gm.graph.nodes if ATTENTION in n.meta]
        assert len(probs) == expected
        fused = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention or (
            n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.MultiheadAttention))]
        assert not fused
        size = {"tiny_vit": (32, 48), "tv_vit_tiny": (32, 32), "timm_swin_tiny": (64, 96)}[name]
        x = batch((2, 3, *size))
        with torch.no_grad():
            assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=1e-4)
    if name == "tiny_vit":  # timm's own explicit path (fused_attn=False): softmax -> dropout -> matmul is found
        unfused = copy.deepcopy(model)
        for blk in unfused.blocks:
            blk.attn.fused_attn = False
        gm = explicit_attention(trace(unfused).graph_module)
        assert [n.meta[ATTENTION] for n in gm.graph.nodes if ATTENTION in n.meta] == ["blocks.0.attn", "blocks.1.attn"]


def test_trace_adds_no_tensor_constants_to_the_model(untouched):
    """torch.fx stores a forward's tensor constants on the traced root: fxcam traces a shallow copy of it."""
    model = build("timm_swin_tiny")
    with untouched(model):
        trace(model)


def test_legrad_matches_torchcam(torchcam_cams):
    model = build("tv_vit_tiny")
    x, targets = batch((2, 3, 32, 32)), [3, 7]
    layers = ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"]
    ex = fxcam.Explainer(model, layers, method="legrad")
    raw = ex.method.fn(ex.probe(x, targets))[layers[0]][:, 0]
    ref = torchcam_cams(model, "LeGrad", [model.encoder.layers[1], model.encoder.layers[2]], x, targets, normalized=False)
    assert raw.shape == ref.shape == (2, 4, 4)
    assert torch.allclose(raw, ref, rtol=1e-4, atol=1e-7 * ref.abs().max())
    check_maps(ex(x, targets), (2, 32, 32))


def test_gradrollout_by_hand():
    """Chefer et al. 2021, Eq. 5-6, on attention captured from timm's own explicit (non-fused) path."""
    model = build("tiny_vit")
    x, targets = batch((2, 3, 32, 48)), torch.tensor([2, 5])
    ref_model = copy.deepcopy(model)
    captured = []
    for blk in ref_model.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda mod, inp, out: captured.append(out))
    logits = ref_model(x)
    probs = captured
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), probs)
    r = torch.eye(probs[0].shape[-1]).expand(2, -1, -1)
    for a, g in zip(probs, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    ref = r[:, 0, 1:].reshape(2, 4, 6)
    ex = fxcam.Explainer(model, method="gradrollout")
    raw = ex.method.fn(ex.probe(x, targets))[ex.layers[0]][:, 0]
    assert torch.allclose(raw, ref, rtol=1e-4, atol=1e-6)
    check_maps(ex(x, targets), (2, 32, 48))


@pytest.mark.parametrize("name", ["timm_deit_tiny_distilled", "timm_vit_small_reg4_dinov2", "tv_vit_tiny"])
@pytest.mark.parametrize("method", ["legrad", "gradrollout"])
def test_attention_methods_on_prefix_and_register_tokens(name, method):
    model = build(name)
    shape = {"timm_deit_tiny_distilled": (2, 3, 64, 64), "timm_vit_small_reg4_dinov2": (2, 3, 56, 56),
             "tv_vit_tiny": (2, 3, 32, 32)}[name]
    cams = fxcam.Explainer(model, method=method)(batch(shape), [1, 2])
    check_maps(cams, (2, *shape[2:]))


def test_attention_methods_refuse_window_attention():
    with pytest.raises(fxcam.FxcamError, match=r"global self-attention.*window.*'gradcam'"):
        fxcam.Explainer(build("timm_swin_tiny"), method="gradrollout")(batch((1, 3, 64, 96)))
    with pytest.raises(fxcam.FxcamError, match=r"Found no attention in SwinTransformer"):
        fxcam.Explainer(build("tiny_swin"), method="legrad")(batch((1, 3, 32, 48)))  # fused, wrapped op
    torch.manual_seed(0)  # MaxViT: einsum attention inside window and grid partitions
    maxvit = torchvision.models.maxvit.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
        head_dim=4, stochastic_depth_prob=0.0, num_classes=10,
    ).eval()
    with pytest.raises(fxcam.FxcamError, match=r"global self-attention.*'blocks.0.layers.0.layers.window_attention"):
        fxcam.Explainer(maxvit, "blocks.1", method="legrad")(batch((1, 3, 32, 32)))
