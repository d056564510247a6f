"""Memory per Explainer construction: building explainers over and over must not grow the process.

The reliability target is 1,000 constructions in under 10 MB of resident memory (10 KB each);
this fast version builds 300 explainers of a tiny 12-unit conv net (about 20 ms each) after 50
warm-up constructions and allows 3 MB (``gc.collect()`` every 10 constructions and before each
reading, so only memory that stays reachable counts). Every construction traces and compiles GraphModules,
and torch.fx registers each generated ``forward``'s source in :mod:`linecache`; entries that
are never removed leak tens of KB per construction (more for larger models). The long version
(10,000 calls, 1,000 constructions, RSS sampled over time) is ``tests/test_soak.py``.
"""

from __future__ import annotations

import gc
import linecache

import torch
from torch import nn

import fxcam

WARMUP = 50
CONSTRUCTIONS = 300
COLLECT_EVERY = 10  # gc.collect() this often, so uncollected cyclic garbage does not raise the high-water mark
MAX_GROWTH = 3 * 2**20
UNITS = 12


def rss() -> int:
    """The process's resident set size in bytes (``VmRSS`` in ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def tiny_net(units: int = UNITS) -> nn.Module:
    """``units`` x (conv 3x3 - BatchNorm - ReLU(inplace=True)), 4 channels, global average pool, Linear(4, 3)."""

    def unit(cin, cout):
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    torch.manual_seed(0)
    units = [unit(3 if i == 0 else 4, 4) for i in range(units)]
    return nn.Sequential(*units, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_explainer_construction_does_not_leak():
    model = tiny_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = fxcam.Explainer(model, "5", "gradcam")(x, 1)
    for i in range(1, WARMUP + 1):
        fxcam.Explainer(model, "5", "gradcam")
        if i % COLLECT_EVERY == 0:
            gc.collect()
    gc.collect()
    before, cache_before = rss(), len(linecache.cache)
    for i in range(1, CONSTRUCTIONS + 1):
        fxcam.Explainer(model, "5", "gradcam")
        if i % COLLECT_EVERY == 0:
            gc.collect()
    gc.collect()
    growth, cache_growth = rss() - before, len(linecache.cache) - cache_before
    assert growth < MAX_GROWTH, (
        f"{CONSTRUCTIONS} Explainer constructions grew the process by {growth / 2**20:.1f} MB "
        f"({growth / CONSTRUCTIONS / 1024:.1f} KB each; limit {MAX_GROWTH / 2**20:.0f} MB); "
        f"linecache gained {cache_growth} entries"
    )
    # and the explainers still work
    torch.testing.assert_close(fxcam.Explainer(model, "5", "gradcam")(x, 1), expected, rtol=0, atol=0)
