"""GradCAM cost vs a plain forward: fxcam, pytorch-grad-cam, torchcam (resnet50, batch 8, 224x224).

    python benchmarks/gradcam.py [--rounds 7] [--batch 8] [--device cpu] [--threads N]

Prints a markdown table: median time over interleaved rounds and peak memory (fresh
subprocess per case, see _harness.py), each as a ratio to a ``torch.no_grad()`` forward.
All GradCAM cases explain layer4 for each image's top-1 class.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from _harness import median, peak_memory_here, peak_memory_subprocess, table, time_cases  # noqa: E402

import fxcam  # noqa: E402

CASES = ("forward (no_grad)", "fxcam GradCAM", "pytorch-grad-cam GradCAM", "torchcam GradCAM")


def build(case: str, batch: int, device: str):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if case == "forward (no_grad)":

        def run():
            with torch.no_grad():
                return model(x)

    elif case == "fxcam GradCAM":
        explainer = fxcam.Explainer(model, "layer4", "gradcam")

        def run():
            return explainer(x)

    elif case == "pytorch-grad-cam GradCAM":
        from pytorch_grad_cam import GradCAM

        cam = GradCAM(model=model, target_layers=[model.layer4])

        def run():
            return cam(x, None)

    elif case == "torchcam GradCAM":
        from torchcam.methods import GradCAM as TCGradCAM

        extractor = TCGradCAM(model, target_layer="layer4")

        def run():
            scores = model(x)
            cams = extractor(class_idx=scores.argmax(1).tolist(), scores=scores)
            return torch.nn.functional.interpolate(cams[0][:, None], size=(224, 224), mode="bilinear")

    else:
        raise ValueError(case)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_case:
        run = build(args.memory_case, args.batch, args.device)
        print(json.dumps({"peak": peak_memory_here(run, args.device)}))
        return

    runs = {case: build(case, args.batch, args.device) for case in CASES}
    times = time_cases(runs, args.rounds, args.device)
    extra = ["--batch", str(args.batch), "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    mems = {case: peak_memory_subprocess(__file__, case, extra) for case in CASES}
    rows = [(case, median(times[case]), mems[case]) for case in CASES]
    print(f"resnet50, batch {args.batch}, 224x224, {args.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.rounds} rounds, {platform.processor() or platform.machine()}")
    print(table(rows, "forward (no_grad)"))
    print(f"\ncommand: python benchmarks/gradcam.py --rounds {args.rounds} --batch {args.batch} --device {args.device}")


if __name__ == "__main__":
    main()
