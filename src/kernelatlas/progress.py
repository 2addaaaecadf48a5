"""Progress of a long job: a tqdm bar per stage on a terminal, plain lines in a log, or nothing.

One :class:`Progress` per job (``analyze`` makes one; ``quiet`` silences it). Each stage of
the job is a :meth:`Progress.stage` with its own total and unit, so a bar never sits at 0
while something else runs::

    progress = Progress(quiet=False)
    with progress.stage("calibrate 3x3", total=20_000, unit="kernel", counts="score"):
        atlas.fit()                    # the scorer calls progress.advance(n, "score")

Code deep inside a stage (the atlas scorer, the autoencoder's training loop, the fits)
reports work with the module-level :func:`advance`, naming what it counted; the active stage
counts only the kind of work it declared (``counts``), so nested work is never counted twice.
:func:`advance` is a no-op when no stage is active (library use, worker processes), and it
is thread-safe (the scorer runs batches on threads).

Off a terminal (``stream.isatty()`` false: logs, CI, pipes) a stage writes plain lines, no
carriage returns: one when it starts, at most one every ``interval`` seconds while it runs,
and one when it ends.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["Progress", "Stage", "Stages", "advance", "active_stage", "say_warnings_once"]

_LOCK = threading.RLock()
_ACTIVE: list[Stage] = []


def _num(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def _count(n: float, unit: str) -> str:
    """``n`` and its unit: ``1 figure``, ``3 figures``, ``40,000 kernels``."""
    return f"{_num(n)} {unit}" if n == 1 else f"{_num(n)} {unit}s"


class Stage:
    """One stage of a job with a total (see :class:`Progress`); use it as a context manager."""

    def __init__(
        self,
        progress: Progress,
        desc: str,
        total: float,
        unit: str,
        counts: str | None,
    ) -> None:
        self.progress = progress
        self.desc = desc
        self.total = max(float(total), 0.0)
        self.unit = unit
        self.counts = counts
        self.n = 0.0
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._last_line = self._t0

    # -------------------------------------------------------------------- display
    def _open(self) -> None:
        p = self.progress
        if p.quiet:
            return
        if p.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total or None,
                desc=self.desc,
                unit=self.unit,
                file=p.stream,
                dynamic_ncols=True,
                leave=True,
                unit_scale=False,
            )
        else:
            p._line(f"{self.desc}: {_count(self.total, self.unit)}" if self.total else self.desc)

    def _show(self) -> None:
        p = self.progress
        if p.quiet:
            return
        if self._bar is not None:
            self._bar.n = min(self.n, self.total) if self.total else self.n
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_line >= p.interval and self.total:
            self._last_line = now
            pct = 100.0 * min(self.n / self.total, 1.0)
            p._line(
                f"{self.desc}: {pct:.0f}% ({_num(min(self.n, self.total))}/"
                f"{_count(self.total, self.unit)}, {now - self._t0:.0f} s)"
            )

    def _close(self, ok: bool) -> None:
        p = self.progress
        if p.quiet:
            return
        elapsed = time.monotonic() - self._t0
        if self._bar is not None:
            if ok and self.total:
                self._bar.n = self.total
            self._bar.refresh()
            self._bar.close()
            return
        if ok and not (self.n or self.total):
            p._line(f"{self.desc}: done ({elapsed:.1f} s)")
        elif ok:
            p._line(
                f"{self.desc}: done ({_count(self.n or self.total, self.unit)}, {elapsed:.1f} s)"
            )
        else:
            p._line(f"{self.desc}: stopped after {elapsed:.1f} s")

    # -------------------------------------------------------------------- counting
    def update(self, n: float = 1) -> None:
        """Add ``n`` units of work done."""
        with _LOCK:
            self.n += n
            self._show()

    def reach(self, n: float) -> None:
        """Set the work done to at least ``n`` (never moves backwards)."""
        with _LOCK:
            if n > self.n:
                self.n = float(n)
                self._show()

    def set_description(self, desc: str) -> None:
        with _LOCK:
            self.desc = desc
            if self._bar is not None:
                self._bar.set_description(desc, refresh=True)

    def skipped(self, why: str) -> None:
        """The stage's counted work was not needed (e.g. a result from the cache): it ends
        as ``DESC (WHY): done (T s)``, without the units counted meanwhile."""
        with _LOCK:
            self.n = self.total = 0.0
            self.counts = None
            if self._bar is not None:
                self._bar.total, self._bar.n = None, 0
            self.set_description(f"{self.desc} ({why})")

    def __enter__(self) -> Stage:
        with _LOCK:
            self._open()
            _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            self._close(exc_type is None)


class Progress:
    """The progress display of one job.

    Parameters
    ----------
    quiet : show nothing (the job's results are printed by the caller, not here).
    stream : where to write (default ``sys.stderr``).
    tty : draw tqdm bars (default: ``stream.isatty()``); otherwise plain lines.
    interval : seconds between two plain lines of one stage.
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        interval: float = 10.0,
    ) -> None:
        self.quiet = bool(quiet)
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = float(interval)

    def stage(
        self, desc: str, total: float, unit: str = "item", *, counts: str | None = None
    ) -> Stage:
        """A new stage; ``counts`` names the :func:`advance` kind it counts (None: only
        its own :meth:`Stage.update` calls)."""
        return Stage(self, desc, total, unit, counts)

    def stages(self) -> Stages:
        """Consecutive stages switched with :meth:`Stages.set_description` (one at a time)."""
        return Stages(self)

    def note(self, text: str) -> None:
        """One line of information (shown unless quiet)."""
        if not self.quiet:
            self._line(text)

    def warn(self, text: str) -> None:
        """One line the user should see even with ``quiet`` (it is not progress)."""
        self._line(text)

    def _line(self, text: str) -> None:
        from .errors import one_line

        text = one_line(text)  # a name's control characters never reach the terminal raw
        if self.tty:
            from tqdm.auto import tqdm

            tqdm.write(f"kernelatlas: {text}", file=self.stream)
        else:
            print(f"kernelatlas: {text}", file=self.stream, flush=True)


