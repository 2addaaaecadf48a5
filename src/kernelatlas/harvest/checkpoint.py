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
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FormatError, KernelAtlasError, UnsafeFileError
from .base import LayerKernels

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
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = re.search(r"GLOBAL\s+([\w.]+)", msg, re.IGNORECASE)
        if found:
            raise UnsafeFileError(
                f"{path}: refused, loading it would run code ({found.group(1)}); if you trust "
                "it, load it yourself and pass the nn.Module or its state_dict"
            ) from None
        raise FormatError(
            f"{path}: corrupt or not a PyTorch checkpoint ({_first_line(msg)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise FormatError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({_first_line(str(exc))}); "
            "download it again"
        ) from None
    found = _find_state_dict(obj)
    if found is None:
        return {}, ""
    return found


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:160] if msg.strip() else "no detail"


def kernels_from_state_dict(
    state: Mapping[str, Any], *, order: str = "dict"
) -> tuple[list[LayerKernels], int, tuple[str, ...]]:
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
    skipped = 0
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
            continue
        if (kh, kw) == (1, 1):
            skipped += 1
            continue
        dtype = str(w.dtype).removeprefix("torch.")
        arr = w.float().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float32)
        layers.append(
            LayerKernels(
                layer=name.removesuffix(".weight"),
                layer_index=len(layers),
                weights=np.ascontiguousarray(arr.reshape(c, kh, kw), np.float32),
                dtype=dtype,
            )
        )
    return layers, skipped, tuple(notes)


def _floating(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.is_floating_point()
    return np.issubdtype(v.dtype, np.floating)


def read_checkpoint(
    path: Path, *, fold_bn: bool = False
) -> tuple[list[LayerKernels], int, tuple[str, ...]]:
    """Depthwise layers of a PyTorch checkpoint file."""
    if fold_bn:
        raise KernelAtlasError(
            f"{path}: fold_bn needs the architecture, which a checkpoint does not hold; build "
            "the model, load the weights and harvest the nn.Module (or drop --fold-bn)"
        )
    state, where = load_state_dict(path)
    layers, skipped, notes = kernels_from_state_dict(state)
    if where:
        notes = (f"weights nested under {where!r}", *notes)
    return layers, skipped, notes
