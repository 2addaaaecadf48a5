"""The one error type users see: a one-line message that says what to do."""

from __future__ import annotations


class KernelAtlasError(Exception):
    """A user-facing error (bad input, bad option). The CLI prints it on one line, exit 2."""

    exit_code = 2


class UnsafeFileError(KernelAtlasError):
    """A file that would need code execution to load (e.g. a pickle with globals)."""


class FormatError(KernelAtlasError):
    """A file that is missing, unreadable, truncated, corrupt or of an unknown format."""


class TensorTooLargeError(KernelAtlasError):
    """A file declares a tensor larger than the per-tensor ceiling (see kernelatlas.limits)."""
