"""Output folders that never destroy: what kernelatlas may write, replace or refuse.

Rules, checked before anything is written (each refusal is one
:class:`~kernelatlas.errors.KernelAtlasError` line):

- ``--out`` is resolved once (a symlink is followed to its target, which is used from
  then on); a dangling symlink is refused.
- It must be absent, empty, or a kernelatlas folder of the same kind (its marker, see
  :mod:`kernelatlas.atomic`, or the files of a kernelatlas 0.1.0 output) that holds only
  what kernelatlas writes there. Anything else is refused; ``force=True`` (``--force``)
  writes the new output there anyway and keeps the folder it replaces, unchanged, at
  ``NAME.previous`` (:func:`kernelatlas.atomic.move_aside`; a warning names it): nothing
  kernelatlas did not write is ever deleted. For a folder that runs add to
  (``bench-train``, ``autoencoder train``), ``--force`` writes beside its files, never over
  them, and leaves it unmarked.
- It is never a file, never an input, never a folder that holds an input, never inside an
  input folder, and a replaced output is never the current directory, one of its parents,
  the home folder, ``/`` or a folder right under it (not even with ``force``).
- One run at a time per output: an ``fcntl`` lock on a hidden sibling; a second run
  refuses at once, naming the first one's pid.

:func:`replacing` builds a new state in a marked staging sibling and swaps it in
(:func:`kernelatlas.atomic.publish_dir`); :func:`appending` opens a folder that runs add to
(a kernel bank).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import (
    MARKER,
    is_temp_name,
    lock_path,
    old_path,
    publish_dir,
    read_json,
    read_marker,
    recover_dir,
    remove_owned,
    staging_path,
    write_marker,
)
from .errors import KernelAtlasError
from .interrupts import check as check_interrupt

__all__ = [
    "ANALYSIS_FILES",
    "BENCH_SUFFIXES",
    "OUTPUT_KINDS",
    "Staging",
    "replacing",
    "appending",
    "check_out",
    "resolve_out",
    "output_lock",
    "is_kernelatlas_dir",
    "mark_dir",
]

#: What ``analyze`` writes into its output folder.
ANALYSIS_FILES: tuple[str, ...] = (
    "kernels.parquet",
    "summary.json",
    "index.html",
    "figures",
    "bank",
)
#: What ``bench-train`` and ``bench-init`` write into their output folder: NAME + suffix.
BENCH_SUFFIXES: tuple[str, ...] = (".json", ".md", ".png", "-coverage.png")
# kind -> (files a kernelatlas 0.1.0 folder of that kind may hold, the file that must be there)
_LEGACY: dict[str, tuple[frozenset[str], str | None]] = {
    "analysis": (frozenset(ANALYSIS_FILES), "summary.json"),
    "comparison": (frozenset({"comparison.json", "index.html", "figures"}), "comparison.json"),
    "bank": (frozenset(), None),  # any number of *.parquet files written by kernelatlas
    "autoencoders": (frozenset(), None),  # ae_KHxKW/ folders with config.json
    **{  # bench-train / bench-init: NAME.json and its report files
        name: (frozenset(name + suffix for suffix in BENCH_SUFFIXES), f"{name}.json")
        for name in ("bench-train", "bench-init")
    },
}
#: Kinds of output folder kernelatlas writes.
OUTPUT_KINDS: tuple[str, ...] = tuple(_LEGACY)
# what a replaced output of each kind may hold: top-level names, and sub-folder -> suffixes
_CONTENTS: dict[str, tuple[frozenset[str], dict[str, tuple[str, ...]]]] = {
    "analysis": (
        _LEGACY["analysis"][0],
        {"figures": (".png",), "bank": (".parquet",), "kernels.parquet": (".parquet",)},
    ),
    "comparison": (_LEGACY["comparison"][0], {"figures": (".png",)}),
}


#: The largest summary.json (or comparison.json) read to recognise a 0.1.0 output.
_DOC_BYTES = 256 * 2**20


def _has_content(folder: Path) -> bool:
    """Whether folder ``folder`` holds anything but kernelatlas's marker (a ``.kernelatlas``
    that is not one, such as a symlink or a FIFO planted at its name, is content)."""
    names = [p.name for p in folder.iterdir()]
    return any(n != MARKER for n in names) or (bool(names) and read_marker(folder) is None)


def _own_file(path: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``path``, inside a sub-folder of an output, is a file kernelatlas writes there:
    a regular file (not a symlink) with one of ``suffixes``; a Parquet file must also carry
    kernelatlas's version in its footer (a user's own table does not)."""
    if path.suffix not in suffixes or path.is_symlink() or not path.is_file():
        return False
    if path.suffix != ".parquet":
        return True
    import pyarrow.parquet as pq

    try:
        return b"kernelatlas_version" in (pq.read_schema(path).metadata or {})
    except Exception:  # not Parquet at all
        return False


