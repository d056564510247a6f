"""Grad-CAM as one graph: eager Explainer vs torch.compile'd explainer graph vs onnxruntime (resnet50, CPU).

    python benchmarks/export.py [--rounds 7] [--batch 8] [--size 224] [--threads N] [--out README.md]

All cases explain layer4 of a seeded random-weight resnet50 for each image's top-1 class on the
same batch and return ``(N, 224, 224)`` maps; the script first checks that every case's maps
equal the eager explainer's (max abs difference, printed). Cases, timed interleaved in one
process (every round runs each case once; medians after a warm-up round, see _harness.py):

- ``eager Explainer``: ``fxcam.Explainer(model, "layer4", "gradcam")(x)``;
- ``explainer graph (fx, uncompiled)``: ``explainer.to_graph(x)(x)``, the same ATen ops run one by one;
- ``torch.compile(explainer graph)``: that graph compiled with inductor, ``fullgraph=True``;
- ``onnxruntime explainer graph``: the graph exported with ``fxcam.export`` to ONNX, run by
  onnxruntime's CPU provider with as many intra-op threads as torch uses.

Prints a markdown table (median ms, ratio to the eager explainer) and the command; with
``--out`` it also replaces the table between the ``<!-- benchmark -->`` markers in that file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from _harness import median, time_cases  # noqa: E402

import fxcam  # noqa: E402

BASELINE = "eager Explainer"
MARK_BEGIN, MARK_END = "<!-- benchmark -->", "<!-- /benchmark -->"


def build(batch: int, size: int, threads: int, tmp: Path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    explainer = fxcam.Explainer(model, "layer4", "gradcam")
    graph = explainer.to_graph(x[:1])

    t0 = time.perf_counter()
    compiled = torch.compile(graph, fullgraph=True)
    with torch.no_grad():
        compiled(x)
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    path = fxcam.export(graph, x[:1], tmp / "resnet50_gradcam.onnx")
    export_s = time.perf_counter() - t0
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}

    def run_compiled():
        with torch.no_grad():
            return compiled(x)[1]

    def run_graph():
        with torch.no_grad():
            return graph(x)[1]

    cases = {
        BASELINE: lambda: explainer(x),
        "explainer graph (fx, uncompiled)": run_graph,
        "torch.compile(explainer graph)": run_compiled,
        "onnxruntime explainer graph": lambda: torch.from_numpy(session.run(["cam"], feed)[0]),
    }
    return cases, {"compile_s": compile_s, "export_s": export_s}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def markdown(times: dict[str, list[float]], setup: dict[str, float], args, command: str) -> str:
    base = median(times[BASELINE])
    lines = [
        f"resnet50 (random weights), Grad-CAM at layer4, batch {args.batch}, {args.size}x{args.size}, CPU, "
        f"{args.threads} thread(s); median of {args.rounds} interleaved rounds.",
        "",
        "| case | median time (ms) | vs eager Explainer |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        t = median(ts)
        lines.append(f"| {name} | {t * 1e3:.0f} | {t / base:.2f}x |")
    lines += [
        "",
        f"One-time costs: torch.compile (inductor) first call {setup['compile_s']:.0f} s; ONNX export "
        f"{setup['export_s']:.0f} s. Machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"onnxruntime {_ort_version()}.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="markdown file whose benchmark section to replace")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/export.py " + " ".join(sys.argv[1:])

    with tempfile.TemporaryDirectory() as tmp:
        cases, setup = build(args.batch, args.size, args.threads, Path(tmp))
        reference = cases[BASELINE]()
        for name, fn in cases.items():
            diff = float((fn() - reference).abs().max())
            print(f"{name}: max |maps - eager| = {diff:.1e}", file=sys.stderr)
            if diff > 1e-4:
                raise SystemExit(f"{name} does not reproduce the eager maps")
        times = time_cases(cases, args.rounds)
    table = markdown(times, setup, args, command.strip())
    print(table)
    if args.out is not None:
        text = args.out.read_text()
        start, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
        args.out.write_text(text[:start] + "\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
