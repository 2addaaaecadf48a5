"""A ^C is never lost: once SIGINT (or SIGTERM) arrives, no output is published and the
command exits 130 (143).

Python's own handler raises KeyboardInterrupt wherever the main thread is; raised inside a
weakref callback or a ``__del__`` (matplotlib's garbage collection), the exception is
dropped ("Exception ignored in ...") and the run went on to publish its output and exit 0.
:func:`installed` records every SIGINT as well; :func:`check` raises it again where it
matters (before an output is swapped in, :meth:`kernelatlas.outputs.Staging.publish`), and
the CLI ends with exit 130 when one came. SIGTERM (``timeout``, ``kill``, a batch
scheduler's end of time) is taken the same way, so a terminated run cleans up after itself
as an interrupted one does (it was killed on the spot, its staging left for the next run);
:func:`received` tells which came first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["installed", "check", "received", "SIGNALS"]

#: The signals :func:`installed` turns into KeyboardInterrupt (and records).
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_FIRST: list[int] = []  # the first signal number received in the block (empty: none)


def _on_signal(signum: int, frame: Any) -> None:
    if not _FIRST:
        _FIRST.append(int(signum))
    raise KeyboardInterrupt


def _unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # recorded by the handler: check() raises it where it counts
        previous(unraisable)

    return hook


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Record SIGINT and SIGTERM (:data:`SIGNALS`; in the main thread, elsewhere nothing
    changes) for the block, each raised as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _FIRST.clear()
    old = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    old_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(old_hook)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.unraisablehook = old_hook


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT or SIGTERM came (even one Python dropped)."""
    if _FIRST:
        raise KeyboardInterrupt


def received() -> int | None:
    """The number of the first of :data:`SIGNALS` that came in the block, or None."""
    return _FIRST[0] if _FIRST else None
