"""Reader: safetensors files, parsed by kernelatlas itself (an 8-byte header length, a JSON
header, then the tensor bytes): no code, and no mmap, so a file truncated or rewritten
while it is read is an error rather than a SIGBUS.

Every tensor's offsets, dtype and shape are checked against each other and the file before
anything is read; only the depthwise tensors' bytes are read (with plain reads, copied to
float32). Which tensors are depthwise is decided from the whole set of 4-D shapes, as for a
state dict in a checkpoint (:func:`kernelatlas.harvest.checkpoint.select_depthwise`), so a
``.pt`` and a ``.safetensors`` of one state dict give the same kernels. The file sorts its
names; model order is rebuilt with a numeric-aware sort (``blocks.2`` before ``blocks.10``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..limits import charge, check_tensor
from .checkpoint import ConvEntry, natural_key, select_depthwise
from .formats import ReadResult, register_format
from .torch_pickle import _DTYPES, _decode

__all__ = ["read_safetensors", "read_header"]

_DTYPE = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool",
}  # fmt: skip
#: The format's own bound on the JSON header (100 MB).
MAX_HEADER = 100_000_000


def read_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], int]:
    """``{name: (dtype, shape, begin, end)}`` (byte offsets into the data) and where the data
    starts; every entry checked against the file's size. Raises FormatError (one line)."""

    def bad(why: str) -> FormatError:
        return FormatError(f"{path}: truncated or corrupt safetensors file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise bad("shorter than its 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n > min(size - 8, MAX_HEADER):
            raise bad(f"header of {n:,} bytes in a file of {size:,}")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry {name[:60]!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE:
            raise bad(f"{name[:60]!r} has an unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"{name[:60]!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets)):  # fmt: skip
            raise bad(f"{name[:60]!r} has malformed data offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"{name[:60]!r} lies at bytes {begin:,}-{end:,} of {data_size:,}")
        if math.prod(shape) * _DTYPES[_DTYPE[dtype]].itemsize != end - begin:
            raise bad(f"{name[:60]!r}: shape {shape} does not fit its {end - begin:,} bytes")
        out[name] = (_DTYPE[dtype], tuple(shape), begin, end)
    return out, data_start


@register_format(
    "safetensors",
    extensions=(".safetensors",),
    sniff=lambda head, ext: len(head) >= 9 and head[8:9] == b"{" and ext in ("", ".safetensors"),
    description="safetensors state dict (no architecture: depthwise decided from shapes)",
)
def read_safetensors(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a safetensors file."""
    header, data_start = read_header(path)
    entries = [
        ConvEntry(name, shape, _DTYPES[dtype].floating, dtype, (dtype, begin, end))
        for name, (dtype, shape, begin, end) in sorted(
            header.items(), key=lambda kv: natural_key(kv[0])
        )
    ]

    def load(e: ConvEntry) -> np.ndarray:
        dtype, begin, end = e.ref
        check_tensor(f"{path}: {e.name!r}", e.shape, _DTYPES[dtype].itemsize)
        charge(f"{e.name!r}", end - begin)
        with open(path, "rb") as f:
            f.seek(data_start + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise FormatError(f"{path}: {e.name!r} is truncated; the file changed while read")
        arr = _decode(raw, _DTYPES[dtype], False, 0, math.prod(e.shape))
        return np.asarray(arr, np.float32).reshape(e.shape)

    return select_depthwise(entries, load)