def mark_dir(folder: Path, kind: str) -> Path:
    """Create ``folder`` (and parents) if needed and stamp it with the marker of ``kind``."""
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:
        write_marker(folder, kind)
    return folder


def _legacy_kind(folder: Path, kind: str) -> bool:
    """Whether ``folder`` (no marker) is an output of kernelatlas 0.1.0 of ``kind``."""
    names = {p.name for p in folder.iterdir()}
    allowed, required = _LEGACY[kind]
    if kind == "bank":
        files = [folder / n for n in names if not n.startswith(".")]
        if not files or not all(f.suffix == ".parquet" and f.is_file() for f in files):
            return False
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(files[0]).metadata or {}
        except Exception:  # not Parquet at all
            return False
        return b"kernelatlas_version" in meta
    if kind == "autoencoders":
        subs = [folder / n for n in names]
        return bool(subs) and all(p.name.startswith("ae_") and _saved_ae(p) for p in subs)
    names = {n for n in names if not is_temp_name(n)}
    if not names or not names <= allowed or required not in names:
        return False
    try:  # never waits on a FIFO nor reads a device planted at its name
        doc = read_json(folder / required, _DOC_BYTES)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "kernelatlas_version" in doc


def _saved_ae(folder: Path) -> bool:
    """Whether ``folder`` holds an autoencoder kernelatlas saved (its config says so)."""
    from .autoencoder.model import CONFIG_FILE, FORMAT

    try:
        doc = read_json(folder / CONFIG_FILE, _DOC_BYTES)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def is_kernelatlas_dir(folder: Path, kind: str | None = None) -> bool:
    """Whether ``folder`` is kernelatlas's (of ``kind``, when given)."""
    if not folder.is_dir():
        return False
    marker = read_marker(folder)
    if marker is not None:
        return kind is None or marker.get("kind") == kind
    kinds = [kind] if kind else list(OUTPUT_KINDS)
    return any(_legacy_kind(folder, k) for k in kinds)


def _foreign(folder: Path, kind: str) -> str | None:
    """The first entry of kernelatlas output ``folder`` that kernelatlas does not write
    there (a user's file that replacing the folder would delete), or None."""
    if kind not in _CONTENTS:
        return None
    names, subs = _CONTENTS[kind]
    for p in sorted(folder.iterdir()):
        if p.name == MARKER or (is_temp_name(p.name) and p.is_file() and not p.is_symlink()):
            continue  # a killed writer's temporary file: kernelatlas's
        if p.name not in names or p.is_symlink():
            return p.name
        if p.name in subs and p.is_dir():
            for q in sorted(p.iterdir()):
                temp = is_temp_name(q.name) and q.is_file() and not q.is_symlink()
                mark = q.name == MARKER and read_marker(p) is not None  # not a planted link
                if not (mark or temp or _own_file(q, subs[p.name])):
                    return f"{p.name}/{q.name}"
    return None


