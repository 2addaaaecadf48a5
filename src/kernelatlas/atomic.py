"""Atomic publication of files and directories: write aside, then rename into place."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path

__all__ = ["staging_path", "recover_dir", "publish_dir"]


def staging_path(out: Path) -> Path:
    """Where the next state of directory ``out`` is built (a hidden sibling)."""
    return out.parent / f".{out.name}.staging"


def _old_path(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def recover_dir(out: Path) -> None:
    """Finish a swap that a crash interrupted: ``out`` missing but its previous state aside."""
    old = _old_path(out)
    if old.exists() and not out.exists():
        os.replace(old, out)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # old glibc or another libc
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_dir(staging: Path, out: Path) -> None:
    """Replace directory ``out`` by ``staging``.

    On Linux the two directories are exchanged in one atomic step, so ``out`` always holds
    a complete state. Elsewhere (or on filesystems without the exchange) two renames are
    used, and a crash between them leaves ``out`` missing until :func:`recover_dir` runs.
    """
    old = _old_path(out)
    if out.exists() and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous state
        return
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
