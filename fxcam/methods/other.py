"""Other methods (CAM, FullGrad, KPCA-CAM, FEM, ShapleyCAM, FinerCAM, RefineCAM, SESS, RandomCAM)."""

from __future__ import annotations

from . import register  # noqa: F401
