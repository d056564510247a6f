"""``fxcam explain``: overlays, maps (.npy) and manifest.json for image files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import Explainer, progress, viz
from ..errors import FxcamError, closest
from .args import debug_options, device_options, model_options, overlay_options, overwrite_options, progress_options
from .common import PROG, CLIError, check_alpha, get_method, parse_size, say, table, versions, warn
from .images import cam_to_image, check_image, display_image, find_images, read_image, unique_stems
from .models import SPEC_FORMS, LoadedModel, load_model, resolve_device
from .output import atomic_dir, check_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        parents=[
            debug_options(),
            model_options("model input size: H W, or N for N x N (default: the model's own)", positional=False),
            device_options(),
            overlay_options("overlay opacity of the heat map, 0..1 (default 0.5)"),
            progress_options(),
            overwrite_options("replace an existing --out (only once the new result is complete)"),
        ],
        help="explain images: overlays, maps (.npy) and manifest.json",
        description="Explain images with a CAM method. Writes <stem>_overlay.png, <stem>_cam.npy per image and "
        "manifest.json into --out, atomically (nothing is left behind if the run fails).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of images (not recursive)")
    # --model after the images, as usage errors list missing arguments in declaration order
    p.add_argument("--model", required=True, metavar="SPEC", help=SPEC_FORMS)
    p.add_argument("--method", default="gradcam", metavar="M", help="a CAM method (see 'fxcam methods'); default gradcam")
    p.add_argument(
        "--layer", action="append", metavar="L",
        help="layer to explain, repeatable (maps of several are averaged; see 'fxcam layers MODEL'); default: the model's default",
    )
    p.add_argument(
        "--target", action="append", metavar="CLASS",
        help="class index or name to explain: once for all images, or once per image (default: each image's top-1)",
    )
    p.add_argument("--out", default="fxcam-out", metavar="DIR", help="output folder (default fxcam-out); must not exist")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per batch (default 8)")
    p.add_argument("--aug-smooth", action="store_true", help="average maps over flips and brightness changes")
    p.add_argument("--eigen-smooth", action="store_true", help="first principal component instead of the channel sum")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


@dataclass
class _Job:
    """What every batch of one run shares."""

    args: argparse.Namespace
    loaded: LoadedModel
    explainer: Explainer
    device: torch.device
    tmp: Path  # the output folder while it is written


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    images = find_images(args.inputs)
    for path in images:  # unreadable files fail before any work
        check_image(path)
    out = Path(args.out)
    check_out(out, args.overwrite)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1; got {args.batch_size}.")
    check_alpha(args.alpha)
    size = parse_size(args.size)
    device = resolve_device(args.device)
    method = get_method(args.method)
    loaded = load_model(args.model, args.weights, size=size, num_classes=args.num_classes, device=device, warn=warn)
    layers = args.layer or [loaded.default_layer()]
    explainer = Explainer(loaded.model, layers, method.name, aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
    targets = _targets(args.target, loaded.categories, len(images))
    with atomic_dir(out, args.overwrite) as tmp:
        job = _Job(args, loaded, explainer, device, tmp)
        records = _explain_images(job, images, targets)
        (tmp / "manifest.json").write_text(json.dumps(_manifest(job, records), indent=2) + "\n")
    if not args.quiet:
        _report(records, explainer, out, started)
    return 0


def _targets(values: Sequence[str] | None, categories: Sequence[str] | None, n_images: int) -> list[int] | int | None:
    """``--target`` values (indices or class names) -> None, one int for all, or one per image."""
    if not values:
        return None
    indices = [_target_index(v, categories) for v in values]
    if categories:
        bad = [i for i in indices if not -len(categories) <= i < len(categories)]
        if bad:
            raise CLIError(
                f"--target {bad[0]} is out of range: this model has {len(categories)} classes; "
                f"pass an index in [0, {len(categories) - 1}] or a class name (e.g. {categories[0]!r})."
            )
    if len(indices) == 1:
        return indices[0]
    if len(indices) != n_images:
        raise CLIError(
            f"Got {len(indices)} --target values for {n_images} images; pass one (for all images) or one per image."
        )
    return indices


def _target_index(value: str, categories: Sequence[str] | None) -> int:
    """One ``--target``: an integer, or a class name (any case)."""
    try:
        return int(value)
    except ValueError:
        pass
    lowered = {c.lower(): i for i, c in enumerate(categories or [])}
    if value.lower() in lowered:
        return lowered[value.lower()]
    if not categories:
        raise CLIError(f"--target {value!r}: this model has no class names; pass a class index (an integer).")
    raise CLIError(
        f"--target {value!r} is not a class of this model. Closest: {closest(value, categories)}; "
        f"or pass a class index in [0, {len(categories) - 1}]."
    )


def _explain_images(job: _Job, images: list[Path], targets: list[int] | int | None) -> list[dict[str, Any]]:
    """Explain ``images`` batch by batch, writing their maps and overlays; their manifest records."""
    stems = unique_stems(images)
    batch_size = job.args.batch_size
    records: list[dict[str, Any]] = []
    bar = progress.bar(len(images), "explain", enabled=not job.args.no_progress, warn=False, tty_only=True)
    try:
        for start in range(0, len(images), batch_size):
            batch = slice(start, min(start + batch_size, len(images)))
            batch_targets = targets[batch] if isinstance(targets, list) else targets
            records += _explain_files(job, images[batch], stems[batch], batch_targets)
            bar.update(len(images[batch]))
    finally:
        bar.close()
    return records


def _explain_files(job: _Job, paths: list[Path], stems: list[str], targets: list[int] | int | None) -> list[dict]:
    """One batch: read, preprocess, explain; each image's map (.npy) and overlay (.png), and its record."""
    pils = [read_image(p) for p in paths]
    prepared = [job.loaded.preprocess(im) for im in pils]
    x = torch.stack([t for t, _ in prepared]).to(job.device)
    exp = _explain_batch(job.explainer, x, targets, job.args.model)
    probs = torch.softmax(exp.output.float(), dim=1).cpu()
    names = job.loaded.categories or []
    records = []
    for j, (path, pil, stem) in enumerate(zip(paths, pils, stems)):
        cam = cam_to_image(exp.cams[j], pil.size, prepared[j][1])
        files = {"overlay": f"{stem}_overlay.png", "cam": f"{stem}_cam.npy"}
        np.save(job.tmp / files["cam"], cam.astype(np.float32))
        overlay = viz.overlay(display_image(pil), cam, colormap=job.args.colormap, alpha=job.args.alpha)
        overlay.save(job.tmp / files["overlay"])
        explained = int(exp.class_idx[j]) if exp.class_idx is not None else None
        records.append(
            {
                "input": str(path),
                "image_size": list(pil.size),
                **files,
                "predicted": _class(names, int(probs[j].argmax()), probs[j]),
                "explained": _class(names, explained, probs[j], score=round(float(exp.scores[j]), 6)),
            }
        )
    return records


