"""The ``fxcam`` command: explain images, list layers and methods, run the offline demo, export.

    fxcam demo                                    # offline: demo models on generated scenes
    fxcam explain cat.jpg --model torchvision:resnet50 --weights DEFAULT --method gradcam
    fxcam layers torchvision:resnet50             # names --layer accepts, with output shapes
    fxcam methods                                 # names --method accepts
    fxcam export torchvision:resnet18 --layer layer4 --method gradcam --out r18.onnx

Every bad input ends with one line on stderr (``fxcam: error: ...``) and exit status 1
(2 for malformed arguments), and leaves no output behind: results are written to a hidden
folder beside ``--out`` and renamed into place when complete. ``--debug`` (or
``FXCAM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .cli_support import (
    CLIError,
    atomic_dir,
    cam_to_image,
    check_image,
    check_out,
    check_out_file,
    find_images,
    load_model,
    read_image,
    resolve_device,
    table,
    unique_stems,
)
from .errors import FxcamError
from .metrics import pointing_game
from .progress import bar as progress_bar

PROG = "fxcam"
DEMO_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam")
DEMO_SEED = 2024  # the training script uses other seeds: these scenes are held out
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")


# --------------------------------------------------------------------------- output helpers
def _err(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _say(message: str = "") -> None:
    print(message, file=sys.stdout)


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "fxcam": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _size(values: Sequence[int] | None, option: str = "--size") -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise CLIError(f"{option} takes one or two positive integers (N or H W); got {' '.join(map(str, values))}.")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _method(name: str):
    from . import methods

    return methods.get(name)  # FxcamError with close matches for unknown names


# --------------------------------------------------------------------------- explain
def _targets(values: Sequence[str] | None, categories: Sequence[str] | None, n_images: int) -> list[int] | int | None:
    """``--target`` values (indices or class names) -> None, one int for all, or one per image."""
    if not values:
        return None
    lowered = {c.lower(): i for i, c in enumerate(categories or [])}
    indices = []
    for v in values:
        try:
            indices.append(int(v))
            continue
        except ValueError:
            pass
        if v.lower() in lowered:
            indices.append(lowered[v.lower()])
            continue
        from .errors import closest

        if not categories:
            raise CLIError(f"--target {v!r}: this model has no class names; pass a class index (an integer).")
        raise CLIError(
            f"--target {v!r} is not a class of this model. Closest: {closest(v, categories)}; "
            f"or pass a class index in [0, {len(categories) - 1}]."
        )
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


def _alpha(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise CLIError(f"--alpha {value} is outside [0, 1]; 0 shows the image only, 1 the heat map only.")
    return value


def _classifier_output(output: Any, spec: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CLIError(
            f"{spec} returns {shape}, not classifier logits (N, classes); the CLI explains classifiers. "
            f"For other outputs use the Python API with a target callable (fxcam.targets)."
        )
    return output


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


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from . import Explainer
    from .viz import overlay

    started = time.perf_counter()
    images = find_images(args.inputs)
    for path in images:  # unreadable files fail before any work
        check_image(path)
    out = Path(args.out)
    check_out(out, args.overwrite)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1; got {args.batch_size}.")
    _alpha(args.alpha)
    size = _size(args.size)
    device = resolve_device(args.device)
    method = _method(args.method)
    loaded = load_model(args.model, args.weights, size=size, num_classes=args.num_classes, device=device, warn=_warn)
    layers = args.layer or [loaded.default_layer()]
    explainer = Explainer(loaded.model, layers, method.name, aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
    targets = _targets(args.target, loaded.categories, len(images))
    stems = unique_stems(images)
    names = loaded.categories or []

    def cls(index: int | None, probs_row: torch.Tensor, **extra: Any) -> dict[str, Any]:
        return {
            "index": index,
            "name": names[index] if index is not None and 0 <= index < len(names) else None,
            "probability": round(float(probs_row[index]), 6) if index is not None else None,
            **extra,
        }

    records: list[dict[str, Any]] = []
    with atomic_dir(out, args.overwrite) as tmp:
        bar = progress_bar(len(images), "explain", enabled=not args.no_progress, warn=False, tty_only=True)
        try:
            for start in range(0, len(images), args.batch_size):
                batch = range(start, min(start + args.batch_size, len(images)))
                pils = [read_image(images[i]) for i in batch]
                prepared = [loaded.preprocess(im) for im in pils]
                x = torch.stack([t for t, _ in prepared]).to(device)
                exp = _explain_batch(
                    explainer, x, targets[start : batch.stop] if isinstance(targets, list) else targets, args.model
                )
                probs = torch.softmax(exp.output.float(), dim=1).cpu()
                for j, i in enumerate(batch):
                    cam = cam_to_image(exp.cams[j], pils[j].size, prepared[j][1])
                    files = {"overlay": f"{stems[i]}_overlay.png", "cam": f"{stems[i]}_cam.npy"}
                    np.save(tmp / files["cam"], cam.astype(np.float32))
                    overlay(pils[j], cam, colormap=args.colormap, alpha=args.alpha).save(tmp / files["overlay"])
                    explained = int(exp.class_idx[j]) if exp.class_idx is not None else None
                    records.append(
                        {
                            "input": str(images[i]),
                            "image_size": list(pils[j].size),
                            **files,
                            "predicted": cls(int(probs[j].argmax()), probs[j]),
                            "explained": cls(explained, probs[j], score=round(float(exp.scores[j]), 6)),
                        }
                    )
                bar.update(len(batch))
        finally:
            bar.close()
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": [PROG, *(sys.argv[1:] if args.argv is None else args.argv)],
            "versions": _versions(),
            "model": args.model,
            "weights": loaded.weights,
            "method": explainer.method.name,
            "layers": list(explainer.layers),
            "target": args.target,
            "device": str(device),
            "preprocess": loaded.preprocess.describe(),
            "options": {"aug_smooth": args.aug_smooth, "eigen_smooth": args.eigen_smooth},
            "cam": "float32 (H, W) in [0, 1] at each image's size; 0 outside the region the model saw (center crop)",
            "images": records,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if not args.quiet:
        rows = [
            (
                Path(r["input"]).name,
                f"{r['predicted']['name'] or r['predicted']['index']} ({r['predicted']['probability']:.2f})",
                r["explained"]["name"] or r["explained"]["index"],
            )
            for r in records
        ]
        _say(table(rows, ("image", "predicted (p)", "explained")))
        _say(
            f"\n{explainer.method.name} at {', '.join(explainer.layers)}: {len(records)} "
            f"image{'s' if len(records) != 1 else ''} explained; overlays, maps (.npy) and manifest.json in {out}/ "
            f"({time.perf_counter() - started:.1f} s)"
        )
    return 0


# --------------------------------------------------------------------------- layers, methods
def cmd_layers(args: argparse.Namespace) -> int:
    from .layers import layer_shapes
    from .trace import list_layers

    loaded = load_model(args.model, args.weights, size=_size(args.size), num_classes=args.num_classes)
    size = loaded.preprocess.size
    names = list_layers(loaded.model)
    shapes = layer_shapes(loaded.model, size)
    try:
        default = loaded.default_layer()
    except FxcamError:
        default = None
    rows = [
        ("*" if name == default else "", name, "x".join(map(str, shapes[name])) if name in shapes else "-")
        for name in names
    ]
    _say(table(rows, ("", "layer", f"output shape at {size[0]}x{size[1]}")))
    _say(
        f"\n{len(names)} layers of {args.model}."
        + (f" * = default ({default}), used when --layer is not given." if default else "")
    )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from . import methods

    rows = [(name, methods.get(name).kind, summary) for name, summary in methods.describe().items()]
    _say(table(rows, ("method", "needs", "description")))
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from . import Explainer

    try:
        from .demo import CLASSES, DEFAULT_LAYERS, load_demo_model, make_scenes
    except ImportError as exc:
        raise CLIError(f"The demo is not available in this installation ({exc}).") from None
    started = time.perf_counter()
    out = Path(args.out)
    check_out(out, args.overwrite)
    for option in ("n", "rows", "batch_size"):
        if getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be at least 1; got {getattr(args, option)}.")
    _alpha(args.alpha)
    device = resolve_device(args.device)
    methods = list(dict.fromkeys(_method(m).name for m in args.methods))
    models = list(dict.fromkeys(args.models))
    for m in models:
        if m not in DEFAULT_LAYERS:
            raise CLIError(f"--models {m!r}: the demo models are {sorted(DEFAULT_LAYERS)}.")
    images, labels, masks = make_scenes(args.n, seed=args.seed)
    # the grid shows the first scene of each class (up to --rows of them)
    shown = [int((labels == k).nonzero()[0]) for k in range(len(CLASSES)) if (labels == k).any()][: args.rows]

    hits: dict[tuple[str, str], float] = {}
    accuracy: dict[str, float] = {}
    with atomic_dir(out, args.overwrite) as tmp:
        total = len(models) * len(methods) * args.n
        bar = progress_bar(total, "demo", enabled=not args.no_progress, warn=False, tty_only=True)
        try:
            for model_name in models:
                try:
                    model = load_demo_model(model_name, device=device)
                except FileNotFoundError as exc:
                    raise CLIError(str(exc)) from None
                tiles: dict[str, list] = {}
                for method in methods:
                    explainer = Explainer(model, DEFAULT_LAYERS[model_name], method)
                    cams, preds = _explain_scenes(explainer, images, labels, args.batch_size, device, bar)
                    hit = pointing_game(cams, masks)
                    hits[(model_name, method)] = hit.float().mean().item()
                    accuracy.setdefault(model_name, (preds == labels).float().mean().item())
                    tiles[method] = [_demo_tile(images[i], cams[i], bool(hit[i]), args) for i in shown]
                    folder = tmp / model_name / method
                    folder.mkdir(parents=True)
                    for i, tile in zip(shown, tiles[method]):
                        tile.save(folder / f"scene{i:03d}_{CLASSES[int(labels[i])]}.png")
                _demo_grid(model_name, images, labels, shown, methods, tiles, CLASSES).save(tmp / f"{model_name}_grid.png")
        finally:
            bar.close()
        elapsed = time.perf_counter() - started
        results = {
            "versions": _versions(),
            "scenes": {"n": args.n, "seed": args.seed, "shown": shown},
            "layers": {m: DEFAULT_LAYERS[m] for m in models},
            "pointing_game": {m: {meth: hits[(m, meth)] for meth in methods} for m in models},
            "accuracy": accuracy,
            "seconds": round(elapsed, 2),
        }
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [(meth, *(f"{100 * hits[(m, meth)]:.1f}%" for m in models)) for meth in methods]
    rows.append(("(model accuracy)", *(f"{100 * accuracy[m]:.1f}%" for m in models)))
    header = ("method", *(f"demo:{m} ({DEFAULT_LAYERS[m]})" for m in models))
    _say(f"Pointing game on {args.n} generated scenes (seed {args.seed}): share of maps whose maximum is on the object.")
    _say(table(rows, header, "<" + ">" * len(models)))
    grids = ", ".join(str(out / f"{m}_grid.png") for m in models)
    _say(f"\nGrids (rows: scenes, columns: methods): {grids}; overlays in {out}/<model>/<method>/ ({elapsed:.1f} s)")
    return 0


def _explain_scenes(explainer, images, labels, batch_size: int, device, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(N, H, W)`` of each scene's true class, and the predicted classes ``(N,)``, on the CPU."""
    cams, preds = [], []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(device)
        exp = explainer.explain(x, labels[s : s + batch_size].to(device))
        cams.append(exp.cams.float().cpu())
        preds.append(exp.output.argmax(1).cpu())
        bar.update(x.shape[0])
    return torch.cat(cams), torch.cat(preds)