class Stages:
    """Consecutive stages of one job (see :meth:`Progress.stages`), a drop-in for one tqdm
    bar whose description changes: ``set_description`` ends the current stage and starts
    the next with its own total; ``update(n)`` adds ``n`` done to the current stage's own
    count (work reported with :func:`advance` moves it in between, never past it)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.current: Stage | None = None
        self._done = 0.0

    def set_description(
        self, desc: str, total: float = 0, unit: str = "item", counts: str | None = None
    ) -> Stage:
        self.close()
        self._done = 0.0
        self.current = self.progress.stage(desc, total, unit, counts=counts).__enter__()
        return self.current

    def update(self, n: float = 1) -> None:
        self._done += n
        if self.current is not None:
            self.current.reach(self._done)

    def close(self) -> None:
        if self.current is not None:
            exc = sys.exc_info()
            self.current.__exit__(exc[0], exc[1], exc[2])
            self.current = None


def active_stage() -> Stage | None:
    """The innermost active stage, or None."""
    with _LOCK:
        return _ACTIVE[-1] if _ACTIVE else None


def advance(n: float = 1, kind: str = "item") -> None:
    """Report ``n`` units of work of ``kind`` to the innermost active stage counting it.

    A no-op when no stage is active or the active stage counts another kind.
    """
    with _LOCK:
        if _ACTIVE and _ACTIVE[-1].counts == kind:
            _ACTIVE[-1].update(n)


@contextmanager
def say_warnings_once(
    progress: Progress | None, what: str, *, categories: tuple[type[Warning], ...] = (Warning,)
) -> Iterator[list[str]]:
    """Catch library warnings raised while doing ``what``; say each distinct one once.

    Each distinct message is written as one kernelatlas line (with how many times it came),
    e.g. ``kernelatlas: note while drawing figures: No artists with labels found to put in
    legend. (2 times)``, shown even when ``quiet``. Yields the list of lines said.
    """
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield said
    counts: Counter[str] = Counter()
    for w in caught:
        if not issubclass(w.category, categories):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        counts[text or w.category.__name__] += 1
    for msg, k in counts.items():
        line = f"note while {what}: {msg}" + (f" ({k} times)" if k > 1 else "")
        said.append(line)
        if progress is not None:
            progress.warn(line)
