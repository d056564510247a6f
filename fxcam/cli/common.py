"""What every command shares: the error class, one-line printing, tables and small option checks."""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .. import __version__, methods
from ..errors import FxcamError

PROG = "fxcam"


class CLIError(FxcamError):
    """A bad input to the command line: printed as one line, exit status 1."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def err(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def say(message: str = "") -> None:
    print(message, file=sys.stdout)


def versions() -> dict[str, str]:
    import torchvision

    return {
        "fxcam": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def parse_size(values: Sequence[int] | None, option: str = "--size") -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise CLIError(f"{option} takes one or two positive integers (N or H W); got {' '.join(map(str, values))}.")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def get_method(name: str) -> methods.Method:
    return methods.get(name)  # FxcamError with close matches for unknown names


def check_alpha(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise CLIError(f"--alpha {value} is outside [0, 1]; 0 shows the image only, 1 the heat map only.")
    return value


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, align: str | None = None) -> str:
    """Plain-text columns; ``align``: one ``<`` or ``>`` per column."""
    rows = [[str(c) for c in r] for r in rows]
    if header is not None:
        rows = [[str(h) for h in header]] + rows
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = align or "<" * len(widths)
    lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in rows]
    if header is not None:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
