"""Perturbation methods (AblationCAM, the ScoreCAM family) run on the compiled graph."""

from __future__ import annotations

from . import register  # noqa: F401
