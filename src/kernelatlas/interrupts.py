"""A ^C is never lost: once SIGINT arrives, no output is published and the command exits 130.

Python's own handler raises KeyboardInterrupt wherever the main thread is; raised inside a
weakref callback or a ``__del__`` (matplotlib's garbage collection), the exception is
dropped ("Exception ignored in ...") and the run went on to publish its output and exit 0.
:func:`installed` records every SIGINT as well; :func:`check` raises it again where it
matters (before an output is swapped in, :meth:`kernelatlas.outputs.Staging.publish`), and
the CLI ends with exit 130 when one came.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["installed", "check"]

_SEEN = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    _SEEN.set()
    raise KeyboardInterrupt


def _unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # recorded by the handler: check() raises it where it counts
        previous(unraisable)

    return hook


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Record SIGINT (in the main thread; elsewhere nothing changes) for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SEEN.clear()
    old_handler, old_hook = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
    sys.unraisablehook = _unraisable(old_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_handler)
        sys.unraisablehook = old_hook


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT came (even one Python dropped)."""
    if _SEEN.is_set():
        raise KeyboardInterrupt
