"""ViT-B/16 GradCAM cost vs a plain forward: fxcam vs pytorch-grad-cam (torchvision vit_b_16, batch 8, 224x224).

    python benchmarks/vit.py [--rounds 5] [--batch 8] [--device cpu] [--threads N]

Both explainers use the usual ViT layer, the last encoder block's first LayerNorm
(``encoder.layers[-1].ln_1``, fxcam's default for this model), explain each image's top-1
class and fold the 196 patch tokens into 14x14 (fxcam: ``reshape="auto"``;
pytorch-grad-cam: a ``reshape_transform`` dropping the class token). Timing is interleaved
in one process (every round runs each case once, in turn), the first round is a warm-up,
and the table reports the median over the remaining rounds and its ratio to a
``torch.no_grad()`` forward. The maps of the two explainers are compared once (max abs diff).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from _harness import median, time_cases  # noqa: E402

import fxcam  # noqa: E402

CASES = ("forward (no_grad)", "fxcam GradCAM", "pytorch-grad-cam GradCAM")


def drop_class_token(t: torch.Tensor) -> torch.Tensor:
    return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval().to(args.device)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)

    explainer = fxcam.Explainer(model)  # default layer: encoder.layers[-1].ln_1, reshape="auto"

    def pgc():
        # Built and released inside each run: its hook on ln_1 would otherwise also run in the
        # forward and fxcam cases (the model is shared).
        cam = GradCAM(model=model, target_layers=[model.encoder.layers[-1].ln_1], reshape_transform=drop_class_token)
        try:
            return cam(x, None)
        finally:
            cam.activations_and_grads.release()

    def forward():
        with torch.no_grad():
            return model(x)

    cases = {CASES[0]: forward, CASES[1]: lambda: explainer(x), CASES[2]: pgc}
    diff = (explainer(x).cpu() - torch.from_numpy(pgc())).abs().max().item()
    times = time_cases(cases, args.rounds, args.device)
    base = median(times[CASES[0]])

    cmd = "python benchmarks/vit.py " + " ".join(sys.argv[1:])
    print(f"`{cmd.strip()}`  ")
    print(
        f"torchvision vit_b_16, batch {args.batch}, 224x224, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"median of {args.rounds} interleaved rounds after 1 warm-up; fxcam vs pytorch-grad-cam max |diff| {diff:.1e}\n"
    )
    print("| case | median time (ms) | time vs forward | min / max (ms) |")
    print("|---|---:|---:|---:|")
    for name in CASES:
        t = times[name]
        print(f"| {name} | {median(t) * 1e3:.0f} | {median(t) / base:.2f}x | {min(t) * 1e3:.0f} / {max(t) * 1e3:.0f} |")


if __name__ == "__main__":
    main()
