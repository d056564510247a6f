"""The split graph: ``suffix(*prefix(x))`` is the model, bit for bit, wherever it is cut.

Cuts in the middle of residual blocks (resnet50 bottleneck, efficientnet_b0 MBConv with its
skip connection) and of a dense block (densenet121: every earlier feature map crosses the cut
into the concatenation), one tap and several, in eval mode, compared with ``torch.equal``
against the untouched model and the unsplit instrumented graph.
"""

import functools

import pytest
import torch
import torchvision

import fxcam
from fxcam.passes import split_at


@functools.lru_cache(maxsize=None)
def _model(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


CASES = {
    # tap inside a bottleneck: the block input skips over it to the residual add
    "resnet50": ["layer3.1.conv2", "layer1.0.relu_1", "layer4.2.bn3"],
    # inside a dense layer: the block's earlier features skip over it into the next concatenation
    "densenet121": ["features.denseblock2.denselayer3.conv1", "features.denseblock3.denselayer1.norm2"],
    # inside MBConv blocks with a residual (features.4.1: 80 -> 80 channels): the depthwise conv
    # and the squeeze-excitation output
    "efficientnet_b0": ["features.4.1.block.1", "features.6.2.block.2"],
}


def _check(model, inst, split, x):
    with torch.inference_mode():
        expected = model(x)
        out, acts = inst(x)
        values = split.prefix(x)
        assert len(values) == len(split.boundary)
        s_out, s_acts = split.suffix(*values)
    assert torch.equal(s_out, expected)
    assert torch.equal(out, expected)
    assert acts.keys() == s_acts.keys()
    for k in acts:
        assert torch.equal(s_acts[k], acts[k])


@pytest.mark.parametrize("name", list(CASES))
def test_split_inside_a_block_is_exact(name, x):
    model = _model(name)
    layer = CASES[name][0]
    inst = fxcam.instrument(model, layer)
    split = inst.split
    assert split.at == (inst.nodes[layer],)
    # something other than the tap crosses the cut: the skip branch / earlier features
    assert len(split.boundary) > 1, split.boundary
    _check(model, inst, split, x)


@pytest.mark.parametrize("name", list(CASES))
def test_split_multi_tap_and_per_layer(name, x):
    """All taps at once (``Instrumented.split``) and each tap alone (``split_for``)."""
    model = _model(name)
    layers = CASES[name]
    inst = fxcam.instrument(model, layers)
    _check(model, inst, inst.split, x)
    for layer in layers:
        split = inst.split_for(layer)
        assert split.at == (inst.nodes[layer],)
        assert inst.nodes[layer] in split.boundary
        _check(model, inst, split, x)
    assert inst.split_for(layers[0]) is inst.split_for(layers[0])  # built once


def test_split_ablating_the_suffix_input_changes_only_what_follows(x):
    """A perturbation of the tap enters the suffix: zeroing the tapped value in the suffix is the
    same as a model whose layer outputs zeros (checked on resnet50 with layer4.0 replaced)."""
    model = _model("resnet50")
    inst = fxcam.instrument(model, "layer4.0")
    split = inst.split_for("layer4.0")
    with torch.inference_mode():
        values = list(split.prefix(x))
        pos = split.boundary.index(inst.nodes["layer4.0"])
        values[pos] = torch.zeros_like(values[pos])
        out, acts = split.suffix(*values)
        expected = model.fc(torch.flatten(model.avgpool(model.layer4[2](model.layer4[1](values[pos]))), 1))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(acts["layer4.0"], values[pos])


def test_split_at_rejects_unknown_nodes():
    inst = fxcam.instrument(_model("resnet50"), "layer4")
    with pytest.raises(KeyError, match="no node named"):
        split_at(inst.graph_module, ["not_a_node"])
    with pytest.raises(fxcam.FxcamError, match="not tapped"):
        inst.split_for("layer3")
