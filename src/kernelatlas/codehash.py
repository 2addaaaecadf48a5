"""Digests of kernelatlas's own source files.

Results cached across runs are keyed by the code that computed them as well as by the
version: a calibration (:mod:`kernelatlas.calibration`), the biology null's statistics, a
bank's kernels (read by the harvest readers, :func:`kernelatlas.harvest.api.reader_id`).
A development install, a reader fixed between releases or a user's changed plugin then
never meets results of other code. A file's digest is recomputed when its size or mtime
changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["files_digest", "package_files"]

_PACKAGE = Path(__file__).parent
_DIGESTS: dict[tuple[Any, ...], str] = {}


def package_files(*paths: str) -> list[str]:
    """Source files of kernelatlas by path inside the package: a ``.py`` file, or a folder
    (its ``*.py``, recursively)."""
    out: list[str] = []
    for rel in paths:
        p = _PACKAGE / rel
        out += sorted(str(f) for f in p.rglob("*.py")) if p.is_dir() else [str(p)]
    return out


def files_digest(files: Iterable[str]) -> str:
    """sha256 of the files (by name and bytes, in sorted order; one that cannot be read,
    or a ``<module>`` name that is no file, by its name only)."""
    stamp = []
    for f in sorted(set(files)):
        try:
            st = os.stat(f)
            stamp.append((f, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((f, None, None))
    key = tuple(stamp)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for f, size, _ in stamp:
            h.update(f"{Path(f).name}\0{size}\0".encode())
            if size is not None:
                try:
                    h.update(Path(f).read_bytes())
                except OSError:
                    h.update(b"unreadable\0")
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
