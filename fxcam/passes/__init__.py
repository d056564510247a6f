"""Pure ``GraphModule -> GraphModule`` rewrites. None of them touches the traced model."""

from .deinplace import deinplace
from .split import Split, split_at
from .taps import insert_taps

__all__ = ["deinplace", "insert_taps", "split_at", "Split"]