def _demo_tile(image: torch.Tensor, cam: torch.Tensor, hit: bool, args: argparse.Namespace):
    """The overlay of one scene at 2x, with a ring at the map's maximum (white: on the object, magenta: off)."""
    from PIL import Image, ImageDraw

    from .viz import overlay, to_pil

    scale = 2
    big = to_pil(image).resize((image.shape[-1] * scale, image.shape[-2] * scale), Image.NEAREST)
    tile = overlay(big, cam, colormap=args.colormap, alpha=args.alpha)
    y, x = divmod(int(cam.flatten().argmax()), cam.shape[-1])
    cx, cy, r = (x + 0.5) * scale, (y + 0.5) * scale, 6
    draw = ImageDraw.Draw(tile)
    draw.ellipse((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1), outline=(0, 0, 0), width=1)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255) if hit else (255, 0, 255), width=2)
    return tile


def _demo_grid(model_name, images, labels, shown, methods, tiles, classes):
    from PIL import Image

    from .viz import grid, to_pil

    scale = 2
    cells = []
    for row, i in enumerate(shown):
        cells.append(to_pil(images[i]).resize((images.shape[-1] * scale, images.shape[-2] * scale), Image.NEAREST))
        cells.extend(tiles[m][row] for m in methods)
    return grid(
        cells,
        nrow=len(methods) + 1,
        pad=4,
        row_labels=[classes[int(labels[i])] for i in shown],
        col_labels=[f"demo:{model_name}", *methods],
    )


