"""``fxcam demo``: the demo models on generated scenes; grids, overlays and the pointing game. Offline."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from .. import Explainer, progress
from ..metrics import pointing_game
from ..viz import grid, overlay, to_pil
from .args import debug_options, device_options, overlay_options, overwrite_options, progress_options
from .common import CLIError, check_alpha, get_method, say, table, versions
from .models import resolve_device
from .output import atomic_dir, check_out

DEMO_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam")
DEMO_SEED = 2024  # the training script uses other seeds: these scenes are held out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        parents=[
            debug_options(),
            device_options(),
            overlay_options("overlay opacity (default 0.5)"),
            progress_options(),
            overwrite_options(),
        ],
        help="offline demo: demo models on generated scenes, grids and pointing-game table",
        description="Explain generated scenes (fxcam.demo) with the shipped demo CNN and ViT and several methods: "
        "writes a grid PNG per model (rows: scenes, columns: methods) and overlays, and prints the pointing game "
        "(share of maps whose maximum lies on the object) per method and model. No downloads.",
    )
    p.add_argument("--out", default="fxcam-out-demo", metavar="DIR", help="output folder (default fxcam-out-demo)")
    p.add_argument(
        "--methods", nargs="+", default=list(DEMO_METHODS), metavar="M",
        help=f"methods to compare (default: {' '.join(DEMO_METHODS)})",
    )
    p.add_argument("--models", nargs="+", default=["cnn", "vit"], metavar="NAME", help="demo models (default: cnn vit)")
    p.add_argument("--n", type=int, default=120, help="scenes scored in the pointing game (default 120)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"scene seed (default {DEMO_SEED}, held out from training)")
    p.add_argument("--rows", type=int, default=6, help="scenes shown in each grid, one per class (default 6)")
    p.add_argument("--batch-size", type=int, default=60, metavar="N", help="scenes per batch (default 60)")
    p.set_defaults(func=run)


@dataclass
class _Job:
    """What every model and method of one demo run shares: options, scenes, output folder, progress bar."""

    args: argparse.Namespace
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    shown: list[int]  # the scenes the grids show
    classes: Sequence[str]
    tmp: Path
    bar: Any


def run(args: argparse.Namespace) -> int:
    try:
        from ..demo import CLASSES, DEFAULT_LAYERS, load_demo_model, make_scenes
    except ImportError as exc:
        raise CLIError(f"The demo is not available in this installation ({exc}).") from None
    started = time.perf_counter()
    out = Path(args.out)
    check_out(out, args.overwrite)
    _check_numbers(args)
    device = resolve_device(args.device)
    methods = list(dict.fromkeys(get_method(m).name for m in args.methods))
    layers = _layers(args.models, DEFAULT_LAYERS)
    models = list(layers)
    images, labels, masks = make_scenes(args.n, seed=args.seed)
    # the grid shows the first scene of each class (up to --rows of them)
    shown = [int((labels == k).nonzero()[0]) for k in range(len(CLASSES)) if (labels == k).any()][: args.rows]

    pointing: dict[str, dict[str, float]] = {}
    accuracy: dict[str, float] = {}
    with atomic_dir(out, args.overwrite) as tmp:
        total = len(models) * len(methods) * args.n
        bar = progress.bar(total, "demo", enabled=not args.no_progress, warn=False, tty_only=True)
        job = _Job(args, device, images, labels, masks, shown, CLASSES, tmp, bar)
        try:
            for model_name in models:
                try:
                    model = load_demo_model(model_name, device=device)
                except FileNotFoundError as exc:
                    raise CLIError(str(exc)) from None
                pointing[model_name], accuracy[model_name] = _run_model(job, model, model_name, layers, methods)
        finally:
            bar.close()
        elapsed = time.perf_counter() - started
        results = {
            "versions": versions(),
            "scenes": {"n": args.n, "seed": args.seed, "shown": shown},
            "layers": layers,
            "pointing_game": pointing,
            "accuracy": accuracy,
            "seconds": round(elapsed, 2),
        }
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _report(args, out, layers, methods, pointing, accuracy, elapsed)
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    for option in ("n", "rows", "batch_size"):
        if getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be at least 1; got {getattr(args, option)}.")
    check_alpha(args.alpha)


def _layers(models: list[str], known: dict[str, str]) -> dict[str, str]:
    """``--models`` (repeats dropped) -> each one's layer."""
    models = list(dict.fromkeys(models))
    for m in models:
        if m not in known:
            raise CLIError(f"--models {m!r}: the demo models are {sorted(known)}.")
    return {m: known[m] for m in models}


