"""Batching under a memory budget: how many rows of a batched graph run fit in memory, and the chunks.

Perturbation methods (AblationCAM, the Score-CAM family) and metrics run many perturbed copies
of a batch through a compiled graph. They run them in chunks of ``batch_size`` rows, or, when
``batch_size`` is None, of as many rows as fit in ``max_memory`` bytes: the peak memory of one
row is measured once by running the graph on one row and adding up the tensors alive at each
node (:class:`PeakMemory`). The default budget is 1 GiB on an accelerator and 64 MiB on CPU,
where batches past a few dozen images only spill the caches (resnet18 at 112x112: about 40
rows per chunk on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from .errors import FxcamError

MAX_MEMORY = {"cpu": 64 << 20}  # default bytes per batched graph run, by device type
MAX_MEMORY_DEFAULT = 1 << 30  # accelerators


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class PeakMemory(fx.Interpreter):
    """Runs a graph and records the bytes each node returns (``run_node``, the documented hook)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.sizes: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.sizes[n] = nbytes(out)
        return out

    def peak(self) -> int:
        """Largest sum of live values, a value living from its node to its last user."""
        nodes = list(self.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        freed_at: dict[int, list[fx.Node]] = {}
        for n in nodes:
            last = max((order[u] for u in n.users), default=order[n])
            freed_at.setdefault(last, []).append(n)
        live = best = 0
        for i, n in enumerate(nodes):
            live += self.sizes.get(n, 0)
            best = max(best, live)
            live -= sum(self.sizes.get(m, 0) for m in freed_at.get(i, ()))
        return best


def rows_per_chunk(gm: fx.GraphModule, one_row: tuple, batch_size: int | None, max_memory: int | None) -> int:
    """``batch_size``, or how many rows of ``gm`` fit in ``max_memory`` bytes (at least 1)."""
    if batch_size is not None:
        if batch_size < 1:
            raise FxcamError(f"batch_size must be a positive int or None (sized to max_memory); got {batch_size}.")
        return int(batch_size)
    if max_memory is None:
        device = next((t.device for t in one_row if isinstance(t, Tensor)), torch.device("cpu"))
        max_memory = MAX_MEMORY.get(device.type, MAX_MEMORY_DEFAULT)
    if max_memory <= 0:
        raise FxcamError(f"max_memory must be a positive number of bytes; got {max_memory}.")
    interp = PeakMemory(gm)
    with torch.inference_mode():
        interp.run(*one_row)
    return max(1, int(max_memory // max(interp.peak(), 1)))


def chunks(total: int, size: int) -> Iterator[slice]:
    """``slice``s of at most ``size`` rows covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def layout(t: Tensor, channels_last: bool | None) -> Tensor:
    """``t`` channels-last when asked (None: on CPU), for 4-D and 5-D batches; else unchanged.

    oneDNN convolves channels-last inputs on CPU without reordering activations (about 1.15x
    on resnet18 for Score-CAM's masked inputs); the model's weights are not touched."""
    if channels_last is None:
        channels_last = t.device.type == "cpu"
    if not channels_last or t.ndim not in (4, 5):
        return t
    return t.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)


__all__ = ["MAX_MEMORY", "MAX_MEMORY_DEFAULT", "PeakMemory", "rows_per_chunk", "chunks", "layout", "nbytes"]
