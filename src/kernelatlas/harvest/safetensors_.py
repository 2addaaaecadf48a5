"""Reader: safetensors files (no code execution by design).

safetensors stores its tensors sorted by name, so model order is rebuilt with a
numeric-aware sort (``blocks.2`` before ``blocks.10``); the depthwise rule and its caveat
are those of :mod:`kernelatlas.harvest.checkpoint`. Only depthwise-shaped tensors
(``[C, 1, kh, kw]``) are read; the other 4-D tensors stand in as shape-only meta tensors
(the stem rule needs their position, not their values). Each tensor read is checked
against :func:`kernelatlas.limits.max_tensor_bytes` first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from ..limits import check_tensor
from .checkpoint import kernels_from_state_dict
from .formats import ReadResult, register_format

__all__ = ["read_safetensors"]

_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@register_format(
    "safetensors",
    extensions=(".safetensors",),
    sniff=lambda head, ext: len(head) >= 9 and head[8:9] == b"{" and ext in ("", ".safetensors"),
    description="safetensors state dict (no architecture: depthwise decided from shapes)",
)
def read_safetensors(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a safetensors file."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {}
            for k in f.keys():
                sl = f.get_slice(k)
                shape, dtype = list(sl.get_shape()), str(sl.get_dtype())
                if len(shape) != 4 or dtype not in _FLOATING:
                    continue
                if shape[1] == 1 and shape[0] > 1:
                    check_tensor(f"{path}: {k!r}", shape, _ITEMSIZE.get(dtype, 8))
                    state[k] = f.get_tensor(k)
                else:  # only its place matters (stem rule): no data read
                    state[k] = torch.empty(shape, dtype=torch.float32, device="meta")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{path}: truncated or corrupt safetensors file ({msg})") from None
    return kernels_from_state_dict(state, order="natural")
