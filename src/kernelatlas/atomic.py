"""Atomic publication of files and directories: write aside, then rename into place."""

from __future__ import annotations

import os
import shutil
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


def publish_dir(staging: Path, out: Path) -> None:
    """Replace directory ``out`` by ``staging`` with two renames (see :func:`recover_dir`)."""
    old = _old_path(out)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
