"""The commands' argument parsers: one-line usage errors, and the options several commands share.

Each shared option is declared once, in a parent parser (``add_help=False``) that the commands
list in ``parents=[...]``. A few help texts differ between commands; those are parameters.
"""

from __future__ import annotations

import argparse

from .models import SPEC_FORMS

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "gray")


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line that point to --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def debug_options() -> argparse.ArgumentParser:
    """``--debug``; absent from the namespace unless given (before or after the command)."""
    p = _parent()
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks (or set FXCAM_DEBUG=1)"
    )
    return p


def model_options(size_help: str, *, positional: bool = True) -> argparse.ArgumentParser:
    """The model spec as the positional ``MODEL`` (``positional=False``: none, for ``explain``,
    whose ``--model`` follows its images), ``--weights``, ``--num-classes`` and ``--size``."""
    p = _parent()
    if positional:
        p.add_argument("model", metavar="MODEL", help=SPEC_FORMS)
    p.add_argument(
        "--weights",
        metavar="PATH|DEFAULT",
        help="DEFAULT: torchvision/timm pretrained weights (downloaded, or read from the torch hub cache); "
        "a torchvision weight name (IMAGENET1K_V2); or a state_dict file (.pt/.pth/.safetensors). "
        "Without it torchvision/timm models have random weights.",
    )
    p.add_argument("--num-classes", type=int, metavar="K", help="build the model with K outputs (for --weights PATH)")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help=size_help)
    return p


def device_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    return p


def overlay_options(alpha_help: str) -> argparse.ArgumentParser:
    """``--colormap`` and ``--alpha`` of the overlays."""
    p = _parent()
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, help="overlay colormap (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help=alpha_help)
    return p


def progress_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def overwrite_options(help_text: str = "replace an existing --out") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--overwrite", action="store_true", help=help_text)
    return p
