"""Export resnet18's Grad-CAM explainer to ONNX, then run it with onnxruntime alone (no torch).

    python examples/onnx_explainer.py [--out resnet18_gradcam.onnx] [--batch 4]

1. With torch: a seeded random-weight resnet18 (no download), ``Explainer(model, "layer4", "gradcam")``,
   its graph ``x -> (logits, cam)`` written by ``fxcam.export`` (forward, the backward of the
   layers after layer4, the weighting, upsampling and normalization: one ONNX graph).
2. Without torch: a fresh Python process runs :func:`explain_onnx`, which imports only numpy
   and onnxruntime, and checks that ``torch`` was never imported.
3. The maps it returns are compared with the eager explainer's.

Needs ``pip install fxcam[onnx]``. Nothing at the top of this file imports torch, so the
inference process stays torch-free; torch is imported inside :func:`export_explainer`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def explain_onnx(path: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, K), cams (N, H, W) in [0, 1])`` for float32 ``images (N, 3, H, W)``: onnxruntime only."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits, cams = session.run(["logits", "cam"], {"input": images.astype(np.float32)})
    return logits, cams


def export_explainer(out: Path) -> None:
    """Step 1 (torch): write resnet18's Grad-CAM explainer graph to ``out``."""
    import torch
    import torchvision

    import fxcam

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    explainer = fxcam.Explainer(model, "layer4", "gradcam")
    fxcam.export(explainer.to_graph(torch.zeros(1, 3, 224, 224)), torch.zeros(1, 3, 224, 224), out)


def eager_maps(images: np.ndarray) -> np.ndarray:
    """Step 3 (torch): the eager explainer's maps for the same images, for comparison."""
    import torch
    import torchvision

    import fxcam

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return fxcam.Explainer(model, "layer4", "gradcam")(torch.from_numpy(images)).numpy()


def _infer_main(path: str, images_file: str, result_file: str) -> None:
    """Entry point of the torch-free process: run the file, save the outputs, prove torch stayed out."""
    logits, cams = explain_onnx(path, np.load(images_file))
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    if loaded:
        raise SystemExit(f"torch was imported during ONNX inference: {loaded[:5]}")
    np.savez(result_file, logits=logits, cams=cams)
    print(f"[onnxruntime process] ran {Path(path).name}; torch in sys.modules: no")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="ONNX file to write (default: a temporary file)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--infer", nargs=3, metavar=("MODEL", "IMAGES", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.infer:
        _infer_main(*args.infer)
        return

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "resnet18_gradcam.onnx"
        export_explainer(out)
        print(f"exported resnet18 Grad-CAM explainer -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")

        images = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
        np.save(Path(tmp) / "images.npy", images)
        result = Path(tmp) / "result.npz"
        cmd = [sys.executable, __file__, "--infer", str(out), str(Path(tmp) / "images.npy"), str(result)]
        subprocess.run(cmd, check=True)
        got = np.load(result)

        expected = eager_maps(images)
        diff = float(np.abs(got["cams"] - expected).max())
        print(f"cams {got['cams'].shape}, top-1 classes {got['logits'].argmax(1).tolist()}")
        print(f"max |onnxruntime - eager fxcam| = {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("onnxruntime maps differ from the eager explainer's")


if __name__ == "__main__":
    main()
