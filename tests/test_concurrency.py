"""Explainers built and called from several threads at once give the single-threaded maps.

Known bug this guards: torch.fx tracing patches process-wide state (``torch.nn.Module.__call__``
and ``__getattr__``, torch.fx's ``CURRENT_PATCHER``). When 4 threads build
``Explainer(model, "layer4", "gradcam")`` at the same moment, some raise
``LayerNotFoundError ... Closest valid names: []``, ``KeyError``, ``TraceError ... AssertionError:
CURRENT_PATCHER is None`` or ``NameError: module is not installed as a submodule``, and the
patched ``nn.Module.__call__`` can stay installed: afterwards every ``Explainer`` *and every
plain forward of any model* in that process fails.

Because a failure can poison the whole interpreter, each scenario runs in a fresh Python
process (the same interpreter and the same fxcam checkout as the test run); the test asserts
that the child succeeded and shows its report. A child can also be run by hand::

    PYTHONPATH=.:tests python -c "import sys, test_concurrency as t; sys.exit(t.child(sys.argv[1:]))" construct 5

Default suite (about 10 s each, interpreter start included):

- ``test_concurrent_construction``: 5 rounds of 4 threads released together by a
  ``threading.Barrier``, each building ``Explainer(resnet18, "layer4", "gradcam")`` and
  explaining a batch; then ``nn.Module.__call__`` must be torch's own, and one more explainer
  built and run in the main thread must give the same maps.
- ``test_concurrent_first_call_of_a_lazy_method``: a shared FullGrad explainer (its bias graph
  is compiled on the first call) first called by 4 threads at once, 5 rounds.

Soak (``@pytest.mark.soak``, not in the default run; ``python -m pytest -m soak
tests/test_concurrency.py``): ``test_concurrency_soak``: 8 threads for 60 s
(``FXCAM_SOAK_SECONDS``), each iteration building a fresh explainer of gradcam, fullgrad or
scorecam on a tiny model and calling it; every result must equal the single-threaded one
(within 1e-6).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, OrderedDict

import pytest
import torch
from torch import nn

import fxcam

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = pathlib.Path(fxcam.__file__).resolve().parents[1]  # the checkout whose fxcam this run imports
ATOL = 1e-6


# =============================================================================================
# running a scenario in a fresh interpreter


def run_child(*args: str, timeout: float) -> None:
    """Run ``child(args)`` in a fresh interpreter; fail with its report unless it exits 0."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    env.setdefault("OMP_NUM_THREADS", "2")
    code = "import sys, test_concurrency as t; sys.exit(t.child(sys.argv[1:]))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"scenario {args} did not finish in {timeout} s (deadlock?); its output:\n{out[-4000:]}")
    if proc.returncode != 0:
        report = proc.stdout[:6000] + ("\n[stderr]\n" + proc.stderr[-3000:] if proc.stderr.strip() else "")
        pytest.fail(f"scenario {args} failed (exit {proc.returncode}):\n{report}", pytrace=False)


# =============================================================================================
# the scenarios (run in the child)


class Failures:
    """Thread-safe record of what went wrong: the first messages in full, all counted by kind."""

    def __init__(self, keep: int = 12) -> None:
        self.lock = threading.Lock()
        self.first: list[str] = []
        self.kinds: Counter = Counter()
        self.keep = keep

    def add(self, where: str, e: BaseException) -> None:
        line = f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        with self.lock:
            self.kinds[type(e).__name__] += 1
            if len(self.first) < self.keep:
                self.first.append(line[:400])
                if not isinstance(e, AssertionError):
                    tb = "".join(traceback.format_exception(e)).splitlines()[-8:]
                    self.first.append("    " + "\n    ".join(tb))

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def report(self) -> str:
        kinds = ", ".join(f"{k} x{n}" for k, n in self.kinds.most_common())
        return f"{sum(self.kinds.values())} failure(s): {kinds}\n" + "\n".join(self.first)


