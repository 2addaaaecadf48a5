"""The one interface every reader returns: depthwise layers with their provenance.

A reader turns one model (a file or an ``nn.Module``) into a list of
:class:`LayerKernels`; :class:`HarvestResult` adds the source and model names and turns
the layers into one Arrow table in the bank schema (one row per single-channel kernel).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..bank import BANK_COLUMNS, BANK_SCHEMA, FINGERPRINT_KEY, check_column_range
from ..errors import FormatError, KernelAtlasError

__all__ = ["LayerKernels", "HarvestResult", "split_kernels"]


@dataclass(frozen=True)
class LayerKernels:
    """The kernels of one depthwise convolution layer.

    Attributes
    ----------
    layer : str
        Where the layer lives in its model (module path, tensor name, op name).
    layer_index : int
        Order among the kept (non-1x1) depthwise layers of the model, from 0.
    weights : float32 array [C, kh, kw]
        One single-channel kernel per output channel (``C = channels * multiplier``).
    stride, dilation : int
        The larger of the two spatial values; 0 when the format does not say (state dicts,
        raw arrays).
    bn_folded : bool
        True when the kernels include a following batch-norm's scale: folded by kernelatlas
        (``fold_bn=True``) or guaranteed by the format (TFLite has no batch-norm op).
    dtype : str
        The dtype the weights are stored in (``'float16'``, ``'int8'``, ...).
    """

    layer: str
    layer_index: int
    weights: np.ndarray
    stride: int = 0
    dilation: int = 0
    bn_folded: bool = False
    dtype: str = "float32"

    @property
    def shape(self) -> tuple[int, int]:
        """Kernel size ``(kh, kw)``."""
        return int(self.weights.shape[1]), int(self.weights.shape[2])


@dataclass(frozen=True)
class HarvestResult:
    """Everything harvested from one source.

    Attributes
    ----------
    source : str
        The key of the source in a bank (registry name, resolved path, ``timm:NAME``...).
    model : str
        A readable model name.
    format : str
        The reader that read it (``module``, ``checkpoint``, ``safetensors``, ``onnx``,
        ``tflite``, ``keras``, ``numpy``).
    layers : list of LayerKernels
        Kept depthwise layers, in model order.
    skipped : mapping of str to int
        Depthwise layers not kept, by reason (``"1x1"``: nothing spatial to analyse;
        ``"stem"``: a first conv with the depthwise shape...).
    notes : tuple of str
        Caveats the reader met (e.g. a skipped grayscale stem conv).
    fingerprint : mapping or None
        What the kernels were read from, recorded in the bank so that a changed file is
        harvested again (``size``, ``mtime_ns``, ``sha256`` of a file; the registry
        ``sha256`` of a registered source); None for an ``nn.Module`` (its key holds a
        digest of its weights).
    """

    source: str
    model: str
    format: str
    layers: list[LayerKernels] = field(default_factory=list)
    skipped: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] | None = None

    @property
    def skipped_1x1(self) -> int:
        """Depthwise layers with 1x1 kernels, not kept."""
        return int(self.skipped.get("1x1", 0))

    @property
    def n_kernels(self) -> int:
        """Number of single-channel kernels over all layers."""
        return int(sum(lk.weights.shape[0] for lk in self.layers))

    def counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """``{(kh, kw): (layers, kernels)}`` over the kept layers."""
        out: dict[tuple[int, int], list[int]] = {}
        for lk in self.layers:
            c = out.setdefault(lk.shape, [0, 0])
            c[0] += 1
            c[1] += int(lk.weights.shape[0])
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def kernels(self, size: int | tuple[int, int]) -> np.ndarray:
        """All kernels of one size over the kept layers, float32 ``[N, kh, kw]`` in layer order.

        Parameters
        ----------
        size : ``k`` for ``k x k``, or ``(kh, kw)``. A size the model does not have gives
            an empty ``[0, kh, kw]`` array.

        Examples
        --------
        >>> import numpy as np
        >>> res = HarvestResult("x", "x", "numpy", [LayerKernels("l", 0, np.ones((4, 3, 3)))])
        >>> res.kernels(3).shape, res.kernels((5, 5)).shape
        ((4, 3, 3), (0, 5, 5))
        """
        pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
        if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
            raise KernelAtlasError(f"size must be a positive int k or (kh, kw), got {size!r}")
        kh, kw = (int(v) for v in pair)
        parts = [lk.weights for lk in self.layers if lk.shape == (kh, kw)]
        if not parts:
            return np.zeros((0, kh, kw), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def to_table(self) -> pa.Table:
        """One row per single-channel kernel, columns :data:`BANK_COLUMNS`.

        The fingerprint, if any, is in the schema metadata (``bank.FINGERPRINT_KEY``).
        """
        for column, values in (
            ("kh", [lk.shape[0] for lk in self.layers]),
            ("kw", [lk.shape[1] for lk in self.layers]),
            ("stride", [lk.stride for lk in self.layers]),
            ("dilation", [lk.dilation for lk in self.layers]),
            ("channel", [lk.weights.shape[0] for lk in self.layers]),
            ("layer_index", [lk.layer_index for lk in self.layers]),
        ):
            check_column_range(column, values, self.source)
        n_layers = len(self.layers)
        sizes = np.array([lk.weights.shape[0] for lk in self.layers], dtype=np.int64)
        n = int(sizes.sum())
        if n == 0:
            return BANK_SCHEMA.empty_table()

        def per_layer(values: list, dtype: object) -> np.ndarray:
            return np.repeat(np.asarray(values, dtype=dtype), sizes)

        idx = [lk.layer_index for lk in self.layers]
        depth = [lk.layer_index / (n_layers - 1) if n_layers > 1 else 0.0 for lk in self.layers]
        channel = np.arange(n, dtype=np.int32) - per_layer(
            np.concatenate([[0], np.cumsum(sizes)[:-1]]), np.int32
        )
        flats = [
            np.ascontiguousarray(lk.weights, dtype=np.float32).reshape(-1) for lk in self.layers
        ]
        flat = flats[0] if len(flats) == 1 else np.concatenate(flats)  # one layer: no copy
        if flat.size >= 2**31:
            raise KernelAtlasError(
                f"{self.source}: {flat.size} weights in one source exceed a bank file's limit; "
                "harvest it in parts (e.g. as .npy arrays per layer)"
            )
        ksz = per_layer([lk.shape[0] * lk.shape[1] for lk in self.layers], np.int64)
        offsets = np.concatenate([[0], np.cumsum(ksz)]).astype(np.int32)
        nonfinite = np.concatenate(
            [~np.isfinite(lk.weights.reshape(lk.weights.shape[0], -1)).all(1) for lk in self.layers]
        )
        weights = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))

        def strings(values: list[str]) -> pa.Array:
            # dictionary-encode per layer, then decode: avoids one Python str per kernel
            dict_arr = pa.DictionaryArray.from_arrays(
                pa.array(per_layer(list(range(len(values))), np.int32)), pa.array(values)
            )
            return dict_arr.cast(pa.string())

        columns = {
            "source": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([self.source])
            ).cast(pa.string()),
            "model": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([self.model])
            ).cast(pa.string()),
            "format": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([self.format])
            ).cast(pa.string()),
            "layer": strings([lk.layer for lk in self.layers]),
            "layer_index": pa.array(per_layer(idx, np.int32)),
            "depth": pa.array(per_layer(depth, np.float32)),
            "channel": pa.array(channel),
            "kh": pa.array(per_layer([lk.shape[0] for lk in self.layers], np.int16)),
            "kw": pa.array(per_layer([lk.shape[1] for lk in self.layers], np.int16)),
            "stride": pa.array(per_layer([lk.stride for lk in self.layers], np.int16)),
            "dilation": pa.array(per_layer([lk.dilation for lk in self.layers], np.int16)),
            "bn_folded": pa.array(per_layer([lk.bn_folded for lk in self.layers], bool)),
            "dtype": strings([lk.dtype for lk in self.layers]),
            "nonfinite": pa.array(np.asarray(nonfinite, dtype=bool)),
            "weights": weights,
        }
        table = pa.Table.from_arrays([columns[c] for c in BANK_COLUMNS], schema=BANK_SCHEMA)
        if self.fingerprint is not None:
            prints = {self.source: dict(self.fingerprint)}
            table = table.replace_schema_metadata({FINGERPRINT_KEY: json.dumps(prints).encode()})
        return table


def split_kernels(weights: np.ndarray) -> np.ndarray:
    """``[C, 1, kh, kw]`` (PyTorch/ONNX layout) -> contiguous float32 ``[C, kh, kw]``."""
    return np.ascontiguousarray(weights.reshape(weights.shape[0], *weights.shape[-2:]), np.float32)


def read_or_say(path: Any, read: Callable[[Any], Any], what: str, again: str) -> Any:
    """``read(path)``, every failure one line naming ``path``: a :class:`KernelAtlasError`
    gets the path in front (when it has none), and anything else a file's contents can
    raise (a well-formed file whose contents make no sense) is a :class:`FormatError`
    calling it a corrupt ``what``, ending with ``again`` (what to do)."""
    try:
        return read(path)
    except KernelAtlasError as exc:
        msg = " ".join(str(exc).split())
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (MemoryError, RecursionError) as exc:
        raise FormatError(f"{path}: corrupt {what} ({type(exc).__name__})") from None
    except Exception as exc:
        raise FormatError(
            f"{path}: corrupt {what} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); {again}"
        ) from None
