"""Output written atomically: checks of ``--out``, and :func:`atomic_dir`.

Results go to a hidden temporary folder beside the destination and are renamed into place
only when complete; a failure, Ctrl-C or SIGTERM removes them again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .common import CLIError


def check_out(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing destination unless ``overwrite``; refuse a file where a folder goes."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise CLIError(f"{what} '{out}' exists and is not a folder; choose another {what}.")
        if not overwrite:
            raise CLIError(f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}.")


def check_out_file(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing file unless ``overwrite``, a folder, or a missing parent folder."""
    if out.is_dir():
        raise CLIError(f"{what} '{out}' is a folder; pass a file name (e.g. {out / 'model.onnx'}).")
    if out.exists() and not overwrite:
        raise CLIError(f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}.")
    if not out.parent.is_dir():
        raise CLIError(f"The folder of {what} '{out}' does not exist; create '{out.parent}' first.")


class _Terminated(BaseException):
    """SIGTERM during a run: unwinds like KeyboardInterrupt so the temporary output is removed."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out``; on success it becomes ``out``, else it is removed.

    An existing ``out`` is replaced only with ``overwrite`` and only once the new result is
    complete. Parent folders created for ``out`` are removed again on failure. A run killed
    with SIGKILL can leave a hidden ``.NAME.tmp-*`` folder behind, never a partial ``out``.
    """
    out = Path(out)
    check_out(out, overwrite)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the result's mode
    try:
        with _sigterm_unwinds():
            yield tmp
            check_out(out, overwrite)  # it may have appeared meanwhile
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, _Terminated):
            raise KeyboardInterrupt("terminated") from None
        raise
