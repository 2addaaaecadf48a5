"""Kernels from whatever the user holds: an array, a kernel bank, or a path to either."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import FormatError, KernelAtlasError
from ..normalize import as_kernel_array

__all__ = ["kernels_from", "as_bank", "bank_sizes"]


def as_bank(source: object):  # -> kernelatlas.bank.KernelBank
    """A :class:`~kernelatlas.bank.KernelBank` from a bank or a path to one."""
    from ..bank import KernelBank

    if isinstance(source, KernelBank):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_dir():
            raise FormatError(
                f"{path} is not a kernel bank directory: build one with `kernelatlas harvest`"
                " or pass a .npy array of kernels [N,kh,kw]"
            )
        return KernelBank(path)
    raise KernelAtlasError(
        f"expected kernels [N,kh,kw], a KernelBank or a path, got {type(source).__name__}"
    )


def bank_sizes(bank: object) -> list[tuple[int, int]]:
    """Kernel sizes ``(kh, kw)`` present in a bank, most kernels first (1x1 left out)."""
    b = as_bank(bank)
    table = b.read(columns=["kh", "kw"])
    counts = Counter(zip(table["kh"].tolist(), table["kw"].tolist(), strict=True))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(int(h), int(w)) for (h, w), _ in ranked if int(h) * int(w) > 1]


def kernels_from(source: object, kernel_size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Kernels ``[N, kh, kw]`` float32 from an array, a ``.npy`` file, or a kernel bank.

    For a bank, ``kernel_size`` picks the size (default: the size with the most kernels).
    """
    from .model import parse_kernel_size

    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".npy":
        from ..harvest.arrays import _read_npy  # the harvester's reader: sizes checked first
        from ..harvest.formats import check_regular_file

        if os.path.lexists(source):
            check_regular_file(source)  # a FIFO, a device, a folder: one line, nothing read
        try:
            with open(source, "rb") as fp:
                arr = _read_npy(fp, str(source), os.fstat(fp.fileno()).st_size)
        except KernelAtlasError:
            raise  # a declared size over the limits, object arrays: the reader's own line
        except Exception as exc:  # missing, truncated, not a .npy
            raise FormatError(f"{source} is not a readable .npy array of kernels ({exc})") from None
        if arr.ndim == 2:  # one kernel for the API, never a bank of them
            raise KernelAtlasError(
                f"{source} holds a 2-D array {list(arr.shape)}; expected kernels [N,kh,kw]: "
                f"reshape it (e.g. arr.reshape({arr.shape[0]}, kh, kw))"
            )
        source = arr
    if isinstance(source, (np.ndarray, list, tuple)):
        arr = as_kernel_array(source).astype(np.float32, copy=False)
        if kernel_size is not None and arr.shape[1:] != parse_kernel_size(kernel_size):
            kh, kw = parse_kernel_size(kernel_size)
            raise KernelAtlasError(
                f"asked for {kh}x{kw} kernels but the array holds {arr.shape[1]}x{arr.shape[2]}"
            )
        return arr
    bank = as_bank(source)
    if kernel_size is None:
        sizes = bank_sizes(bank)
        if not sizes:
            raise KernelAtlasError(f"{bank} holds no kernels: harvest some sources into it first")
        kh, kw = sizes[0]
    else:
        kh, kw = parse_kernel_size(kernel_size)
    out = bank.kernels(kh, kw)
    if out.shape[0] == 0:
        raise KernelAtlasError(f"{bank} holds no {kh}x{kw} kernels: pick another --kernel-size")
    return out