def _run_model(
    job: _Job, model: torch.nn.Module, model_name: str, layers: dict[str, str], methods: list[str]
) -> tuple[dict[str, float], float]:
    """Each method's pointing game (share of hits) and the model's accuracy; writes the overlays and the grid."""
    pointing: dict[str, float] = {}
    accuracy = None
    tiles: dict[str, list] = {}
    for method in methods:
        cams, preds = _explain_scenes(Explainer(model, layers[model_name], method), job)
        hit = pointing_game(cams, job.masks)
        pointing[method] = hit.float().mean().item()
        if accuracy is None:
            accuracy = (preds == job.labels).float().mean().item()
        tiles[method] = [_demo_tile(job.images[i], cams[i], bool(hit[i]), job.args) for i in job.shown]
        folder = job.tmp / model_name / method
        folder.mkdir(parents=True)
        for i, tile in zip(job.shown, tiles[method]):
            tile.save(folder / f"scene{i:03d}_{job.classes[int(job.labels[i])]}.png")
    _demo_grid(model_name, job, methods, tiles).save(job.tmp / f"{model_name}_grid.png")
    return pointing, accuracy


def _explain_scenes(explainer: Explainer, job: _Job) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(N, H, W)`` of each scene's true class, and the predicted classes ``(N,)``, on the CPU."""
    cams, preds = [], []
    batch_size = job.args.batch_size
    for s in range(0, len(job.images), batch_size):
        x = job.images[s : s + batch_size].to(job.device)
        exp = explainer.explain(x, job.labels[s : s + batch_size].to(job.device))
        cams.append(exp.cams.float().cpu())
        preds.append(exp.output.argmax(1).cpu())
        job.bar.update(x.shape[0])
    return torch.cat(cams), torch.cat(preds)


def _demo_tile(image: torch.Tensor, cam: torch.Tensor, hit: bool, args: argparse.Namespace) -> Image.Image:
    """The overlay of one scene at 2x, with a ring at the map's maximum (white: on the object, magenta: off)."""
    scale = 2
    big = to_pil(image).resize((image.shape[-1] * scale, image.shape[-2] * scale), Image.NEAREST)
    tile = overlay(big, cam, colormap=args.colormap, alpha=args.alpha)
    y, x = divmod(int(cam.flatten().argmax()), cam.shape[-1])
    cx, cy, r = (x + 0.5) * scale, (y + 0.5) * scale, 6
    draw = ImageDraw.Draw(tile)
    draw.ellipse((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1), outline=(0, 0, 0), width=1)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255) if hit else (255, 0, 255), width=2)
    return tile


def _demo_grid(model_name: str, job: _Job, methods: list[str], tiles: dict[str, list]) -> Image.Image:
    """Rows: the shown scenes; columns: the scene itself, then each method's tile."""
    scale = 2
    images = job.images
    cells = []
    for row, i in enumerate(job.shown):
        cells.append(to_pil(images[i]).resize((images.shape[-1] * scale, images.shape[-2] * scale), Image.NEAREST))
        cells.extend(tiles[m][row] for m in methods)
    return grid(
        cells,
        nrow=len(methods) + 1,
        pad=4,
        row_labels=[job.classes[int(job.labels[i])] for i in job.shown],
        col_labels=[f"demo:{model_name}", *methods],
    )


def _report(
    args: argparse.Namespace,
    out: Path,
    layers: dict[str, str],
    methods: list[str],
    pointing: dict[str, dict[str, float]],
    accuracy: dict[str, float],
    elapsed: float,
) -> None:
    models = list(layers)
    rows = [(meth, *(f"{100 * pointing[m][meth]:.1f}%" for m in models)) for meth in methods]
    rows.append(("(model accuracy)", *(f"{100 * accuracy[m]:.1f}%" for m in models)))
    header = ("method", *(f"demo:{m} ({layers[m]})" for m in models))
    say(f"Pointing game on {args.n} generated scenes (seed {args.seed}): share of maps whose maximum is on the object.")
    say(table(rows, header, "<" + ">" * len(models)))
    grids = ", ".join(str(out / f"{m}_grid.png") for m in models)
    say(f"\nGrids (rows: scenes, columns: methods): {grids}; overlays in {out}/<model>/<method>/ ({elapsed:.1f} s)")
