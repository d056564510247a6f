"""Perturbation methods: fxcam vs pytorch-grad-cam 1.5.7 vs torchcam 0.5.0, in one process.

    python benchmarks/perturbation.py                      # both cases, 3 timed runs each
    python benchmarks/perturbation.py --only scorecam --repeats 5 --threads 2

Cases (random weights, fixed seed; one image; the explained class is the top-1 class):

- AblationCAM, torchvision resnet50, ``layer4``, 224x224: fxcam vs pytorch-grad-cam.
  fxcam re-runs only the graph after ``layer4`` (avgpool + fc) for the 2048 ablations;
  pytorch-grad-cam re-runs the whole network up to ``layer4`` for each of them.
- ScoreCAM, torchvision resnet18, ``layer4``, 112x112: fxcam vs pytorch-grad-cam vs torchcam
  (512 masked inputs through the whole network). fxcam is timed with its default masks
  (torchcam's) and with ``masks="pytorch-grad-cam"``.

Every run is end to end, as a user calls it: build the explainer / CAM object, explain, release
its hooks. Runs are interleaved (run r of every implementation before run r + 1 of any, the
order rotating) and the median is reported, with the ratio to fxcam and the largest absolute
difference between maps on [0, 1] (each reference against fxcam with that reference's
definition; the fxcam rows against the reference whose definition they use). An untimed
warm-up run of every implementation that takes less than a minute comes first; the slow
reference's first timed run gives its map.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision

import fxcam


@dataclass
class Impl:
    name: str
    run: Callable[[], np.ndarray]  # the map, (H, W) in [0, 1]
    warmup: bool = True
    times: list[float] = field(default_factory=list)
    cam: np.ndarray | None = None


def _quiet():
    """pytorch-grad-cam's loops print tqdm bars on stderr."""
    return contextlib.redirect_stderr(io.StringIO())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def _image(size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def ablation_case(device: torch.device) -> tuple[str, list[Impl], dict]:
    from pytorch_grad_cam import AblationCAM

    model, x = _model("resnet50", device), _image(224, device)

    def ours() -> np.ndarray:
        return fxcam.Explainer(model, "layer4", "ablationcam")(x)[0].cpu().numpy()

    def pgc() -> np.ndarray:
        cam = AblationCAM(model, [model.layer4])
        try:
            with _quiet():
                return cam(x, None)[0]
        finally:
            cam.activations_and_grads.release()

    impls = [Impl("fxcam", ours), Impl("pytorch-grad-cam", pgc, warmup=False)]
    return "AblationCAM, resnet50 layer4, 1x3x224x224 (2048 ablations)", impls, {}


def scorecam_case(device: torch.device) -> tuple[str, list[Impl], dict]:
    from pytorch_grad_cam import ScoreCAM
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    model, x = _model("resnet18", device), _image(112, device)
    with torch.inference_mode():
        cls = int(model(x).argmax())

    def ours(masks: str = "torchcam", size=None) -> np.ndarray:
        return fxcam.Explainer(model, "layer4", "scorecam", masks=masks)(x, cls, size=size)[0].cpu().numpy()

    def pgc() -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = ScoreCAM(model, [model.layer4])
        try:
            with _quiet():
                return cam(x, [ClassifierOutputTarget(cls)])[0]
        finally:
            cam.activations_and_grads.release()

    def torchcam() -> np.ndarray:
        with TorchcamScoreCAM(model, "layer4", input_shape=(3, 112, 112)) as extractor:
            with torch.no_grad():
                model(x)
            return extractor(class_idx=cls)[0][0].cpu().numpy()  # (4, 4): the layer's resolution

    impls = [
        Impl("fxcam", ours),
        Impl("fxcam (masks=pytorch-grad-cam)", lambda: ours("pytorch-grad-cam")),
        Impl("pytorch-grad-cam", pgc),
        Impl("torchcam", torchcam),
    ]
    # torchcam's map is at the layer's resolution: compare it with fxcam's map at that size
    compare = {
        "fxcam (masks=pytorch-grad-cam)": "pytorch-grad-cam",
        "pytorch-grad-cam": "fxcam (masks=pytorch-grad-cam)",
        "torchcam": lambda: ours(size=(4, 4)),
    }
    return "ScoreCAM, resnet18 layer4, 1x3x112x112 (512 masked inputs)", impls, compare


def measure(impls: list[Impl], repeats: int, device: torch.device) -> None:
    for impl in impls:
        if impl.warmup:
            impl.cam = impl.run()
    for r in range(repeats):
        for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
            _sync(device)
            start = time.perf_counter()
            cam = impl.run()
            _sync(device)
            impl.times.append(time.perf_counter() - start)
            if impl.cam is None:
                impl.cam = cam


def table(title: str, impls: list[Impl], compare: dict) -> list[str]:
    ours = statistics.median(impls[0].times)
    by_name = {i.name: i for i in impls}
    rows = []
    for impl in impls:
        med = statistics.median(impl.times)
        if impl is impls[0]:
            diff = "-"
        else:
            against = compare.get(impl.name, "fxcam")
            ref = against() if callable(against) else by_name[against].cam
            diff = f"{np.abs(np.asarray(ref, dtype=np.float32) - impl.cam).max():.1e}"
        runs = ", ".join(f"{t:.2f}" for t in impl.times)
        rows.append(f"| {title} | {impl.name} | {med:.2f} | {med / ours:.1f}x | {diff} | {runs} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["ablation", "scorecam"], default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = {"ablation": ablation_case, "scorecam": scorecam_case}
    if args.only:
        cases = {args.only: cases[args.only]}

    lines = [
        "| case | implementation | median s | time / fxcam | max abs diff of the map | runs (s) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for build in cases.values():
        title, impls, compare = build(device)
        measure(impls, args.repeats, device)
        lines += table(title, impls, compare)
        print(f"done: {title}", file=sys.stderr, flush=True)

    command = "python benchmarks/perturbation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command.strip()}`\n")
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
