"""The ``kernelatlas`` command line: a thin layer over the public API.

Each stage's commands live in one module here that exposes ``register(subparsers)``.
``main`` turns every failure into one line on stderr (``kernelatlas: error: ...``) and a
non-zero exit, never a traceback: kernelatlas's own errors, bad options and operating-system
errors (read-only or full disk, permissions, symlink loops...) exit 2, running out of
memory exits 2, an unexpected exception (a bug) exits 3. ``KERNELATLAS_DEBUG=1`` shows the
traceback instead. Warnings are printed as one ``kernelatlas: warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..errors import KernelAtlasError, did_you_mean
from ..interrupts import check as check_interrupt
from ..interrupts import installed, received

__all__ = ["main", "run", "build_parser", "error_line", "EXIT_ERROR", "EXIT_BUG"]

#: Exit code of a failure the user can act on; of an unexpected one (a bug).
EXIT_ERROR, EXIT_BUG = 2, 3

# Modules that add sub-commands; a module that is not there yet is skipped.
COMMAND_MODULES: tuple[str, ...] = (
    "kernelatlas.cli.harvest_cmd",
    "kernelatlas.cli.analyze_cmd",
    "kernelatlas.cli.autoencoder_cmd",
    "kernelatlas.cli.train_cmd",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is in ``--help``).

    Options are never abbreviated: argparse's prefix matching read ``--seed 3`` as
    ``--seeds 3`` (three seeds, not seed 3); a prefix is refused with the close names.
    """

    _argv: list[str] = []  # the command line being parsed (for the required-option hint)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            # a misspelt required option (--ou for --out) is what to name, not the absence
            for given in self._unknown_options(self._argv):
                hint = self._option_hint(given)
                if hint:
                    message = f"unrecognized arguments: {given}{hint}"
                    break
        self.exit(EXIT_ERROR, f"kernelatlas: error: {message} (see `{self.prog} --help`)\n")

    def _unknown_options(self, tokens: Sequence[str]) -> list[str]:
        known = {o for a in self._actions for o in a.option_strings}
        out = []
        for tok in tokens:
            if tok == "--":
                break
            if tok.startswith("-") and len(tok) > 1 and tok.split("=")[0] not in known:
                out.append(tok.split("=")[0])
        return out

    def _option_hint(self, given: str) -> str:
        """``"; did you mean --x?"`` for an unknown option: the options it abbreviates, or
        those spelt closest; ``""`` when none is close."""
        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        longer = [o for o in options if o.startswith(given)]  # an abbreviation
        if longer:
            return f"; did you mean {' or '.join(longer[:3])}?"
        return did_you_mean(given, options, cutoff=0.75)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        """As argparse's, but unknown options are refused by the sub-command that got them,
        with the close options of that sub-command (``--methd``: did you mean --method?)."""
        _Parser._argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self._command_parser(ns)
            hint = ""
            for extra in extras:
                if extra.startswith("-"):
                    hint = sub._option_hint(extra.split("=")[0])
                    if hint:
                        break
            sub.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """As argparse's, with the close choices named (``anlyze``: did you mean analyze?;
        ``--null gausian``: did you mean gaussian?)."""
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        hint = did_you_mean(str(value), names)
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r} (choose from {', '.join(names)}){hint}"
        )

    def _command_parser(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the (innermost) sub-command ``ns`` chose, e.g. ``autoencoder
        train``'s (this one when there is none)."""
        parser: argparse.ArgumentParser = self
        while True:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    chosen = getattr(ns, action.dest, None)
                    if chosen in action.choices:
                        parser = action.choices[chosen]
                        break
            else:
                return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kernelatlas",
        description="Map trained depthwise convolution kernels onto a calibrated atlas.",
    )
    parser.add_argument("--version", action="version", version=f"kernelatlas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


# errno -> what happened, and what to do
_OS_ERRORS: dict[int, str] = {
    errno.EROFS: "read-only file system: write somewhere writable (--out)",
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere (--out)",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere (--out)",
    errno.EFBIG: "file too large for this file system or for the file-size limit (ulimit -f)",
    errno.EACCES: "permission denied: check the permissions, or use another path",
    errno.EPERM: "operation not permitted: check the permissions, or use another path",
    errno.ELOOP: "too many levels of symbolic links: fix the symlink",
    errno.ENAMETOOLONG: "file name too long: use a shorter path",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENOMEM: "out of memory: use fewer or smaller sources, or a smaller --batch-size",
    errno.EIO: "input/output error: the disk or the network file system failed",
    errno.ENOTEMPTY: "folder not empty",
    errno.EXDEV: "cannot move across file systems",
    errno.EEXIST: "is in the way (a file where a folder is needed?): move it or use another path",
}
# errnos of a folder kernelatlas cannot write
_UNWRITABLE = frozenset(
    {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EEXIST,
     errno.ENOTDIR}
)  # fmt: skip


_BY_TEXT = {  # OSErrors without an errno (pyarrow's), recognised by their text
    "no space left": errno.ENOSPC,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
    "file too large": errno.EFBIG,
    "disk quota": errno.EDQUOT,
}


def _moved_by(path: str) -> str | None:
    """The variable that moves the kernelatlas cache ``path`` is in (or on the way to):
    ``KERNELATLAS_CALIBRATIONS`` inside the calibrations, else ``KERNELATLAS_CACHE``."""
    from ..calibration import calibration_dir
    from ..harvest.cache import cache_dir

    try:
        p = Path(os.path.abspath(path))
        folders = [(Path(os.path.abspath(d)), var) for d, var in (
            (calibration_dir(), "KERNELATLAS_CALIBRATIONS"), (cache_dir(), "KERNELATLAS_CACHE"),
        )]  # fmt: skip
        inside = [(len(d.parts), var) for d, var in folders if p == d or d in p.parents]
        if inside:
            return max(inside)[1]  # the innermost folder holding it
        above = [(len(d.parts), var) for d, var in folders if p in d.parents]
        return min(above)[1] if above else None  # the outermost folder under it
    except (OSError, ValueError, RuntimeError):
        return None


def _os_error_line(exc: OSError) -> str:
    code = exc.errno
    text = str(exc)
    if code is None:
        code = next((c for t, c in _BY_TEXT.items() if t in text.lower()), None)
    what = _OS_ERRORS.get(code) if code is not None else None
    where = exc.filename if exc.filename is not None else None
    if what is None:
        what = exc.strerror or text or type(exc).__name__
    var = _moved_by(str(where)) if where and code in _UNWRITABLE else None
    if var is not None:  # the weight or calibration cache, not --out
        what = f"{what.split(':')[0]}: kernelatlas keeps its cache there; set {var} to a folder you can write"
    return f"{where}: {what}" if where else what


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line (without the ``kernelatlas: error:`` prefix) and exit code for ``exc``."""
    if isinstance(exc, KernelAtlasError):
        return str(exc), exc.exit_code
    if isinstance(exc, MemoryError):
        return (
            "out of memory: use fewer or smaller sources, a smaller --batch-size or --n-null, "
            "or a lower KERNELATLAS_MAX_SOURCE_BYTES",
            EXIT_ERROR,
        )
    if isinstance(exc, OSError):
        return _os_error_line(exc), EXIT_ERROR
    rust = re.search(r"\(os error (\d+)\)", str(exc))
    if rust:  # an I/O error of a Rust library (safetensors' full disk): std::io::Error's text
        code = int(rust.group(1))
        return _os_error_line(OSError(code, os.strerror(code))), EXIT_ERROR
    detail = str(exc).strip().splitlines()
    return (
        f"unexpected {type(exc).__name__}: {detail[0][:200] if detail else 'no detail'} "
        "(a kernelatlas bug: please report it with the command; KERNELATLAS_DEBUG=1 shows "
        "the traceback)",
        EXIT_BUG,
    )


def _one_line(text: str) -> str:
    from ..errors import one_line

    return one_line(text)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _show_warning(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
    """kernelatlas's own warnings as one line each; the libraries' (torch, timm...) only
    with ``KERNELATLAS_DEBUG=1``."""
    ours = os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)
    if ours or os.environ.get("KERNELATLAS_DEBUG", "") not in ("", "0"):
        print(f"kernelatlas: warning: {_one_line(message)}", file=sys.stderr)


#: Temporary folders this process made for itself (removed at exit).
_TEMP_DIRS: list[str] = []


def _writable_dir(path: str) -> bool:
    """Whether folder ``path`` is writable or can be made (its nearest existing ancestor is a
    writable folder); creates nothing."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        p = os.path.dirname(p)
    return os.path.isdir(p) and os.access(p, os.W_OK)


def use_writable_matplotlib_dir() -> None:
    """Give matplotlib a temporary config and cache folder (``MPLCONFIGDIR``, removed at exit)
    when its own, under a read-only or broken home, cannot be written: it would print its
    own multi-line warning on every run instead."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = os.path.expanduser("~")
    wanted = [
        os.path.join(os.environ.get(var) or os.path.join(home, sub), "matplotlib")
        for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))
    ]
    if all(_writable_dir(d) for d in wanted):
        return
    import atexit
    import shutil
    import tempfile

    with contextlib.suppress(OSError):
        tmp = tempfile.mkdtemp(prefix="kernelatlas-matplotlib-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _TEMP_DIRS.append(tmp)  # run() removes it itself after a ^C (no atexit there)
        os.environ["MPLCONFIGDIR"] = tmp


#: Exit codes of a run stopped by SIGINT / SIGTERM (128 + the signal, as a shell reports).
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM


def _stopped() -> int:
    """Say why the run stopped (one line) and return its exit code."""
    if received() == signal.SIGTERM:
        print("kernelatlas: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    print("kernelatlas: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("KERNELATLAS_DEBUG", "") not in ("", "0")
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with installed():
            use_writable_matplotlib_dir()
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return EXIT_ERROR
            code = int(args.func(args) or 0)
            check_interrupt()  # a ^C that Python dropped (in a __del__) still is one
            return code
    except KeyboardInterrupt:
        return _stopped()
    except BrokenPipeError:  # `kernelatlas sources | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 1
    except Exception as exc:
        if received() is not None:  # a ^C a library turned into its own error (matplotlib's
            return _stopped()  # ValueError in a draw)
        if debug:
            raise
        line, code = error_line(exc)
        print(f"kernelatlas: error: {_one_line(line)}", file=sys.stderr)
        return code
    finally:
        warnings.showwarning = previous


def run() -> NoReturn:
    """The ``kernelatlas`` program: :func:`main`, then exit with its code. After a ^C (130)
    or a SIGTERM (143) the process ends at once, once its output is flushed: threads still
    in native code (a harvest, a closing cluster) could crash the interpreter's finalisation
    (SIGSEGV, seen after a ^C on a Dask run), turning "interrupted" into a crash."""
    code = main()
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
            import shutil

            for tmp in _TEMP_DIRS:
                shutil.rmtree(tmp, ignore_errors=True)
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
