"""Reader: raw kernel arrays (.npy / .npz), never through pickle.

Each .npy header is parsed and checked (declared shape vs the bytes present, and
:mod:`kernelatlas.limits`) before any allocation; object arrays are refused. An array of
shape ``[N, kh, kw]`` (or ``[N, 1, kh, kw]``) is one layer; ``channel`` is the index along
the first axis. A ``.npz`` holds one layer per array, in archive order, named
after the array. Stride and dilation are unknown (0). A ``.npz`` member is charged to the
source budget by its declared uncompressed size before it is inflated.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import FormatError, KernelAtlasError, UnsafeFileError
from ..limits import charge, check_tensor
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["read_arrays"]


def _layer(name: str, arr: np.ndarray, idx: int, what: str, npz: bool) -> LayerKernels | None:
    """One array as a layer; ``what`` names it in messages (the file, and the member)."""
    if arr.dtype == object:
        raise UnsafeFileError(f"{what}: object arrays need pickle; save plain float arrays")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        whole = (
            " (a .npz holds only kernel stacks: save a state dict with torch.save or "
            "safetensors instead)"
            if npz
            else ""
        )
        tf = arr.ndim == 4 and arr.shape[0] == arr.shape[1] and arr.shape[0] < arr.shape[2]
        fix = (
            "if it is a TensorFlow/Keras depthwise kernel [kh,kw,C,mult], save "
            "a.reshape(kh, kw, -1).transpose(2, 0, 1)"
            if tf
            else "reshape the array"
        )
        raise FormatError(
            f"{what}: expected numeric kernels [N,kh,kw] or [N,1,kh,kw], got "
            f"{arr.dtype} {list(arr.shape)}; {fix}{whole}"
        )
    if arr.shape[1:] == (1, 1):
        return None
    n, kh, kw = arr.shape
    if n == kh and kw > kh and kw > 2 * n:  # [3, 3, 16]: kernels of 3x16, or TF's layout?
        warnings.warn(
            f"{what}: read as {n} kernels of {kh}x{kw}; if it is TensorFlow's [kh,kw,C] "
            f"layout ({kw} kernels of {n}x{kh}), save np.moveaxis(a, -1, 0) instead",
            stacklevel=2,
        )
    return LayerKernels(
        layer=name,
        layer_index=idx,
        weights=np.ascontiguousarray(arr, np.float32),
        dtype=arr.dtype.name,
    )


def _read_npy(fp: BinaryIO, what: str, available: int) -> np.ndarray:
    """One .npy stream, its header checked before any allocation (no pickle, ever)."""
    fmt = np.lib.format
    start = fp.tell()
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fp)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = fmt.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise UnsafeFileError(f"{what}: refused, the array needs pickle to load (object dtype)")
    if dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise FormatError(
            f"{what}: expected numeric kernels, got dtype {dtype}; save a float array"
        )
    numel = check_tensor(what, shape, dtype.itemsize, available=available - (fp.tell() - start))
    data = fp.read(numel * dtype.itemsize)
    if len(data) != numel * dtype.itemsize:
        raise FormatError(f"{what}: truncated array data; save it again")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order)


@register_format(
    "numpy",
    extensions=(".npy", ".npz"),
    sniff=lambda head, ext: head[:6] == b"\x93NUMPY" or (head[:2] == b"PK" and ext == ".npz"),
    description="NumPy .npy (one layer [C,kh,kw] or [C,1,kh,kw]) or .npz (one layer per array)",
)
def read_arrays(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Kernels of a .npy (one layer) or .npz (one layer per array)."""
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            items = []
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    what = f"{path}: member {info.filename!r}"
                    if not info.filename.endswith(".npy"):
                        raise FormatError(f"{what}: not a .npy member; a .npz holds only arrays")
                    # a deflated member is charged by its declared size before inflating;
                    # zipfile stops at that size and checks the CRC
                    charge(f"{what} (uncompressed)", info.file_size)
                    with zf.open(info) as fp:
                        arr = _read_npy(fp, what, info.file_size)
                    items.append((info.filename.removesuffix(".npy"), arr, what))
        else:
            with open(path, "rb") as fp:
                items = [(path.stem, _read_npy(fp, str(path), path.stat().st_size), str(path))]
    except KernelAtlasError:
        raise
    except Exception as exc:  # header syntax, zip structure, CRC, compression method...
        raise FormatError(
            f"{path}: truncated or corrupt numpy file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); save it again"
        ) from None
    layers: list[LayerKernels] = []
    skipped = 0
    for name, arr, what in items:
        lk = _layer(name, arr, len(layers), what, is_zip)
        if lk is None:
            skipped += 1
        else:
            layers.append(lk)
    return ReadResult(layers, {"1x1": skipped} if skipped else {})
