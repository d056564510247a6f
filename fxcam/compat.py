"""Drop-in classes with pytorch-grad-cam's interface: a one-line migration.

Replace ``from pytorch_grad_cam import GradCAM`` with ``from fxcam.compat import GradCAM``;
the rest of the code stays as it is::

    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # numpy (N, H, W)

Differences, all deliberate: the model is not hooked and not switched to ``eval()`` (the maps
are the eval-mode maps all the same, as pytorch-grad-cam's: fxcam compiles an eval-mode copy
of the model, so a model in training mode is explained as in eval mode and left as it is);
``target_layers`` may also be names; the maps are computed
on the model's device and converted to numpy at the very end, as pytorch-grad-cam returns;
EigenCAM's component sign is fixed (see :func:`fxcam.ops.first_principal_component`);
exceptions are never swallowed.
"""

from __future__ import annotations

from typing import Any

from . import methods as _methods
from .api import Explainer
from .targets import ClassifierOutput as ClassifierOutputTarget
from .targets import SemanticSegmentation as SemanticSegmentationTarget
from .targets import SoftmaxOutput as ClassifierOutputSoftmaxTarget

#: pytorch-grad-cam class name -> fxcam method name
NAMES = {
    "GradCAM": "gradcam",
    "HiResCAM": "hirescam",
    "GradCAMElementWise": "gradcam_elementwise",
    "GradCAMPlusPlus": "gradcampp",
    "XGradCAM": "xgradcam",
    "LayerCAM": "layercam",
    "EigenCAM": "eigencam",
    "EigenGradCAM": "eigengradcam",
    "AblationCAM": "ablationcam",
    "ScoreCAM": "scorecam",
    "FullGrad": "fullgrad",
    "KPCA_CAM": "kpcacam",
    "FEM": "fem",
    "ShapleyCAM": "shapleycam",
    "FinerCAM": "finercam",
    "RandomCAM": "randomcam",
}


class _CompatCAM:
    method = "gradcam"

    def __init__(self, model, target_layers, reshape_transform=None, **method_options: Any) -> None:
        self.model = model
        self.target_layers = target_layers
        self._explainers: dict[tuple[bool, bool], Explainer] = {}
        self._kw = dict(reshape="auto" if reshape_transform is None else reshape_transform, **method_options)

    def _explainer(self, aug_smooth: bool, eigen_smooth: bool) -> Explainer:
        key = (aug_smooth, eigen_smooth)
        if key not in self._explainers:
            self._explainers[key] = Explainer(
                self.model, list(self.target_layers), self.method, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                **self._kw,
            )
        return self._explainers[key]

    def __call__(self, input_tensor, targets=None, aug_smooth: bool = False, eigen_smooth: bool = False):
        cams = self._explainer(aug_smooth, eigen_smooth)(input_tensor, targets)
        return cams.float().cpu().numpy()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False  # never swallow an exception


def _make(cls_name: str, method: str) -> type:
    return type(cls_name, (_CompatCAM,), {"method": method, "__doc__": f"pytorch-grad-cam's {cls_name} on fxcam ('{method}')."})


__all__ = ["ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "SemanticSegmentationTarget"]
for _cls, _method in NAMES.items():
    if _method in _methods.available():
        globals()[_cls] = _make(_cls, _method)
        __all__.append(_cls)
