"""Regression tests for the reliability issue: each failed on the code before its fix.

Thread safety, memory per construction and the property-based tests live in their own files
(``test_concurrency.py``, ``test_properties.py``); the train-mode test is in ``test_core.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxcam
from fxcam import FxcamError
from fxcam.compat import ClassifierOutputTarget, GradCAM


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_nan_or_inf_input_is_refused_naming_the_images(net, x):
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(FxcamError, match=r"NaN or Inf values in image\(s\) \[1\] .*nan_to_num"):
        fxcam.Explainer(net, "3")(bad)
    bad[1], bad[0, 1, 0, 0] = x[1], float("inf")
    with pytest.raises(FxcamError, match=r"image\(s\) \[0\]"):
        fxcam.Explainer(net, "3", "scorecam")(bad)


def test_a_1x1_layer_warns_naming_it(net, x):
    with pytest.warns(UserWarning, match=r"Layer '5' gives a 1x1 map .*fxcam.layer_shapes"):
        cams = fxcam.Explainer(net, "5")(x)
    assert float(cams.abs().max()) == 0  # what the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a spatial layer does not warn
        fxcam.Explainer(net, "3")(x)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["gradcam", "fullgrad", "scorecam", "shapleycam"])
def test_explainers_work_inside_no_grad_and_inference_mode(net, x, mode, method):
    expected = fxcam.Explainer(net, "3", method)(x, [1, 4])
    with mode():
        inner_x = x.clone()  # an inference tensor under inference_mode
        cams = fxcam.Explainer(net, "3", method)(inner_x, [1, 4])
    assert torch.allclose(cams, expected, atol=1e-6)
    assert float(cams.amax()) > 0


def test_to_graph_says_which_input_size_it_was_built_for(net, x):
    explainer = fxcam.Explainer(net, "3")
    graph = explainer.to_graph()  # no example input: traced for (1, 3, 224, 224)
    with pytest.raises(FxcamError, match=r"traced for inputs \(N, 3, 224, 224\); got \(2, 3, 16, 16\).*to_graph"):
        graph(x)
    graph = explainer.to_graph(x[:1])
    torch.testing.assert_close(graph(x)[1], explainer(x), rtol=0, atol=1e-4)
    ops = [n for n in graph.graph.nodes if n.op == "call_function"]
    assert ops[0].target is fxcam.graph.check_input_size


def test_layers_of_the_wrong_type_get_a_clear_error(net):
    for bad in (4, 2.5, None, {"a": 1}):
        with pytest.raises(fxcam.FxcamTypeError, match="is not a layer.*list_layers"):
            fxcam.instrument(net, bad)
    with pytest.raises(TypeError):  # FxcamTypeError is a TypeError too
        fxcam.Explainer(net, [3])


def test_string_targets_get_a_clear_error(net, x):
    with pytest.raises(FxcamError, match=r"targets='cat' is not a class index.*list of ints"):
        fxcam.Explainer(net, "3")(x, "cat")


def test_numpy_integer_targets_are_accepted(net, x):
    expected = fxcam.Explainer(net, "3")(x, [3, 1])
    for targets in ([np.int64(3), np.int32(1)], np.array([3, 1]), torch.tensor([3, 1])):
        assert torch.equal(fxcam.Explainer(net, "3")(x, targets), expected)
    one = fxcam.Explainer(net, "3")(x, np.int64(2))
    assert torch.equal(one, fxcam.Explainer(net, "3")(x, 2))
    aug = fxcam.Explainer(net, "3", aug_smooth=True)
    assert torch.equal(aug(x, np.array([3, 1])), aug(x, [3, 1]))


def test_compat_out_of_range_class_is_a_clear_error(net, x):
    with GradCAM(model=net, target_layers=[net[3]]) as cam:
        with pytest.raises(FxcamError, match=r"Target class 5000 is out of range for a model with 5 outputs"):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(5000), ClassifierOutputTarget(1)])


def test_float64_input_is_cast_to_the_model_dtype(net, x):
    cams = fxcam.Explainer(net, "3")(x.double(), [1, 2])
    assert cams.dtype == torch.float64
    assert torch.allclose(cams.float(), fxcam.Explainer(net, "3")(x, [1, 2]), atol=1e-6)
