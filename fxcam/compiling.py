"""One lock for every compile, and no source cache left behind by dead graphs.

torch.fx tracing patches global state: while a tracer runs, ``nn.Module.__call__`` and
``__getattr__`` are replaced for every module in the process. Two threads tracing at once
corrupt each other and can leave the process unable to trace at all, and a module *called* by
another thread during a trace goes through the tracer's wrapper. So fxcam's graph work takes
turns through one readers-writer lock:

- every build (tracing, passes, splits, lazy driver graphs, ``make_fx``, ``torch.export``)
  runs inside :func:`compiling`: exclusive, re-entrant;
- every explainer call runs inside :func:`running`: shared, so calls run in parallel, and a
  build waits until the calls in flight are done (new calls wait for a waiting build, so builds
  are not starved). A call that needs a build (a driver method's graph, compiled on first use)
  steps out of its shared hold for the build and back in after it.

Modules you call yourself, outside fxcam, while another thread builds an explainer are not
covered: that is torch.fx's global patching, and only a caller can avoid it.

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
from collections.abc import Callable, Iterator
from typing import Any

import torch.fx as fx

_ours: set[str] = set()  # source-cache keys added by fxcam's builds


class _BuildLock:
    """Exclusive builds, shared runs; both re-entrant per thread, writers preferred."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._waiting_writers = 0
        self._local = threading.local()  # .reads, .writes: this thread's holds

    def _mine(self) -> tuple[int, int]:
        return getattr(self._local, "reads", 0), getattr(self._local, "writes", 0)

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        reads, writes = self._mine()
        if writes:  # re-entrant
            self._local.writes = writes + 1
            try:
                yield
            finally:
                self._local.writes = writes
            return
        with self._cond:  # step out of this thread's shared holds, then wait for the others
            self._readers -= reads
            self._local.reads = 0
            self._cond.notify_all()
            self._waiting_writers += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = threading.get_ident()
        self._local.writes = 1
        try:
            yield
        finally:
            self._local.writes = 0
            with self._cond:
                self._writer = None
                self._cond.notify_all()
                if reads:  # resume this thread's shared holds, after any build that is waiting
                    while self._writer is not None or self._waiting_writers:
                        self._cond.wait()
                    self._readers += reads
            self._local.reads = reads

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        reads, writes = self._mine()
        if reads or writes:  # nested in this thread's own hold: never wait on ourselves
            self._local.reads = reads + 1
            with self._cond:
                self._readers += 1
            try:
                yield
            finally:
                with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()
                self._local.reads = reads
            return
        with self._cond:
            while self._writer is not None or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        self._local.reads = 1
        try:
            yield
        finally:
            self._local.reads = 0
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()


_LOCK = _BuildLock()
_state = threading.local()


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
def running() -> Iterator[None]:
    """Hold the lock shared while running compiled graphs (explainer calls): no build runs meanwhile."""
    with _LOCK.read():
        yield


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Hold the lock exclusively while building graphs (re-entrant); account for the source they cache."""
    with _LOCK.write():
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


def built_once(cache: dict[Any, Any], key: Any, build: Callable[[], Any]) -> Any:
    """``cache[key]``, built by ``build()`` under :func:`compiling` the first time only.

    The lookup of a value already built takes no lock: explainer calls (the hot path) read
    their lazily built graphs (splits, driver graphs) without stepping out of their shared hold."""
    if key in cache:
        return cache[key]
    with compiling():
        if key not in cache:  # another thread may have built it while this one waited
            cache[key] = build()
        return cache[key]


__all__ = ["compiling", "running", "built_once"]
