"""Reader: safetensors files (no code execution by design).

safetensors stores its tensors sorted by name, so model order is rebuilt with a
numeric-aware sort (``blocks.2`` before ``blocks.10``); the depthwise rule and its caveat
are those of :mod:`kernelatlas.harvest.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError, KernelAtlasError
from .base import LayerKernels
from .checkpoint import kernels_from_state_dict

__all__ = ["read_safetensors"]


def read_safetensors(
    path: Path, *, fold_bn: bool = False
) -> tuple[list[LayerKernels], int, tuple[str, ...]]:
    """Depthwise layers of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    if fold_bn:
        raise KernelAtlasError(
            f"{path}: fold_bn needs the architecture, which a safetensors file does not hold; "
            "load the weights into the model and harvest the nn.Module (or drop --fold-bn)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            state = {}
            for k in keys:
                if len(f.get_slice(k).get_shape()) == 4:
                    state[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    return kernels_from_state_dict(state, order="natural")
