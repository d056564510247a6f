"""The ``fxcam`` command: explain images, list layers and methods, run the offline demo, export.

    fxcam demo                                    # offline: demo models on generated scenes
    fxcam explain cat.jpg --model torchvision:resnet50 --weights DEFAULT --method gradcam
    fxcam layers torchvision:resnet50             # names --layer accepts, with output shapes
    fxcam methods                                 # names --method accepts
    fxcam export torchvision:resnet18 --layer layer4 --method gradcam --out r18.onnx

Every bad input ends with one line on stderr (``fxcam: error: ...``) and exit status 1
(2 for malformed arguments), and leaves no output behind: results are written to a hidden
folder beside ``--out`` and renamed into place when complete. Ctrl-C (SIGINT) exits with 130
and SIGTERM with 143 (128 + the signal), also with one line and no output left behind.
``--debug`` (or ``FXCAM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import FxcamError
from . import demo, explain, export, layers, methods
from .args import Parser, debug_options
from .common import PROG, err, warn
from .output import Terminated, sigterm_unwinds

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        parents=[debug_options()],
        description="Class activation maps compiled into the model's torch.fx graph.",
        epilog="Start with 'fxcam demo' (offline). Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"fxcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    for command in (explain, layers, methods, demo, export):
        command.add_parser(sub)
    return parser


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
        warn(f"{message} ({category.__name__})")

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            with sigterm_unwinds():
                return int(args.func(args) or 0)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
            if debug:
                raise
            if isinstance(exc, Terminated):
                err("terminated (SIGTERM); no output was written.")
                return 143
            err("interrupted; no output was written.")
            return 130
        except FxcamError as exc:  # fxcam's messages and CLIError: already one clear sentence
            if debug:
                raise
            err(str(exc))
            return 1
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                raise
            err(f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]} (rerun with --debug for the traceback)")
            return 1
