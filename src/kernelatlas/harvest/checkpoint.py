"""Reader: PyTorch checkpoints (.pt / .pth / .bin), loaded with ``weights_only=True`` only.

Without the architecture, a depthwise weight is recognised by its shape: a 4-D floating
tensor ``[C, 1, kh, kw]`` with ``C > 1``. Caveat: the first convolution of a model for
grayscale images has the same shape. Rule: the first 4-D tensor of the state dict (in
model order) is the stem convolution that sees the image, so when it has that shape it is
skipped, and the skip is recorded in ``HarvestResult.notes``. A model that really starts
with a depthwise convolution loses that one layer: harvest its ``nn.Module`` instead.
Stride, dilation and the following batch norm are unknown here (stride = dilation = 0);
``fold_bn`` needs the architecture.
"""

from __future__ import annotations

import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FormatError, UnsafeFileError
from ..limits import check_tensor, max_tensor_bytes
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["load_state_dict", "read_checkpoint", "kernels_from_state_dict", "natural_key"]

#: Keys under which training scripts nest the weights, in the order they are tried.
NEST_KEYS: tuple[str, ...] = (
    "state_dict",
    "model",
    "model_state_dict",
    "module",
    "net",
    "network",
    "params",
    "model_ema",
    "state_dict_ema",
    "ema",
)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor | np.ndarray)


def _find_state_dict(obj: Any, path: str = "", depth: int = 0) -> tuple[dict, str] | None:
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
    if any(v.ndim == 4 for v in tensors.values()):
        return tensors, path
    ordered = [k for k in NEST_KEYS if k in obj] + [k for k in obj if k not in NEST_KEYS]
    for key in ordered:
        found = _find_state_dict(obj[key], f"{path}/{key}" if path else str(key), depth + 1)
        if found is not None:
            return found
    return None


def load_state_dict(path: Path) -> tuple[dict[str, Any], str]:
    """Load a checkpoint safely; return its (possibly nested) state dict and where it was."""
    zipped = _is_zip(path)
    seen = [] if zipped else _check_legacy_sizes(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = re.search(r"GLOBAL\s+([\w.]+)", msg, re.IGNORECASE)
        name = found.group(1) if found else _unsafe_global(seen)
        if name:
            raise UnsafeFileError(
                f"{path}: refused, loading it would run code ({name}); if you trust "
                "it, load it yourself and pass the nn.Module or its state_dict"
            ) from None
        raise FormatError(
            f"{path}: corrupt or not a PyTorch checkpoint ({_first_line(msg)})"
        ) from None
    except (MemoryError, RecursionError):
        raise FormatError(
            f"{path}: corrupt PyTorch checkpoint (its pickle declares absurd sizes or nesting); "
            "download it again"
        ) from None
    except Exception as exc:  # torch.load on a corrupt file raises anything (KeyError, ...)
        raise FormatError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({type(exc).__name__}: "
            f"{_first_line(str(exc))}); download it again"
        ) from None
    found = _find_state_dict(obj)
    if found is None:
        return {}, ""
    return found


_ITEMSIZE = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
    "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16,
}  # fmt: skip