def in_threads(n: int, work, failures: Failures, where: str, timeout: float = 120.0) -> None:
    """Run ``work(i)`` in ``n`` threads released together by a barrier; record what raises."""
    barrier = threading.Barrier(n, timeout=timeout)

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            failures.add(f"{where} thread {i}", e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        if t.is_alive():
            failures.add(f"{where} thread {t.name}", TimeoutError(f"still running after {timeout} s"))


def check_same(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got - expected).abs().max().item()
    assert err <= ATOL, f"{what}: differs from the single-threaded maps by {err:.3g}"


def resnet18() -> nn.Module:
    import torchvision  # noqa: PLC0415

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def tiny_net() -> nn.Module:
    """conv-bn-relu x3 (biased convs, for FullGrad), global average pool, Linear(8, 5)."""

    def unit(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    torch.manual_seed(0)
    parts = OrderedDict(
        [
            ("u1", unit(3, 8)),
            ("u2", unit(8, 8)),
            ("u3", unit(8, 8)),
            ("gap", nn.AdaptiveAvgPool2d(1)),
            ("flat", nn.Flatten()),
            ("fc", nn.Linear(8, 5)),
        ]
    )
    return nn.Sequential(parts).eval()


def after_threads(model: nn.Module, layer: str, method: str, x, targets, expected, failures: Failures) -> None:
    """The process is still sound: torch's own ``Module.__call__``, and a new explainer in the main thread works."""
    if nn.Module.__call__ is not ORIGINAL_CALL:
        message = "nn.Module.__call__ is not torch's own function: a tracer's wrapper was left installed"
        failures.add("after the threads", AssertionError(message))
    try:
        check_same(fxcam.Explainer(model, layer, method)(x, targets), expected, "main thread afterwards")
    except BaseException as e:  # noqa: BLE001
        failures.add("after the threads, main thread", e)


ORIGINAL_CALL = nn.Module.__call__


def scenario_construct(rounds: int, threads: int = 4) -> Failures:
    model, failures = resnet18(), Failures()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [3, 7]
    expected = fxcam.Explainer(model, "layer4", "gradcam")(x, targets)
    for r in range(rounds):

        def work(i: int) -> None:
            explainer = fxcam.Explainer(model, "layer4", "gradcam")
            check_same(explainer(x, targets), expected, f"round {r} thread {i}")

        in_threads(threads, work, failures, f"round {r}")
        if failures:
            break
    after_threads(model, "layer4", "gradcam", x, targets, expected, failures)
    return failures


def scenario_lazy(rounds: int, threads: int = 4) -> Failures:
    model, failures = resnet18(), Failures()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [1, 4]
    expected = fxcam.Explainer(model, "layer4", "fullgrad")(x, targets)
    for r in range(rounds):
        shared = fxcam.Explainer(model, "layer4", "fullgrad")  # its bias graph compiles on the first call

        def work(i: int) -> None:
            check_same(shared(x, targets), expected, f"round {r} thread {i}")

        in_threads(threads, work, failures, f"round {r}")
        if failures:
            break
    after_threads(model, "layer4", "fullgrad", x, targets, expected, failures)
    return failures


SOAK_METHODS = ("gradcam", "fullgrad", "scorecam")


def scenario_soak(seconds: float, threads: int = 8) -> Failures:
    model, failures = tiny_net(), Failures()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = [0, 4]
    expected = {m: fxcam.Explainer(model, "u3", m)(x, targets) for m in SOAK_METHODS}
    counts: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(i: int) -> None:
        k = i
        while time.monotonic() < deadline:
            method = SOAK_METHODS[k % len(SOAK_METHODS)]
            k += 1
            try:
                check_same(fxcam.Explainer(model, "u3", method)(x, targets), expected[method], f"{method}")
            except BaseException as e:  # noqa: BLE001 - keep going: count every failure
                failures.add(f"thread {i} iteration {k} {method}", e)
            with lock:
                counts[method] += 1

    in_threads(threads, work, failures, "soak", timeout=seconds + 300)
    print(f"iterations: {dict(counts)}")
    for method in SOAK_METHODS:
        after_threads(model, "u3", method, x, targets, expected[method], failures)
    return failures


def child(argv: list[str]) -> int:
    """Entry point of the child process: ``construct ROUNDS``, ``lazy ROUNDS`` or ``soak SECONDS``."""
    name, n = argv[0], float(argv[1])
    sys.setswitchinterval(1e-4)  # switch threads 50x more often than the default 5 ms: races show up sooner
    failures = {"construct": scenario_construct, "lazy": scenario_lazy, "soak": scenario_soak}[name](
        int(n) if name != "soak" else n
    )
    if failures:
        print(failures.report())
        return 1
    print("ok")
    return 0


# =============================================================================================
# the tests


def test_concurrent_construction():
    run_child("construct", "5", timeout=300)


def test_concurrent_first_call_of_a_lazy_method():
    run_child("lazy", "5", timeout=300)


@pytest.mark.soak
def test_concurrency_soak():
    seconds = float(os.environ.get("FXCAM_SOAK_SECONDS", "60"))
    run_child("soak", str(seconds), timeout=seconds + 600)
