"""The argument parsers' shared parts: one-line usage errors, and options several commands declare."""

from __future__ import annotations

import argparse

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line that point to --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_model_options(p: argparse.ArgumentParser, size_help: str) -> None:
    p.add_argument(
        "--weights",
        metavar="PATH|DEFAULT",
        help="DEFAULT: torchvision/timm pretrained weights (downloaded, or read from the torch hub cache); "
        "a torchvision weight name (IMAGENET1K_V2); or a state_dict file (.pt/.pth/.safetensors). "
        "Without it torchvision/timm models have random weights.",
    )
    p.add_argument("--num-classes", type=int, metavar="K", help="build the model with K outputs (for --weights PATH)")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help=size_help)


def debug_parent() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks (or set FXCAM_DEBUG=1)"
    )
    return debug