class _Stub:
    """Stands for every global of a scanned pickle: nothing real is ever looked up or run."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub(self.name)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _SizeScanner(pickle._Unpickler):  # pure Python: a dict memo (no huge memo index)
    """Walks a legacy torch pickle and records the storage sizes it declares."""

    def __init__(self, file: Any, seen: list[str]) -> None:
        super().__init__(file)
        self.size = len(file.getbuffer())
        self.storages: list[tuple[str, int]] = []
        self.seen = seen

    def find_class(self, module: str, name: str) -> Any:
        self.seen.append(f"{module}.{name}")
        return _Stub(name)

    def _load_bytearray8(self) -> None:
        # the stock opcode allocates the declared length before reading: bound it first
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self.size:
            raise pickle.UnpicklingError("BYTEARRAY8 longer than the file")
        self.append(bytearray(self.read(n)))

    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _load_bytearray8}

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind = getattr(pid[1], "name", "")
            self.storages.append((kind, int(pid[4])))
        return _Stub("storage")


def _check_legacy_sizes(path: Path) -> list[str]:
    """Refuse a legacy (non-zip) checkpoint whose pickle declares storages larger than the
    file or than the per-tensor limit, before torch allocates them. Returns the globals the
    pickle names (nothing is looked up or run)."""
    import io

    seen: list[str] = []
    size = path.stat().st_size
    if size > max_tensor_bytes() * 64:
        return seen  # too big to scan in memory; torch reads it as it is
    data = io.BytesIO(path.read_bytes())
    try:
        for _ in range(4):  # magic number, protocol, sys info, then the object
            scanner = _SizeScanner(data, seen)
            scanner.load()
    except Exception:  # not a well-formed legacy checkpoint: torch.load says why
        return seen
    for kind, numel in scanner.storages:
        item = _ITEMSIZE.get(kind.removesuffix("Storage"), 8)
        check_tensor(f"{path}: storage of {numel} x {kind}", [numel], item, available=size)
    return seen


def _unsafe_global(names: list[str]) -> str | None:
    """The first global outside torch / collections / numpy (those that could run code)."""
    safe = ("torch.", "collections.", "numpy.", "_codecs.encode")
    return next((n for n in names if not n.startswith(safe)), None)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:160] if msg.strip() else "no detail"


def kernels_from_state_dict(state: Mapping[str, Any], *, order: str = "dict") -> ReadResult:
    """Depthwise-shaped weights of a state dict (see the module docstring for the rule).

    Parameters
    ----------
    state : name -> tensor or array.
    order : ``'dict'`` (insertion order, as ``state_dict()`` writes it) or ``'natural'``
        (numeric-aware sort of the names; for formats that sort their keys).
    """
    names = [k for k, v in state.items() if _is_tensor(v)]
    if order == "natural":
        names.sort(key=natural_key)
    notes: list[str] = []
    four_d = [k for k in names if state[k].ndim == 4 and _floating(state[k])]
    layers: list[LayerKernels] = []
    skipped = {"1x1": 0, "stem": 0}
    for pos, name in enumerate(four_d):
        w = state[name]
        c, one, kh, kw = (int(s) for s in w.shape)
        if one != 1 or c < 2:
            continue
        if pos == 0:
            notes.append(
                f"skipped {name} {list(w.shape)}: the first convolution (a stem on a "
                "1-channel image has the depthwise shape)"
            )
            skipped["stem"] += 1
            continue
        if (kh, kw) == (1, 1):
            skipped["1x1"] += 1
            continue
        dtype = str(w.dtype).removeprefix("torch.")
        itemsize = w.element_size() if isinstance(w, torch.Tensor) else w.dtype.itemsize
        check_tensor(repr(name), w.shape, itemsize)
        try:
            if isinstance(w, torch.Tensor):
                arr = (w if w.layout == torch.strided else w.to_dense()).float().numpy()
            else:
                arr = np.asarray(w, np.float32)
        except Exception as exc:  # e.g. a tensor whose view runs past its storage
            raise FormatError(
                f"{name!r}: unreadable tensor ({type(exc).__name__}: {_first_line(str(exc))}); "
                "the checkpoint is corrupt"
            ) from None
        layers.append(
            LayerKernels(
                layer=name.removesuffix(".weight"),
                layer_index=len(layers),
                weights=np.ascontiguousarray(arr.reshape(c, kh, kw), np.float32),
                dtype=dtype,
            )
        )
    return ReadResult(layers, {k: v for k, v in skipped.items() if v}, tuple(notes))


def _floating(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.is_floating_point()
    return np.issubdtype(v.dtype, np.floating)


@register_format(
    "checkpoint",
    extensions=(".pt", ".pth", ".bin", ".ckpt"),
    # a zip (torch.save) or a pickle (legacy torch.save); .keras/.npz zips are claimed earlier
    sniff=lambda head, ext: head[:2] == b"PK" or head[:1] == b"\x80",
    description="PyTorch checkpoint / state dict (torch.save, zip or legacy), read without pickle code",
)
def read_checkpoint(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a PyTorch checkpoint file."""
    state, where = load_state_dict(path)
    res = kernels_from_state_dict(state)
    if where:
        return ReadResult(res.layers, res.skipped, (f"weights nested under {where!r}", *res.notes))
    return res
