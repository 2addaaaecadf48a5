"""Atomic publication of directories, and the marker that says a folder is kernelatlas's.

Every folder kernelatlas creates holds a small marker file, :data:`MARKER`, stamped with
the version and the kind of folder (``analysis``, ``bank``, ``figures``...). A folder is
only ever replaced or deleted when it is kernelatlas's own: its marker is there (or it is
an output of kernelatlas 0.1.0, recognised by its files; see :mod:`kernelatlas.outputs`).

A new state of directory ``out`` is built in a hidden, namespaced sibling
(``.NAME.kernelatlas-staging``) and swapped in; the previous state goes aside to
``.NAME.kernelatlas-old`` only on systems without an atomic exchange. Recovery touches
those siblings only when they carry the marker, so a user's own ``.NAME.old`` or
``.NAME.staging`` is never moved or deleted. A folder that is not kernelatlas's and that
the user asked to replace (``--force``) is never deleted either: it is renamed to a free
visible sibling, ``NAME.previous`` (``NAME.previous-2``...), and kept as it was.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "write_marker",
    "read_marker",
    "read_small_file",
    "read_json",
    "is_temp_name",
    "temp_sibling",
    "staging_path",
    "old_path",
    "lock_path",
    "recover_dir",
    "publish_dir",
    "move_aside",
    "remove_owned",
]

#: Name of the marker file in every folder kernelatlas creates.
MARKER = ".kernelatlas"
_SUFFIX = ".kernelatlas"
#: A marker is a few dozen bytes; anything larger is not one.
_MARKER_BYTES = 4096


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of kernelatlas's temporary files (``.NAME.tmp``,
    ``.NAME...tmp``, ``.STEM.tmp.png``: hidden, written aside then renamed into place), which
    a killed writer may leave behind; a user's hidden file is not one."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".tmp.png"))


def temp_sibling(path: Path, *, keep_suffix: bool = False) -> Path:
    """A fresh temporary name beside ``path`` to write it under before renaming it into
    place: hidden, unpredictable (pid and random), so nothing can be planted there first
    (a symlink at a fixed ``.NAME.tmp`` is written through); ``keep_suffix`` keeps
    ``path``'s suffix last (``.STEM.<pid>.<rand>.tmp.png``: matplotlib picks the format by it)."""
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    if keep_suffix:
        return path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")
    return path.with_name(f".{path.name}.{tag}.tmp")


def read_small_file(path: Path, max_bytes: int, *, follow: bool = True) -> bytes:
    """The bytes of a small regular file, without ever blocking or reading without end.

    Raises
    ------
    FileNotFoundError, OSError : missing or unreadable (``follow=False``: a symlink is
        ``ELOOP``).
    ValueError : not a regular file (a FIFO, which a plain read waits on forever; a device
        such as ``/dev/zero``, read without end; a socket, a folder), or over ``max_bytes``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{path} holds {st.st_size:,} bytes, over {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while read
        raise ValueError(f"{path} holds over {max_bytes:,} bytes")
    return data


def read_json(path: Path, max_bytes: int, *, follow: bool = True) -> Any:
    """The JSON document in small regular file ``path`` (:func:`read_small_file`).

    Raises OSError (missing, unreadable) or ValueError (not a regular file, too large,
    not UTF-8 JSON, or nested too deep to parse).
    """
    data = read_small_file(path, max_bytes, follow=follow)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deep") from None


def write_marker(folder: Path, kind: str) -> None:
    """Stamp ``folder`` (which must exist) as a kernelatlas folder of ``kind``: written aside
    and renamed into place, so a marker is whole or absent, and a symlink planted at its
    name is replaced, never written through."""
    from . import __version__

    doc = {"kernelatlas_version": __version__, "kind": kind}
    tmp = folder / f"{MARKER}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x") as f:  # O_EXCL: never through a file or link already there
            f.write(json.dumps(doc) + "\n")
        os.replace(tmp, folder / MARKER)
    finally:
        tmp.unlink(missing_ok=True)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder`` (a dict with ``kind``), or None when it has none (or what is
    at its name is not one: a symlink, a FIFO, a device, a large or unparsable file)."""
    try:
        doc = read_json(folder / MARKER, _MARKER_BYTES, follow=False)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "kind" in doc else None