# --------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from . import Explainer, instrument
    from .export import explainer_graph  # the module fxcam.export, not the function fxcam.export
    from .export import export as export_file

    out = Path(args.out)
    if out.suffix not in (".onnx", ".pt2"):
        raise CLIError(f"--out '{out}' must end in .onnx (ONNX) or .pt2 (torch.export); got {out.suffix or 'no suffix'!r}.")
    check_out_file(out, args.overwrite)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1; got {args.batch_size}.")
    device = resolve_device(args.device)
    method = _method(args.method).name if args.method else None
    loaded = load_model(
        args.model, args.weights, size=_size(args.size), num_classes=args.num_classes, device=device, warn=_warn
    )
    layers = args.layer or [loaded.default_layer()]
    h, w = loaded.preprocess.size
    x = torch.rand(args.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    if method is None:
        module = instrument(loaded.model, layers)
    else:
        module = explainer_graph(Explainer(loaded.model, layers, method), x, dynamic_batch=args.dynamic_batch)
    export_file(module, x, out, dynamic_batch=args.dynamic_batch)
    what = f"the {method} explainer x -> (logits, cam)" if method else "x -> (logits, activations)"
    batch = "any batch size" if args.dynamic_batch else f"batch {args.batch_size}"
    _say(f"Exported {args.model} {what} at {', '.join(layers)} for {h}x{w} inputs ({batch}) to {out}")
    return 0


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line that point to --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _model_options(p: argparse.ArgumentParser, size_help: str) -> None:
    p.add_argument(
        "--weights",
        metavar="PATH|DEFAULT",
        help="DEFAULT: torchvision/timm pretrained weights (downloaded, or read from the torch hub cache); "
        "a torchvision weight name (IMAGENET1K_V2); or a state_dict file (.pt/.pth/.safetensors). "
        "Without it torchvision/timm models have random weights.",
    )
    p.add_argument("--num-classes", type=int, metavar="K", help="build the model with K outputs (for --weights PATH)")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help=size_help)


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks (or set FXCAM_DEBUG=1)"
    )
    parser = _Parser(
        prog=PROG,
        description="Class activation maps compiled into the model's torch.fx graph.",
        epilog="Start with 'fxcam demo' (offline). Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"fxcam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (or set FXCAM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    spec_help = "torchvision:NAME, timm:NAME, path/to/file.py:FACTORY, demo:cnn or demo:vit"

    p = sub.add_parser(
        "explain",
        parents=[debug],
        help="explain images: overlays, maps (.npy) and manifest.json",
        description="Explain images with a CAM method. Writes <stem>_overlay.png, <stem>_cam.npy per image and "
        "manifest.json into --out, atomically (nothing is left behind if the run fails).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of images (not recursive)")
    p.add_argument("--model", required=True, metavar="SPEC", help=spec_help)
    _model_options(p, "model input size: H W, or N for N x N (default: the model's own)")
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (only once the new result is complete)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per batch (default 8)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, help="overlay colormap (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the heat map, 0..1 (default 0.5)")
    p.add_argument("--aug-smooth", action="store_true", help="average maps over flips and brightness changes")
    p.add_argument("--eigen-smooth", action="store_true", help="first principal component instead of the channel sum")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "layers",
        parents=[debug],
        help="the layer names --layer accepts, with output shapes",
        description="Every layer name fxcam.instrument accepts for MODEL, in execution order, with its output shape "
        "(shape propagation on a zero input); * marks the default layer.",
    )
    p.add_argument("model", metavar="MODEL", help=spec_help)
    _model_options(p, "input size for the shapes: H W, or N (default: the model's own)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("methods", parents=[debug], help="the CAM methods, one line each")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "demo",
        parents=[debug],
        help="offline demo: demo models on generated scenes, grids and pointing-game table",
        description="Explain generated scenes (fxcam.demo) with the shipped demo CNN and ViT and several methods: "
        "writes a grid PNG per model (rows: scenes, columns: methods) and overlays, and prints the pointing game "
        "(share of maps whose maximum lies on the object) per method and model. No downloads.",
    )
    p.add_argument("--out", default="fxcam-out-demo", metavar="DIR", help="output folder (default fxcam-out-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--methods", nargs="+", default=list(DEMO_METHODS), metavar="M",
        help=f"methods to compare (default: {' '.join(DEMO_METHODS)})",
    )
    p.add_argument("--models", nargs="+", default=["cnn", "vit"], metavar="NAME", help="demo models (default: cnn vit)")
    p.add_argument("--n", type=int, default=120, help="scenes scored in the pointing game (default 120)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"scene seed (default {DEMO_SEED}, held out from training)")
    p.add_argument("--rows", type=int, default=6, help="scenes shown in each grid, one per class (default 6)")
    p.add_argument("--batch-size", type=int, default=60, metavar="N", help="scenes per batch (default 60)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, help="overlay colormap (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "export",
        parents=[debug],
        help="export the instrumented model or a whole explainer (.onnx / .pt2)",
        description="Export x -> (logits, activations) at --layer, or with --method the whole explainer "
        "x -> (logits, cam) as one graph, to ONNX (.onnx) or torch.export (.pt2). Needs fxcam.export.",
    )
    p.add_argument("model", metavar="MODEL", help=spec_help)
    p.add_argument("--layer", action="append", metavar="L", help="layer(s) to tap (default: the model's default)")
    p.add_argument("--method", metavar="M", help="export the explainer graph of this method instead of the activations")
    p.add_argument("--out", required=True, metavar="FILE", help="file.onnx or file.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _model_options(p, "example input size: H W, or N (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="batch of the example input (default 1)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_false", help="fix the batch size in the graph")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=cmd_export)
    return parser


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fxcam`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(argv) if argv is not None else None
    debug = getattr(args, "debug", False) or os.environ.get("FXCAM_DEBUG", "") not in ("", "0")

    def show(message, category, filename, lineno, file=None, line=None):
        _warn(f"{message} ({category.__name__})")

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            if debug:
                raise
            _err("interrupted; no output was written.")
            return 130
        except FxcamError as exc:  # fxcam's messages and CLIError: already one clear sentence
            if debug:
                raise
            _err(str(exc))
            return 1
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                raise
            _err(f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]} (rerun with --debug for the traceback)")
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
