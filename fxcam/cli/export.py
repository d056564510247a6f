"""``fxcam export MODEL``: the instrumented model, or a whole explainer, as one .onnx / .pt2 file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import Explainer, instrument
from ..exporter import export as export_file
from .args import debug_options, device_options, model_options, overwrite_options
from .common import CLIError, get_method, parse_size, say, warn
from .models import load_model, resolve_device
from .output import check_out_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        parents=[
            debug_options(),
            model_options("example input size: H W, or N (default: the model's own)"),
            device_options(),
            overwrite_options(),
        ],
        help="export the instrumented model or a whole explainer (.onnx / .pt2)",
        description="Export x -> (logits, activations) at --layer, or with --method the whole explainer "
        "x -> (logits, cam) as one graph, to ONNX (.onnx) or torch.export (.pt2).",
    )
    p.add_argument("--layer", action="append", metavar="L", help="layer(s) to tap (default: the model's default)")
    p.add_argument("--method", metavar="M", help="export the explainer graph of this method instead of the activations")
    p.add_argument("--out", required=True, metavar="FILE", help="file.onnx or file.pt2")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="batch of the example input (default 1)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_false", help="fix the batch size in the graph")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".onnx", ".pt2"):
        raise CLIError(f"--out '{out}' must end in .onnx (ONNX) or .pt2 (torch.export); got {out.suffix or 'no suffix'!r}.")
    check_out_file(out, args.overwrite)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1; got {args.batch_size}.")
    device = resolve_device(args.device)
    method = get_method(args.method).name if args.method else None
    loaded = load_model(
        args.model, args.weights, size=parse_size(args.size), num_classes=args.num_classes, device=device, warn=warn
    )
    layers = args.layer or [loaded.default_layer()]
    h, w = loaded.preprocess.size
    x = torch.rand(args.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    if method is None:
        module = instrument(loaded.model, layers)
    else:
        module = Explainer(loaded.model, layers, method).to_graph(x, dynamic_batch=args.dynamic_batch)
    export_file(module, x, out, dynamic_batch=args.dynamic_batch)
    what = f"the {method} explainer x -> (logits, cam)" if method else "x -> (logits, activations)"
    batch = "any batch size" if args.dynamic_batch else f"batch {args.batch_size}"
    say(f"Exported {args.model} {what} at {', '.join(layers)} for {h}x{w} inputs ({batch}) to {out}")
    return 0