def staging_path(out: Path) -> Path:
    """Where the next state of directory ``out`` is built (a hidden, namespaced sibling)."""
    return out.parent / f".{out.name}{_SUFFIX}-staging"


def old_path(out: Path) -> Path:
    """Where the previous state of ``out`` waits during a two-rename swap."""
    return out.parent / f".{out.name}{_SUFFIX}-old"


def lock_path(out: Path) -> Path:
    """The lock file of ``out`` (a hidden sibling; removed when the run ends)."""
    return out.parent / f".{out.name}{_SUFFIX}-lock"


def remove_owned(path: Path) -> bool:
    """Delete folder ``path`` if it carries kernelatlas's marker; True if it did."""
    if path.is_dir() and not path.is_symlink() and read_marker(path) is not None:
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False


def recover_dir(out: Path) -> None:
    """Finish a swap that a crash interrupted: ``out`` missing but its previous state aside.

    Only a sibling that carries the marker is restored or deleted.
    """
    old = old_path(out)
    if not old.is_dir() or old.is_symlink() or read_marker(old) is None:
        return
    if not out.exists() and not out.is_symlink():
        os.replace(old, out)
    else:
        shutil.rmtree(old, ignore_errors=True)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(a: Path, b: Path, flag: int) -> int | None:
    """Linux ``renameat2(a, b, flag)``: 0 if done, else its errno; None where there is no
    renameat2 (another OS or libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # old glibc or another libc
        return None
    if renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flag) == 0:  # -100: AT_FDCWD
        return 0
    return ctypes.get_errno() or errno.EIO


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    return _renameat2(a, b, _RENAME_EXCHANGE) == 0


def move_aside(folder: Path) -> Path:
    """Rename ``folder`` to the first free ``NAME.previous`` (``NAME.previous-2``...) beside
    it, never over an existing path; return where it went."""
    for i in range(1, 10_000):
        dest = folder.parent / (f"{folder.name}.previous" + (f"-{i}" if i > 1 else ""))
        if dest.exists() or dest.is_symlink():
            continue
        err = _renameat2(folder, dest, _RENAME_NOREPLACE)
        if err in (None, errno.ENOSYS, errno.EINVAL):  # no RENAME_NOREPLACE: checked above
            os.rename(folder, dest)
            return dest
        if err == 0:
            return dest
        if err != errno.EEXIST:  # taken meanwhile: the next name; anything else is said
            raise OSError(err, os.strerror(err), str(folder))
    raise OSError(errno.EEXIST, f"no free NAME.previous-N name beside {folder}")


def publish_dir(staging: Path, out: Path, *, keep_previous: bool = False) -> Path | None:
    """Replace directory ``out`` by ``staging``; return where the previous ``out`` was kept.

    ``keep_previous`` (a folder kernelatlas did not write, replaced with ``--force``): the
    previous ``out`` is moved aside (:func:`move_aside`), never deleted. Otherwise, on Linux
    the two directories are exchanged in one atomic step, so ``out`` always holds a complete
    state, and the previous state (kernelatlas's) is deleted. Elsewhere (or on filesystems
    without the exchange) two renames are used, and a crash between them leaves ``out``
    missing until :func:`recover_dir` runs (the previous state waits, marked, in
    :func:`old_path`).
    """
    if keep_previous and (out.exists() or out.is_symlink()):
        kept = move_aside(out)
        os.replace(staging, out)
        return kept
    old = old_path(out)
    if out.exists() and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous state
        return None
    if out.exists():
        if read_marker(out) is None:  # a 0.1.0 output: marked, so recovery restores it
            write_marker(out, "replaced")
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    return None
