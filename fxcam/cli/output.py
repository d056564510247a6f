"""Output written atomically: checks of ``--out``, and :func:`atomic_dir`.

Results go to a hidden temporary folder beside the destination and are renamed into place
only when complete; a failure, Ctrl-C or SIGTERM removes them again. SIGTERM raises
:class:`Terminated` (a ``KeyboardInterrupt``) inside :func:`sigterm_unwinds`, which
``fxcam.cli.main`` turns into exit status 143.
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
    """Refuse an existing destination unless ``overwrite``; refuse a file where a folder goes,
    and a destination that cannot be created (under a file, or in a folder not writable)."""
    with _unusable(out, what):
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise CLIError(f"{what} '{out}' exists and is not a folder; choose another {what}.")
            if not overwrite:
                raise CLIError(
                    f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}."
                )
        check_creatable(out, what)


def check_out_file(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing file unless ``overwrite``, a folder, or a missing parent folder."""
    with _unusable(out, what):
        if out.is_dir():
            raise CLIError(f"{what} '{out}' is a folder; pass a file name (e.g. {out / 'model.onnx'}).")
        if out.exists() and not overwrite:
            raise CLIError(
                f"{what} '{out}' already exists; pass --overwrite to replace it, or choose another {what}."
            )
        check_creatable(out, what)
        if not out.parent.is_dir():
            raise CLIError(f"The folder of {what} '{out}' does not exist; create '{out.parent}' first.")


@contextlib.contextmanager
def _unusable(out: Path, what: str) -> Iterator[None]:
    """An OSError while looking at ``out`` (a name too long, a loop of links) -> one line."""
    try:
        yield
    except OSError as exc:
        raise CLIError(f"{what} '{out}' cannot be used: {exc.strerror or exc}; choose another {what}.") from None


def check_creatable(out: Path, what: str = "--out") -> None:
    """The nearest existing folder above ``out`` must be a folder this process may write to.

    (The root user may write anywhere; a read-only file system still fails later, in
    :func:`atomic_dir`, with the same kind of message.)"""
    parent = out.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(
            f"{what} '{out}' cannot be created: '{parent}' is a file, not a folder; "
            f"choose an {what} outside it, or move the file away."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(
            f"{what} '{out}' cannot be created: the folder '{parent}' is not writable; "
            f"choose an {what} in a folder you can write to."
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: unwinds like Ctrl-C (so the temporary output is removed), and the
    command exits with 143 (128 + SIGTERM) where Ctrl-C exits with 130."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (once: a second SIGTERM during the
    unwinding is ignored, so the clean-up finishes). Only in the main thread, where Python
    runs signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum, frame):
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated("terminated")

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
    with SIGKILL can leave a hidden ``.NAME.tmp-*`` folder behind (``NAME``: up to 100
    characters of ``out``'s name), never a partial ``out``.
    """
    out = Path(out)
    check_out(out, overwrite)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.tmp-", dir=out.parent))
    except OSError as exc:  # a read-only file system, a name too long, no space left...
        _remove_created(created)
        raise CLIError(
            f"--out '{out}' cannot be created: {exc.strerror or exc}; choose another --out."
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the result's mode
    try:
        with sigterm_unwinds():
            yield tmp
            check_out(out, overwrite)  # it may have appeared meanwhile
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


def _remove_created(folders: list[Path]) -> None:
    """Remove the (empty) parent folders made for ``--out``, deepest first."""
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()
