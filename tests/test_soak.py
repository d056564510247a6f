"""Soak tests: resident memory must not grow over many explainer calls and constructions.

Not in the default run (``@pytest.mark.soak``, excluded by ``addopts`` in ``pyproject.toml``).
Run them with::

    OMP_NUM_THREADS=2 python -m pytest -q -p no:cacheprovider -m soak tests/test_soak.py

(``-m soak tests/`` also runs the 8-thread soak of ``tests/test_concurrency.py``; its length
is ``FXCAM_SOAK_SECONDS``, 60 by default.)

- ``test_constructions_do_not_grow_memory``: 1,000 ``Explainer`` constructions of a tiny
  12-unit conv net (20-40 s on two cores). It runs first: freed memory left by other tests
  would absorb part of a leak.
- ``test_calls_do_not_grow_memory``: one explainer of a 3-unit version of that net called
  10,000 times (1-3 minutes on two shared cores).

The resident set size (``VmRSS``) is sampled after ``gc.collect()`` every N iterations after a
warm-up. Both require no growth trend: the median of the last quarter of the samples minus the
median of the first quarter below 10 MB; the constructions also require the whole run to grow
the process by less than 10 MB (the reliability target: 1,000 constructions < 10 MB).
"""

from __future__ import annotations

import gc
import statistics

import pytest
import torch
from test_memory import rss, tiny_net

import fxcam

pytestmark = pytest.mark.soak

MB = 2**20
MAX_TREND = 10 * MB
MAX_CONSTRUCTION_GROWTH = 10 * MB


def sample(step, iterations: int, every: int, warmup: int) -> list[int]:
    """Run ``step(i)`` ``warmup + iterations`` times; RSS after ``gc.collect()`` every ``every`` iterations
    after the warm-up (the first sample right after it)."""
    for i in range(warmup):
        step(i)
    gc.collect()
    samples = [rss()]
    for i in range(1, iterations + 1):
        step(i)
        if i % every == 0:
            gc.collect()
            samples.append(rss())
    return samples


def trend(samples: list[int]) -> int:
    q = max(1, len(samples) // 4)
    return int(statistics.median(samples[-q:]) - statistics.median(samples[:q]))


def series(samples: list[int]) -> str:
    return " ".join(f"{s / MB:.1f}" for s in samples)


def test_constructions_do_not_grow_memory():
    model = tiny_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = fxcam.Explainer(model, "5", "gradcam")(x, 1)

    def step(i: int) -> None:
        fxcam.Explainer(model, "5", "gradcam")

    samples = sample(step, iterations=1_000, every=25, warmup=50)
    growth, total = trend(samples), samples[-1] - samples[0]
    detail = f"RSS (MB) every 25 constructions: {series(samples)}"
    assert growth < MAX_TREND, (
        f"1,000 Explainer constructions: RSS trend {growth / MB:.1f} MB (last-quarter median - first-quarter "
        f"median; limit {MAX_TREND / MB:.0f} MB). {detail}"
    )
    assert total < MAX_CONSTRUCTION_GROWTH, (
        f"1,000 Explainer constructions grew RSS by {total / MB:.1f} MB ({total / 1000 / 1024:.1f} KB each; "
        f"limit {MAX_CONSTRUCTION_GROWTH / MB:.0f} MB). {detail}"
    )
    torch.testing.assert_close(fxcam.Explainer(model, "5", "gradcam")(x, 1), expected, rtol=0, atol=0)


def test_calls_do_not_grow_memory():
    model = tiny_net(units=3)  # calls cost per layer; the leak under test is per call
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    explainer = fxcam.Explainer(model, "1", "gradcam")
    expected = explainer(x, [0, 2])

    def step(i: int) -> None:
        explainer(x, [0, 2])

    samples = sample(step, iterations=10_000, every=250, warmup=500)
    growth = trend(samples)
    assert growth < MAX_TREND, (
        f"10,000 explainer calls: RSS trend {growth / MB:.1f} MB (last-quarter median - first-quarter median; "
        f"limit {MAX_TREND / MB:.0f} MB). RSS (MB) every 250 calls: {series(samples)}"
    )
    torch.testing.assert_close(explainer(x, [0, 2]), expected, rtol=0, atol=0)
