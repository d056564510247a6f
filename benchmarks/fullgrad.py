"""FullGrad on resnet50, batch 8, 224x224: fxcam vs pytorch-grad-cam vs a plain no-grad forward.

The three are run interleaved (one of each per round, in one process) so that machine load
affects them alike; the table reports medians and ratios to the forward, and the largest
absolute difference between the fxcam and pytorch-grad-cam maps (both in [0, 1]).

    python benchmarks/fullgrad.py                     # CPU, 3 rounds
    python benchmarks/fullgrad.py --device cuda --rounds 10
    python benchmarks/fullgrad.py --pgc-rounds 1      # pytorch-grad-cam is slow: time it fewer times

Random weights (weights=None, seed 0) with randomized BatchNorm statistics, so every bias term
is non-zero, as in a trained network; the timings do not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import fxcam


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of fxcam and the forward")
    parser.add_argument(
        "--pgc-rounds", type=int, default=None, help="timed rounds of pytorch-grad-cam (default: --rounds)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pgc_rounds = args.rounds if args.pgc_rounds is None else args.pgc_rounds

    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = args.device
    model = _model(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()

    explainer = fxcam.Explainer(model, "layer4", "fullgrad")

    def forward():
        with torch.no_grad():
            return model(x)

    def ours():
        return explainer(x, classes)

    def theirs():
        # Built and released inside the timed run, as a user calls it: pytorch-grad-cam's
        # FullGrad hooks every bias layer of the model, and hooks left in place would also
        # run (and cost time) in the forward and fxcam cases.
        reference = FullGrad(model, [])  # pytorch-grad-cam ignores target layers for FullGrad
        try:
            return reference(x, [ClassifierOutputTarget(c) for c in classes])
        finally:
            reference.activations_and_grads.release()

    # warm-up (also builds fxcam's compiled graphs, which are cached on the explainer)
    forward()
    ours()
    times: dict[str, list[float]] = {"forward (no_grad)": [], "fxcam fullgrad": [], "pytorch-grad-cam FullGrad": []}
    diff = None
    for r in range(max(args.rounds, pgc_rounds)):
        if r < args.rounds:
            times["forward (no_grad)"].append(_time(forward, device)[0])
            t, cam_ours = _time(ours, device)
            times["fxcam fullgrad"].append(t)
        if r < pgc_rounds:
            t, cam_theirs = _time(theirs, device)
            times["pytorch-grad-cam FullGrad"].append(t)
            diff = float((cam_ours.cpu() - torch.from_numpy(cam_theirs)).abs().max())
    base = statistics.median(times["forward (no_grad)"])
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"FullGrad, resnet50, batch {args.batch}, {args.size}x{args.size}, {dev}, torch {torch.__version__}")
    print()
    print("| run | median s | rounds | x forward |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {len(ts)} | {med / base:.2f} |")
    ratio = statistics.median(times["pytorch-grad-cam FullGrad"]) / statistics.median(times["fxcam fullgrad"])
    print()
    print(f"fxcam is {ratio:.1f}x faster than pytorch-grad-cam; max |fxcam - pytorch-grad-cam| = {diff:.2e}")


if __name__ == "__main__":
    main()
