"""``fxcam layers MODEL``: the layer names ``--layer`` accepts, with output shapes."""

from __future__ import annotations

import argparse

from ..errors import FxcamError
from ..layers import layer_shapes
from ..trace import list_layers
from .args import debug_options, model_options
from .common import parse_size, say, table
from .models import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "layers",
        parents=[debug_options(), model_options("input size for the shapes: H W, or N (default: the model's own)")],
        help="the layer names --layer accepts, with output shapes",
        description="Every layer name fxcam.instrument accepts for MODEL, in execution order, with its output shape "
        "(shape propagation on a zero input); * marks the default layer.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.weights, size=parse_size(args.size), num_classes=args.num_classes)
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
    say(table(rows, ("", "layer", f"output shape at {size[0]}x{size[1]}")))
    say(
        f"\n{len(names)} layers of {args.model}."
        + (f" * = default ({default}), used when --layer is not given." if default else "")
    )
    return 0
