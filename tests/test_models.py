"""The torchvision zoo: traced, instrumented (bit-identical logits) and explained with each
family's usual target layer, random weights, small inputs."""

import pytest
import torch
import torchvision

import fxcam

CASES = [
    # model, usual target layer, input size
    ("resnet50", "layer4", 64),
    ("vgg16", "features.29", 64),
    ("densenet121", "features.norm5", 64),
    ("mobilenet_v3_large", "features.16", 64),
    ("efficientnet_b0", "features.8", 64),
    ("convnext_tiny", "features.7", 64),
    ("regnet_y_400mf", "trunk_output", 64),
    ("inception_v3", "Mixed_7c", 96),
    ("googlenet", "inception5b", 64),
]


@pytest.mark.parametrize("name,layer,size", CASES, ids=[c[0] for c in CASES])
def test_zoo(name, layer, size):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    inst = fxcam.instrument(model, layer)
    with torch.no_grad():
        logits, acts = inst(x)
        assert torch.equal(logits, model(x))
    assert acts[layer].ndim == 4
    cam = fxcam.Explainer(model, layer, "gradcam")(x, [1, 2])
    assert cam.shape == (2, size, size)
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    peak = cam.flatten(1).amax(1)  # normalized: each map peaks at 1, or is all 0 (no positive evidence)
    assert ((peak - 1).abs() < 1e-3).logical_or(peak == 0).all()
