"""Resource limits for reading untrusted model files.

Every reader checks the size a file *declares* for a tensor before it allocates anything:
a tensor larger than the per-tensor ceiling, or larger than the bytes the file actually
holds, is refused with a one-line :class:`~kernelatlas.errors.KernelAtlasError`.

The ceiling is ``KERNELATLAS_MAX_TENSOR_BYTES`` (bytes; suffixes ``K``, ``M``, ``G``, ``T``
in powers of 1024 are accepted, e.g. ``512M``), default :data:`DEFAULT_MAX_TENSOR_BYTES`
(2 GiB, far above any depthwise weight: EfficientNet-B7's largest is under 1 MiB). It
bounds the float32 copy kernelatlas makes of one tensor, so peak memory per reader stays
within a small multiple of it.

The work budget ``KERNELATLAS_MAX_WORK_BYTES`` (default :data:`DEFAULT_MAX_WORK_BYTES`,
512 MiB) sizes the batches that the atlas scores and the null draws stream in
(:func:`rows_per_batch`): a batch of large kernels (a 128x128 kernel has 16,384 taps) holds
fewer rows, so peak memory stays near a small multiple of the budget whatever the kernel
size. Small kernels never reach it: their batches are the fixed sizes they always had.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import FormatError, KernelAtlasError, TensorTooLargeError

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "ENV_MAX_TENSOR_BYTES",
    "DEFAULT_MAX_SOURCE_BYTES",
    "ENV_MAX_SOURCE_BYTES",
    "DEFAULT_MAX_WORK_BYTES",
    "ENV_MAX_WORK_BYTES",
    "TensorTooLargeError",
    "max_tensor_bytes",
    "max_source_bytes",
    "max_work_bytes",
    "rows_per_batch",
    "check_tensor",
    "source_budget",
    "charge",
    "zip_member",
]

#: Default per-tensor ceiling (bytes).
DEFAULT_MAX_TENSOR_BYTES = 2 * 1024**3
#: Environment variable that overrides the ceiling.
ENV_MAX_TENSOR_BYTES = "KERNELATLAS_MAX_TENSOR_BYTES"

#: Default ceiling on everything one source makes kernelatlas materialise (bytes).
DEFAULT_MAX_SOURCE_BYTES = 4 * 1024**3
#: Environment variable that overrides the per-source ceiling.
ENV_MAX_SOURCE_BYTES = "KERNELATLAS_MAX_SOURCE_BYTES"

#: Default memory one streamed batch (atlas scoring, null draws) may use (bytes).
DEFAULT_MAX_WORK_BYTES = 512 * 1024**2
#: Environment variable that overrides the work budget.
ENV_MAX_WORK_BYTES = "KERNELATLAS_MAX_WORK_BYTES"

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size_from_env(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
    if m is None or int(m.group(1)) <= 0:
        raise KernelAtlasError(f"{var}={raw!r} is not a positive size: use bytes or e.g. 512M, 4G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def max_tensor_bytes() -> int:
    """The per-tensor ceiling in bytes (``KERNELATLAS_MAX_TENSOR_BYTES`` or the default)."""
    return _size_from_env(ENV_MAX_TENSOR_BYTES, DEFAULT_MAX_TENSOR_BYTES)


def max_source_bytes() -> int:
    """The per-source ceiling in bytes (``KERNELATLAS_MAX_SOURCE_BYTES`` or the default)."""
    return _size_from_env(ENV_MAX_SOURCE_BYTES, DEFAULT_MAX_SOURCE_BYTES)


def max_work_bytes() -> int:
    """The work budget in bytes (``KERNELATLAS_MAX_WORK_BYTES`` or the default)."""
    return _size_from_env(ENV_MAX_WORK_BYTES, DEFAULT_MAX_WORK_BYTES)


def rows_per_batch(bytes_per_row: int, cap: int, *, parallel: int = 1) -> int:
    """Rows of a streamed batch: ``cap``, or fewer so that ``parallel`` batches of
    ``bytes_per_row`` each fit in :func:`max_work_bytes` (at least one row).

    Examples
    --------
    >>> rows_per_batch(49 * 4, 8192)  # 7x7 float32 rows: the cap
    8192
    >>> rows_per_batch(16384 * 64, 8192) < 8192  # 128x128 rows, 64 bytes a tap
    True
    """
    per = max(int(bytes_per_row), 1) * max(int(parallel), 1)
    return max(1, min(int(cap), max_work_bytes() // per))


class _Budget:
    __slots__ = ("what", "limit", "used")

    def __init__(self, what: str, limit: int) -> None:
        self.what, self.limit, self.used = what, limit, 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("kernelatlas_source_budget", default=None)


@contextmanager
def source_budget(what: str) -> Iterator[None]:
    """Bound the bytes that reading one source may materialise (see :func:`charge`).

    Readers run inside it (``harvest.formats.read_file`` opens one per file); nested uses
    share the outer budget.
    """
    if _BUDGET.get() is not None:
        yield
        return
    token = _BUDGET.set(_Budget(what, max_source_bytes()))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def charge(what: str, nbytes: int) -> None:
    """Count ``nbytes`` that are about to be allocated against the active source budget.

    Call it *before* allocating (decompressing, broadcasting, expanding a view, copying a
    shared initialiser again). Outside :func:`source_budget` it does nothing.

    Raises
    ------
    TensorTooLargeError : the source's total would exceed :func:`max_source_bytes`.
    """
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.used += max(int(nbytes), 0)
    if budget.used > budget.limit:
        raise TensorTooLargeError(
            f"{budget.what}: {what} would bring the memory this source needs to "
            f"{budget.used:,} bytes, over the {budget.limit:,}-byte limit; raise "
            f"{ENV_MAX_SOURCE_BYTES} if you trust the file"
        )


def check_tensor(
    what: str,
    shape: Iterable[object],
    itemsize: int,
    *,
    available: int | None = None,
    out_itemsize: int = 4,
    budget: bool = True,
) -> int:
    """Validate a declared tensor before reading it; return its element count.

    Parameters
    ----------
    what : where the tensor is (file and name), for the message.
    shape : declared dimensions (must be non-negative integers).
    itemsize : bytes per stored element.
    available : bytes the file really holds for it (None: not known yet).
    out_itemsize : bytes per element of the copy kernelatlas makes (float32: 4).
    budget : charge the copy to the per-source budget (:func:`charge`); False for a
        declaration that is checked but not read (yet).

    Raises
    ------
    FormatError : negative/non-integer dimensions, or more bytes declared than available.
    TensorTooLargeError : the stored or the float32 size exceeds :func:`max_tensor_bytes`.
    """
    try:
        dims = [int(d) for d in shape]  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise FormatError(
            f"{what}: tensor shape is not a list of integers; the file is corrupt"
        ) from None
    if any(d < 0 for d in dims):
        raise FormatError(f"{what}: negative dimension in shape {dims}; the file is corrupt")
    numel = math.prod(dims)
    nbytes = numel * int(itemsize)
    limit = max_tensor_bytes()
    if max(nbytes, numel * out_itemsize) > limit:
        raise TensorTooLargeError(
            f"{what}: declares a tensor of shape {dims} ({numel * out_itemsize:,} bytes as "
            f"float32) over the {limit:,}-byte limit; raise {ENV_MAX_TENSOR_BYTES} if you "
            "trust the file"
        )
    if available is not None and nbytes > available:
        raise FormatError(
            f"{what}: shape {dims} needs {nbytes:,} bytes but the file holds {max(available, 0):,}"
            "; the file is truncated or corrupt"
        )
    if budget:
        charge(what, max(nbytes, numel * out_itemsize))
    return numel


def zip_member(zf: Any, name: str, path: Any, cap: int | None = None) -> bytes:
    """Member ``name`` of zip ``zf`` (from file ``path``), charged to the source budget by its
    declared uncompressed size before it is decompressed; over ``cap`` bytes it is refused."""
    info = zf.getinfo(name)
    if cap is not None and info.file_size > cap:
        raise TensorTooLargeError(
            f"{path}: {name} declares {info.file_size:,} bytes uncompressed; over the "
            f"{cap:,}-byte limit"
        )
    charge(f"{name} (uncompressed)", info.file_size)  # before decompressing it
    return zf.read(info)  # zipfile stops at the declared size and checks the CRC
