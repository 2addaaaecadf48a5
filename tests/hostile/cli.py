"""Run the ``kernelatlas`` command line in a child process and report what it did.

``run_cli(args)`` forks this (already warm) test process and runs
``kernelatlas.cli.main(args)`` in the child, exactly as the console script does
(``sys.exit(main())``; an uncaught exception prints its traceback, as the interpreter
would), with fresh warning filters and its own stdout/stderr files. The parent waits
with a deadline (a hang is killed and reported) and reads the child's peak RSS from
``wait4``. Forking instead of starting ``python -m kernelatlas`` saves the 1-2 s of
importing torch per case; :func:`run_exe` runs the real executable for the few cases
that check it too.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CliRun", "run_cli", "run_exe", "rss_mb", "DEADLINE_S"]

#: A case that runs longer than this is a hang (killed; the test fails).
DEADLINE_S = 60.0


@dataclass(frozen=True)
class CliRun:
    """Exit code, output and cost of one command.

    ``peak_rss_mb`` is the child's peak resident set (``wait4``), which includes what it
    shares with this process; ``grown_mb`` is the part above the child's RSS when the
    command started (what the command itself made resident).
    """

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float
    grown_mb: float

    @property
    def lines(self) -> list[str]:
        """The non-empty stderr lines."""
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def one_line_error(self) -> str:
        """Assert the command failed with one ``kernelatlas: error:`` line and no traceback;
        return that line."""
        assert self.code != 0, f"{self.args}: exit 0, stderr {self.stderr!r}"
        assert "Traceback" not in self.stderr, self.stderr
        assert len(self.lines) == 1, f"{self.args}: {self.lines}"
        assert self.lines[0].startswith("kernelatlas: error: "), self.lines[0]
        return self.lines[0]


_WARM = (
    "kernelatlas.cli",
    "kernelatlas.cli.harvest_cmd",
    "kernelatlas.cli.analyze_cmd",
    "kernelatlas.cli.autoencoder_cmd",
    "kernelatlas.pipeline",
    "kernelatlas.outputs",
    "kernelatlas.harvest.api",
    "kernelatlas.report.compare",
    "kernelatlas.autoencoder.model",
)


def _warm() -> None:
    """Import what every command imports, once, in this process (the children inherit it)."""
    import importlib

    for name in _WARM:
        importlib.import_module(name)
    from kernelatlas.harvest.formats import list_formats

    list_formats()  # every reader module


def rss_mb() -> float:
    """This process's resident set now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_cli(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    setup: Callable[[], None] | None = None,
    deadline: float = DEADLINE_S,
) -> CliRun:
    """Run ``kernelatlas ARGS`` in a forked child (see the module docstring).

    ``setup`` runs in the child before the command (resource limits, dropping root...).
    """
    args = tuple(str(a) for a in args)
    _warm()
    with tempfile.TemporaryDirectory(prefix="ka-cli-") as tmp:
        out_f, err_f, rss_f = Path(tmp, "stdout"), Path(tmp, "stderr"), Path(tmp, "rss")
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                for fd, path in ((1, out_f), (2, err_f)):
                    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(f, fd)
                    os.close(f)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                signal.signal(signal.SIGINT, signal.default_int_handler)
                import warnings

                warnings.resetwarnings()  # a fresh interpreter's filters, not pytest's
                warnings.simplefilter("default")
                if cwd is not None:
                    os.chdir(cwd)
                os.environ.update(env or {})
                import torch

                torch.set_num_threads(1)
                from kernelatlas.cli import main

                rss_f.write_text(f"{rss_mb()}")  # before setup(), which may drop root
                if setup is not None:
                    setup()
                sys.argv = ["kernelatlas", *args]
                try:
                    code = main(list(args))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(int(code) & 0xFF)
        status, usage = _wait(pid, deadline)
        seconds = time.perf_counter() - t0
        peak = usage.ru_maxrss / 1024 if usage is not None else float("nan")
        base = float(rss_f.read_text()) if rss_f.exists() else float("nan")
        return CliRun(
            args,
            status,
            out_f.read_text(errors="replace"),
            err_f.read_text(errors="replace"),
            seconds,
            peak,
            peak - base,
        )


def _wait(pid: int, deadline: float) -> tuple[int, resource.struct_rusage | None]:
    end = time.monotonic() + deadline
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            raise AssertionError(f"kernelatlas hung: killed after {deadline:.0f} s")
        time.sleep(0.01)


def run_exe(args: Sequence[str], *, cwd: str | os.PathLike[str] | None = None) -> CliRun:
    """Run the real ``python -m kernelatlas ARGS`` (a fresh interpreter)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kernelatlas", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    seconds = time.perf_counter() - t0
    return CliRun(
        tuple(map(str, args)),
        proc.returncode,
        proc.stdout,
        proc.stderr,
        seconds,
        *[float("nan")] * 2,
    )
