"""The one progress bar of fxcam: tqdm when it is installed (an optional extra), else a silent stand-in.

Library code (driver methods, DFF, metrics, runners) and the CLI both call :func:`bar`; nothing
else in fxcam imports tqdm.

- Library calls pass ``enabled=progress`` from the user's own ``progress=True``: without tqdm
  that request cannot be honoured, so a warning says so (once per call site and message, by
  Python's warning filter).
- The CLI shows bars by default: it passes ``warn=False`` (no tqdm, no bar, no noise) and
  ``tty_only=True`` (no bar when stderr is redirected to a file or a pipe).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

MISSING = "progress=True needs tqdm (pip install tqdm); continuing without a progress bar."


class NoBar:
    """Stands in for a tqdm bar: every method tqdm's callers use, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "") -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(
    total: int | None,
    desc: str,
    *,
    enabled: bool = True,
    unit: str = "img",
    warn: bool = True,
    tty_only: bool = False,
) -> Any:
    """A progress bar over ``total`` units (``update(n)``, ``set_postfix(...)``, ``close()``; a context manager).

    ``enabled=False`` gives the silent :class:`NoBar`. Without tqdm, ``warn`` (default) warns
    that the bar was asked for and cannot be shown. ``tty_only``: show the bar only when
    stderr is a terminal (the CLI's choice; bars in notebooks need ``tty_only=False``).
    """
    if not enabled:
        return NoBar()
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional extra
    except ImportError:
        if warn:
            warnings.warn(MISSING, stacklevel=3)
        return NoBar()
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if tty_only else False, leave=not tty_only
    )


__all__ = ["bar", "NoBar", "MISSING"]
