"""Reader: raw kernel arrays (.npy / .npz), loaded with ``allow_pickle=False``.

An array of shape ``[N, kh, kw]`` (or ``[N, 1, kh, kw]``) is one layer; ``channel`` is the
index along the first axis. A ``.npz`` holds one layer per array, in archive order, named
after the array. Stride and dilation are unknown (0).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import FormatError, UnsafeFileError
from .base import LayerKernels

__all__ = ["read_arrays"]


def _layer(name: str, arr: np.ndarray, idx: int) -> LayerKernels | None:
    if arr.dtype == object:
        raise UnsafeFileError(f"{name}: object arrays need pickle; save plain float arrays")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise FormatError(
            f"{name}: expected numeric kernels [N,kh,kw] or [N,1,kh,kw], got "
            f"{arr.dtype} {list(arr.shape)}; reshape the array"
        )
    if arr.shape[1:] == (1, 1):
        return None
    return LayerKernels(
        layer=name,
        layer_index=idx,
        weights=np.ascontiguousarray(arr, np.float32),
        dtype=arr.dtype.name,
    )


def read_arrays(path: Path, *, fold_bn: bool = False) -> tuple[list[LayerKernels], int]:
    """Kernels of a .npy (one layer) or .npz (one layer per array)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                items = [(k, loaded[k]) for k in loaded.files]
        else:
            items = [(path.stem, loaded)]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsafeFileError(f"{path}: refused, the array needs pickle to load") from None
        raise FormatError(f"{path}: truncated or corrupt numpy file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: truncated or corrupt numpy file ({exc})") from None
    layers: list[LayerKernels] = []
    skipped = 0
    for name, arr in items:
        lk = _layer(name, arr, len(layers))
        if lk is None:
            skipped += 1
        else:
            layers.append(lk)
    return layers, skipped
