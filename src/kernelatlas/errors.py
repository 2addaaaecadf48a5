"""The one error type users see: a one-line message that says what to do."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

# C0 and C1 control characters and DEL: a file or member name holding ESC sequences would
# recolour, clear or retitle the terminal its message is printed on
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: object) -> str:
    """``text`` as one terminal line: whitespace runs (newlines included) become one space,
    and every other control character is shown escaped (``\x1b``), never sent raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", " ".join(str(text).split()))


def did_you_mean(
    value: str, names: Sequence[str], *, n: int = 2, cutoff: float = 0.6, sep: str = " or "
) -> str:
    """``"; did you mean a or b?"`` for the names spelt closest to ``value``
    (:func:`difflib.get_close_matches`), or ``""``: the hint of a misspelt command, option,
    choice, scheme, dataset or arch (sources: :func:`kernelatlas.harvest.zoo.did_you_mean`)."""
    close = difflib.get_close_matches(value, list(names), n=n, cutoff=cutoff)
    return f"; did you mean {sep.join(close)}?" if close else ""


class KernelAtlasError(Exception):
    """A user-facing error (bad input, bad option). The CLI prints it on one line, exit 2."""

    exit_code = 2


class UnsafeFileError(KernelAtlasError):
    """A file that would need code execution to load (e.g. a pickle with globals)."""


class FormatError(KernelAtlasError):
    """A file that is missing, unreadable, truncated, corrupt or of an unknown format."""


class TensorTooLargeError(KernelAtlasError):
    """A file declares a tensor larger than the per-tensor ceiling (see kernelatlas.limits)."""