def resolve_out(out: str | os.PathLike[str]) -> Path:
    """The absolute, symlink-free path of ``out``, resolved once; a dangling link is refused."""
    p = Path(out).expanduser()
    if p.is_symlink() and not p.exists():
        try:
            os.stat(p)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KernelAtlasError(f"--out {p} is a symlink loop: remove it") from None
        raise KernelAtlasError(
            f"--out {p} is a dangling symlink (to {os.readlink(p)}): remove it or point it at "
            "a folder"
        )
    return Path(os.path.realpath(p))


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _caches() -> list[tuple[Path, str]]:
    """The folders a run writes into while it works (resolved), with the variable that
    moves each: the weight cache (the biology null's statistics, and by default the
    calibrations, are in it), then the calibrations."""
    from .calibration import calibration_dir
    from .harvest.cache import cache_dir

    return [
        (Path(os.path.realpath(d)), var)
        for d, var in ((cache_dir(), "KERNELATLAS_CACHE"),
                       (calibration_dir(), "KERNELATLAS_CALIBRATIONS"))
    ]  # fmt: skip


def check_out(
    out: str | os.PathLike[str],
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
    replace: bool = True,
    forceable: bool | None = None,
) -> Path:
    """Check that ``out`` may be written (see the module docstring); return it resolved.

    Parameters
    ----------
    out : the output folder as the user gave it.
    kind : what is written there (one of :data:`OUTPUT_KINDS`).
    inputs : paths the run reads (model files, bank and run folders).
    force : write into a non-empty folder that is not kernelatlas's: it is moved aside to
        ``NAME.previous`` when the output is published (``replace=False``: write beside its
        files).
    replace : the run replaces ``out`` as a whole (False: it adds to it, as a bank).
    forceable : whether the command offers ``--force`` (the refusal names it); default
        ``replace``.
    """
    if kind not in OUTPUT_KINDS:
        raise KernelAtlasError(f"unknown output kind {kind!r}; known: {OUTPUT_KINDS}")
    target = resolve_out(out)
    shown = str(out)
    for raw in inputs:
        p = Path(os.path.realpath(Path(raw).expanduser()))
        if _within(p, target):
            what = "is" if p == target else "holds"
            raise KernelAtlasError(
                f"--out {shown} {what} the input {p}: kernelatlas never writes over its inputs; "
                "choose a new folder"
            )
        if p.is_dir() and _within(target, p):
            raise KernelAtlasError(
                f"--out {shown} is inside the input folder {p}: choose a folder outside it"
            )
        work = [w for w in (staging_path(target), old_path(target)) if _within(p, w)]
        if work:  # the run clears and replaces those siblings
            raise KernelAtlasError(
                f"the input {p} is inside {work[0].name}, kernelatlas's working folder for "
                f"--out {shown}, which this run clears: copy it elsewhere first"
            )
    if replace:
        cwd = Path(os.path.realpath(os.getcwd()))
        home = Path(os.path.realpath(Path.home()))
        top = target.parent == Path(target.anchor)  # /, /tmp, /home, /usr...
        if _within(cwd, target) or target == home or top or target == Path(target.anchor):
            what = (
                "the current folder or a parent of it"
                if _within(cwd, target)
                else "a top folder or home"
            )
            raise KernelAtlasError(
                f"--out {shown} is {what}, which kernelatlas would replace as a whole: name a "
                "new folder (e.g. --out report)"
            )
    if replace:
        for folder, var in _caches():
            if _within(folder, target):
                raise KernelAtlasError(
                    f"--out {shown} holds kernelatlas's cache {folder} ({var}), which a run "
                    "writes into while it works and publishing --out would delete: choose "
                    f"another --out, or set {var} to a folder outside it"
                )
    if target.exists() and not target.is_dir():
        raise KernelAtlasError(
            f"--out {shown} exists and is not a folder: kernelatlas never replaces a file; "
            "choose another path"
        )
    if target.is_dir() and _has_content(target):
        if not is_kernelatlas_dir(target, kind):
            other = read_marker(target)
            what = f"a kernelatlas {other['kind']} folder" if other else "not a kernelatlas output"
            if force:
                return target
            hint = "choose a new or empty folder"
            if replace:
                hint += f", or pass --force to write there and keep it as {target.name}.previous"
            elif forceable:
                hint += ", or pass --force to write beside its files (never over them)"
            raise KernelAtlasError(f"--out {shown} is not empty and is {what}: {hint}")
        extra = _foreign(target, kind) if replace and not force else None
        if extra is not None:
            raise KernelAtlasError(
                f"--out {shown} holds {extra}, which kernelatlas did not write and replacing "
                f"the folder would delete: move it out, or pass --force to keep the folder as "
                f"{target.name}.previous"
            )
    return target


