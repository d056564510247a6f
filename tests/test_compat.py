"""fxcam.compat: pytorch-grad-cam's interface, same maps, one import line changed."""

import numpy as np
import pytest

import fxcam.compat as compat

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as PgcTarget  # noqa: E402


@pytest.mark.parametrize("cls", ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "GradCAMElementWise"])
def test_same_interface_same_maps(resnet18, images, cls, pgc_cams):
    targets = [PgcTarget(3), PgcTarget(7)]
    ref = pgc_cams(resnet18, cls, [resnet18.layer3, resnet18.layer4], images, targets).numpy()
    with getattr(compat, cls)(model=resnet18, target_layers=[resnet18.layer3, resnet18.layer4]) as cam:
        ours = cam(input_tensor=images, targets=[compat.ClassifierOutputTarget(3), compat.ClassifierOutputTarget(7)])
        ours_eigen = cam(input_tensor=images, targets=targets, eigen_smooth=True)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    assert ours_eigen.shape == ref.shape


def test_exceptions_are_not_swallowed(resnet18, images):
    # pytorch-grad-cam's __exit__ prints and swallows IndexError; fxcam lets every error through
    with pytest.raises(Exception):
        with compat.GradCAM(model=resnet18, target_layers=[resnet18.layer4]) as cam:
            cam(input_tensor=images, targets=[PgcTarget(3)] * 5)
    with pytest.raises(IndexError):
        with compat.GradCAM(model=resnet18, target_layers=[resnet18.layer4]):
            raise IndexError("must propagate")
