"""Exceptions raised by fxcam. Every message says what was seen, what is valid, and what to do."""

from __future__ import annotations

import difflib


class FxcamError(ValueError):
    """Base class for fxcam's user-facing errors (a ``ValueError``, so generic handlers still work)."""


class FxcamTypeError(FxcamError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class LayerNotFoundError(FxcamError, KeyError):
    """A requested layer is not a node or module of the traced model."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class TraceError(FxcamError):
    """torch.fx could not trace the model."""


class ReshapeError(FxcamError):
    """An activation's layout could not be turned into (N, C, H, W)."""


def closest(name: str, choices, n: int = 5) -> list[str]:
    """The ``n`` entries of ``choices`` closest to ``name`` (difflib ratio, then shared prefix)."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if len(found) < n:
        prefix = [c for c in choices if c.startswith(name) or name.startswith(c)]
        found += [c for c in prefix if c not in found][: n - len(found)]
    return found