@contextlib.contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold the lock of output ``target`` (resolved); refuse at once when another run has it."""
    import fcntl

    path = lock_path(target)
    created = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # never through a symlink planted at its name (it would truncate its target)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(path, flags, 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.ELOOP, "not a regular file", str(path))
        except OSError as exc:  # read-only, special (/proc) or full filesystem; no rights
            for p in created:
                with contextlib.suppress(OSError):
                    p.rmdir()
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink, or a FIFO / device
                raise KernelAtlasError(
                    f"{path} (where kernelatlas locks --out {target.name}) is a symlink or "
                    "not a regular file, so not kernelatlas's lock: remove it and run again"
                ) from None
            raise KernelAtlasError(
                f"--out {target}: kernelatlas cannot write in {target.parent} "
                f"({(exc.strerror or str(exc)).lower()}): choose a folder you can write to"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                holder = path.read_text().strip() or "?"
            except OSError:
                holder = "?"
            raise KernelAtlasError(
                f"another kernelatlas run (pid {holder}) is writing {target}: wait for it to "
                "finish, or choose another --out"
            ) from None
        try:  # the file we locked must still be the one at `path` (a finished run unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        for p in created:  # parents made for an output that was never written: removed
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty


@dataclass
class Staging:
    """A new state of an output being built; :meth:`publish` swaps it in.

    Attributes
    ----------
    out : the output folder, resolved.
    path : the staging folder (a marked hidden sibling of ``out``).
    keep : sub-folders carried over from the previous state and kept by a failed run so
        that the next one resumes (e.g. ``bank``).
    keep_previous : the previous ``out`` holds what kernelatlas did not write (replaced
        with ``force``): it is moved aside, not deleted.
    kept : where the previous ``out`` went, once published with ``keep_previous``.
    """

    out: Path
    path: Path
    keep: tuple[str, ...] = ()
    keep_previous: bool = False
    published: bool = field(default=False, init=False)
    kept: Path | None = field(default=None, init=False)

    def publish(self) -> None:
        """Make the staging folder the output (atomic on Linux; a folder kept aside first);
        never after a ^C, even one Python dropped (:func:`kernelatlas.interrupts.check`)."""
        check_interrupt()
        self.kept = publish_dir(self.path, self.out, keep_previous=self.keep_previous)
        self.published = True
        if self.kept is not None:
            warnings.warn(
                f"--force: the folder that was at {self.out} is kept, unchanged, at "
                f"{self.kept} (kernelatlas deletes only what it wrote)",
                stacklevel=1,
            )

    def _has_new_work(self) -> bool:
        """Whether a kept sub-folder holds files that the previous state does not."""
        for name in self.keep:
            sub = self.path / name
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name == MARKER:
                    continue
                try:
                    prev = (self.out / name / f.name).stat()
                    now = f.stat()
                except OSError:
                    return True
                if (prev.st_dev, prev.st_ino) != (now.st_dev, now.st_ino):
                    return True
        return False

    def discard(self) -> None:
        """After a failure: delete the staging folder, or keep only its resumable parts."""
        if not self.path.is_dir():
            return
        if self.keep and self._has_new_work():
            for p in self.path.iterdir():
                if p.name not in self.keep and p.name != MARKER:
                    _remove(p)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _needs_keeping(target: Path, kind: str) -> bool:
    """Whether replacing ``target`` would delete what kernelatlas did not write there: a
    folder that is not kernelatlas's of ``kind``, or one holding a user's file."""
    if not target.is_dir() or not _has_content(target):
        return False
    return not is_kernelatlas_dir(target, kind) or _foreign(target, kind) is not None


def _prepare_staging(
    target: Path, kind: str, keep: Sequence[str], *, keep_previous: bool = False
) -> Staging:
    staging = staging_path(target)
    if staging.is_symlink() or (staging.exists() and read_marker(staging) is None):
        raise KernelAtlasError(
            f"{staging} exists and is not kernelatlas's: move it away and run again"
        )
    if staging.is_dir():  # left by a killed or failed run: keep its resumable parts only
        for p in staging.iterdir():
            if p.name not in keep and p.name != MARKER:
                _remove(p)
    mark_dir(staging, kind)
    ours = is_kernelatlas_dir(target, kind)  # only kernelatlas's own parts are reused
    subs = _CONTENTS.get(kind, (frozenset(), {}))[1]
    for name in keep:  # reuse the previous state's parts (hard links: no copy, no mutation)
        old, new = target / name, staging / name
        for f in new.glob(".*.tmp"):  # a killed writer's temporary file
            f.unlink(missing_ok=True)
        if not ours or not old.is_dir() or old.is_symlink():
            continue
        new.mkdir(exist_ok=True)
        for f in old.iterdir():
            dst = new / f.name
            mine = f.name == MARKER or _own_file(f, subs.get(name, ()))
            if mine and f.is_file() and not f.is_symlink() and not dst.exists():
                try:
                    os.link(f, dst)
                except OSError:
                    shutil.copy2(f, dst)
    return Staging(target, staging, tuple(keep), keep_previous)


@contextlib.contextmanager
def replacing(
    out: str | os.PathLike[str],
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool = False,
    keep: Sequence[str] = (),
) -> Iterator[Staging]:
    """Check and lock ``out``, and yield a :class:`Staging` to build its new state in.

    Call :meth:`Staging.publish` at the end of the block; if the block raises (or does not
    publish), the staging folder is removed, or only its resumable ``keep`` parts stay.
    The previous ``out`` is untouched until the publish; with ``force``, a previous ``out``
    that holds anything kernelatlas did not write is then moved aside, not deleted
    (:attr:`Staging.kept`).
    """
    target = check_out(out, kind=kind, inputs=inputs, force=force, replace=True)
    with output_lock(target):
        recover_dir(target)
        # checked again under the lock: another run may have published meanwhile
        target = check_out(target, kind=kind, inputs=inputs, force=force, replace=True)
        keep_previous = force and _needs_keeping(target, kind)
        stage = _prepare_staging(target, kind, keep, keep_previous=keep_previous)
        try:
            yield stage
        finally:
            if not stage.published:
                stage.discard()


@contextlib.contextmanager
def appending(
    out: str | os.PathLike[str],
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike[str]] = (),
    force: bool | None = None,
) -> Iterator[Path]:
    """Check, lock and mark folder ``out`` that the run adds to (a kernel bank, a benchmark);
    yield it.

    ``force`` (None: the command has no ``--force``) lets the run write into a folder that
    is not kernelatlas's, beside its files; such a folder is not marked (it is the user's).
    A folder the run created and left empty is removed.
    """
    checks = dict(kind=kind, inputs=list(inputs), force=bool(force), forceable=force is not None)
    target = check_out(out, replace=False, **checks)
    with output_lock(target):
        target = check_out(target, replace=False, **checks)  # again, under the lock
        created = not target.exists()
        if created or not _has_content(target):
            mark_dir(target, kind)
            write_marker(target, kind)  # an empty folder becomes this kind's
        elif is_kernelatlas_dir(target, kind):
            mark_dir(target, kind)  # a 0.1.0 output gets its marker
        try:
            yield target
        finally:
            if created and not any(p.name != MARKER for p in target.iterdir()):
                remove_owned(target)  # nothing was written: leave no empty folder behind
