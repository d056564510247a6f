"""``fxcam methods``: the CAM methods ``--method`` accepts, one line each."""

from __future__ import annotations

import argparse

from .. import methods
from .args import debug_options
from .common import say, table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", parents=[debug_options()], help="the CAM methods, one line each")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [(name, methods.get(name).kind, summary) for name, summary in methods.describe().items()]
    say(table(rows, ("method", "needs", "description")))
    return 0
