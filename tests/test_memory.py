"""Memory per Explainer construction: building explainers over and over must not grow the process.

The reliability target is 1,000 constructions in under 10 MB of resident memory (10 KB each);
this fast version builds 300 explainers of a tiny 8-unit conv net (about 15 ms each) after 50
warm-up constructions and allows 3 MB. Every construction traces and compiles GraphModules,
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
MAX_GROWTH = 3 * 2**20


def rss() -> int:
    """The process's resident set size in bytes (``VmRSS`` in ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def tiny_net() -> nn.Module:
    def unit(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    torch.manual_seed(0)
    units = [unit(3 if i == 0 else 4, 4) for i in range(8)]
    return nn.Sequential(*units, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_explainer_construction_does_not_leak():
    model = tiny_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = fxcam.Explainer(model, "5", "gradcam")(x, 1)
    for _ in range(WARMUP):
        fxcam.Explainer(model, "5", "gradcam")
    gc.collect()
    before, cache_before = rss(), len(linecache.cache)
    for _ in range(CONSTRUCTIONS):
        fxcam.Explainer(model, "5", "gradcam")
    gc.collect()
    growth, cache_growth = rss() - before, len(linecache.cache) - cache_before
    assert growth < MAX_GROWTH, (
        f"{CONSTRUCTIONS} Explainer constructions grew the process by {growth / 2**20:.1f} MB "
        f"({growth / CONSTRUCTIONS / 1024:.1f} KB each; limit {MAX_GROWTH / 2**20:.0f} MB); "
        f"linecache gained {cache_growth} entries"
    )
    # and the explainers still work
    torch.testing.assert_close(fxcam.Explainer(model, "5", "gradcam")(x, 1), expected, rtol=0, atol=0)
