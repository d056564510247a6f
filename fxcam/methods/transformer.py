"""Transformer-specific methods (attention maps taken from the traced graph)."""

from __future__ import annotations

from . import register  # noqa: F401
