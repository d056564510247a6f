"""One lock for every compile, and no source cache left behind by dead graphs.

torch.fx tracing patches global state (``torch.fx._symbolic_trace``'s patcher, the tracer's
module-call wrapping), so two threads tracing at once corrupt each other and can leave the
process unable to trace at all. Every fxcam function that builds a graph (tracing, passes,
splits, ``make_fx``) runs inside :func:`compiling`, which holds one re-entrant lock: many
threads may build and call explainers at once; builds take turns.

Each ``GraphModule.recompile`` stores its generated source in torch.fx's ``linecache`` loader
(``torch.fx.graph_module._loader``), keyed by the code's file name, and never removes it: about
50-125 KB per explainer that outlive the explainer. :func:`compiling` records the keys its
builds add and, at the next build, drops those whose graph class is gone (no live
``GraphModule`` class's ``forward`` comes from that source), so memory is bounded by the
graphs alive.
"""

from __future__ import annotations

import contextlib
import linecache
import threading
from collections.abc import Iterator

import torch.fx as fx

_LOCK = threading.RLock()
_state = threading.local()
_ours: set[str] = set()  # source-cache keys added by fxcam's builds


def _loader():
    """torch.fx's private source cache (``_EvalCacheLoader``), or None if this torch has none."""
    from torch.fx import graph_module  # noqa: PLC0415

    loader = getattr(graph_module, "_loader", None)
    return loader if isinstance(getattr(loader, "eval_cache", None), dict) else None


def _live_keys() -> set[str]:
    """Source keys of every live GraphModule class (each instance has its own class)."""
    keys, stack = set(), [fx.GraphModule]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        code = getattr(cls.__dict__.get("forward"), "__code__", None)
        if code is not None:
            keys.add(code.co_filename)
    return keys


def _forget_dead() -> None:
    loader = _loader()
    if loader is None or not _ours:
        return
    live = _live_keys()
    for key in [k for k in _ours if k not in live]:
        loader.eval_cache.pop(key, None)
        linecache.cache.pop(key, None)
        _ours.discard(key)


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Hold the compile lock while building graphs (re-entrant); account for the source they cache."""
    with _LOCK:
        depth = getattr(_state, "depth", 0)
        loader = _loader()
        before = set(loader.eval_cache) if loader is not None and depth == 0 else None
        if depth == 0:
            _forget_dead()
        _state.depth = depth + 1
        try:
            yield
        finally:
            _state.depth = depth
            if before is not None:
                _ours.update(set(loader.eval_cache) - before)


__all__ = ["compiling"]