def _explain_batch(explainer, x: torch.Tensor, targets: Any, spec: str):
    try:
        exp = explainer.explain(x, targets)
    except FxcamError:
        raise
    except RuntimeError as exc:
        raise CLIError(
            f"{spec} failed on a batch of shape {tuple(x.shape)}: {' '.join(str(exc).split())[:300]}. "
            f"Check --size (the model may need a fixed input size) and --layer."
        ) from exc
    _classifier_output(exp.output, spec)
    return exp


def _classifier_output(output: Any, spec: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CLIError(
            f"{spec} returns {shape}, not classifier logits (N, classes); the CLI explains classifiers. "
            f"For other outputs use the Python API with a target callable (fxcam.targets)."
        )
    return output


def _class(names: Sequence[str], index: int | None, probs_row: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "name": names[index] if index is not None and 0 <= index < len(names) else None,
        "probability": round(float(probs_row[index]), 6) if index is not None else None,
        **extra,
    }


def _manifest(job: _Job, records: list[dict[str, Any]]) -> dict[str, Any]:
    args, loaded, explainer = job.args, job.loaded, job.explainer
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [PROG, *(sys.argv[1:] if args.argv is None else args.argv)],
        "versions": versions(),
        "model": args.model,
        "weights": loaded.weights,
        "method": explainer.method.name,
        "layers": list(explainer.layers),
        "target": args.target,
        "device": str(job.device),
        "preprocess": loaded.preprocess.describe(),
        "options": {"aug_smooth": args.aug_smooth, "eigen_smooth": args.eigen_smooth},
        "cam": "float32 (H, W) in [0, 1] at each image's size; 0 outside the region the model saw (center crop)",
        "images": records,
    }


def _report(records: list[dict[str, Any]], explainer: Explainer, out: Path, started: float) -> None:
    rows = [
        (
            Path(r["input"]).name,
            f"{r['predicted']['name'] or r['predicted']['index']} ({r['predicted']['probability']:.2f})",
            r["explained"]["name"] or r["explained"]["index"],
        )
        for r in records
    ]
    say(table(rows, ("image", "predicted (p)", "explained")))
    say(
        f"\n{explainer.method.name} at {', '.join(explainer.layers)}: {len(records)} "
        f"image{'s' if len(records) != 1 else ''} explained; overlays, maps (.npy) and manifest.json in {out}/ "
        f"({time.perf_counter() - started:.1f} s)"
    )
