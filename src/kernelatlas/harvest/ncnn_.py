"""Reader: ncnn models (``model.param`` text + ``model.bin``; parsed as text and raw bytes).

The ``.param`` lists layers (``type name n_in n_out blobs... key=value...``); the headerless
``.bin`` beside it is the concatenation of every layer's weights, in layer order, each as
the layer's ``load_model`` reads it. So to find a layer's weights kernelatlas must know
the size of every weight before it: :data:`_LOADS` has the rule of each of the 34 built-in
layer types that load weights (from ncnn's ``src/layer/*.cpp``; :data:`_NO_WEIGHTS` lists
the 76 that load none); a layer of a type it does not know
(a custom layer) ends the walk, and the depthwise layers after it are counted under
``skipped``, never guessed.

Depthwise = a ``ConvolutionDepthWise`` with ``group > 1`` and one input channel a group
(``weight_data_size == num_output * kernel_h * kernel_w``): ``num_output`` kernels, channel
``g * mult + m``. A weight buffer starts with a flag: float32 (0, or ``0x0002C056``),
float16 (``0x01306B47``), int8 (``0x000D4B38``, dequantised with the layer's
``weight_data_int8_scales`` as ``q / scale``; without scales kept in quantised units and
noted), or a 256-entry float table and uint8 indexes (any other flag). ``bn_folded`` is
False: ncnn's converters fold batch norms into the weights, but the file does not say.

Safety: sizes from the ``.param`` are checked against :mod:`kernelatlas.limits` and every
byte range against the ``.bin``'s size before it is read; only flags and the depthwise
weights are read. The ``.param`` is bounded (:data:`MAX_PARAM_BYTES`, :data:`MAX_LAYERS`).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ..limits import TensorTooLargeError, check_tensor
from .base import LayerKernels, read_or_say
from .formats import ReadResult, register_format

__all__ = ["read_ncnn", "MAGIC", "MAX_PARAM_BYTES", "MAX_LAYERS", "NOT_CONSTANT", "AFTER_UNKNOWN"]

#: First line of every text ``.param``.
MAGIC = "7767517"
#: Largest ``.param`` read (bytes), and most layers in one.
MAX_PARAM_BYTES = 64 * 2**20
MAX_LAYERS = 1_000_000
#: Skip reasons: a depthwise layer with run-time weights (``dynamic_weight``), or one after a
#: layer whose weight size kernelatlas does not know.
NOT_CONSTANT = "weights not constant"
AFTER_UNKNOWN = "after a layer of unknown type"
_TAG_F16, _TAG_I8, _TAG_F32_SCALED = 0x01306B47, 0x000D4B38, 0x0002C056

Params = dict[int, Any]


@dataclass(frozen=True)
class _Layer:
    type: str
    name: str
    params: Params


def _int(p: Params, key: int, default: int = 0) -> int:
    v = p.get(key, default)
    try:
        return int(v) if not isinstance(v, list) else default
    except (TypeError, ValueError):
        raise FormatError(f"param {key}={str(v)[:20]!r} is not an integer") from None


def _value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # a string value (modern ncnn)


def _parse(text: str, where: str) -> list[_Layer]:
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or lines[0] != MAGIC:
        raise FormatError(f"{where}: does not start with ncnn's magic {MAGIC}; not an ncnn .param")
    try:
        n_layers, _n_blobs = (int(v) for v in lines[1].split()[:2])
    except (IndexError, ValueError):
        raise FormatError(f"{where}: line 2 is not 'layer_count blob_count'; corrupt") from None
    if not 0 <= n_layers <= MAX_LAYERS:
        raise TensorTooLargeError(f"{where}: declares {n_layers:,} layers (limit {MAX_LAYERS:,})")
    if len(lines) - 2 < n_layers:
        raise FormatError(
            f"{where}: declares {n_layers:,} layers but holds {len(lines) - 2:,}; truncated"
        )
    out = []
    for ln in lines[2 : 2 + n_layers]:
        parts = ln.split()
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
            if n_in < 0 or n_out < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise FormatError(f"{where}: layer line {ln[:60]!r} is corrupt") from None
        params: Params = {}
        for kv in parts[4 + n_in + n_out :]:
            key, sep, val = kv.partition("=")
            try:
                k = int(key)
            except ValueError:
                raise FormatError(
                    f"{where}: {parts[1][:40]}: param {kv[:40]!r} is corrupt"
                ) from None
            if not sep:
                raise FormatError(f"{where}: {parts[1][:40]}: param {kv[:40]!r} has no value")
            if k <= -23300:  # an array: "count,v1,v2,..."
                params[-k - 23300] = [_value(v) for v in val.split(",")[1:]]
            elif "," in val:  # modern array form
                params[k] = [_value(v) for v in val.split(",")]
            else:
                params[k] = _value(val)
        out.append(_Layer(parts[0], parts[1], params))
    return out


# -- what each layer type loads from the .bin, in order: (element count, type) where type 0
# is a flagged weight buffer and type 1 raw float32 (ncnn's ModelBin::load(w, type)) -----------
Loads = list[tuple[int, int]]


def _conv(p: Params, *, group_scales: bool = False, dyn: int = 19, int8: bool = True) -> Loads:
    if _int(p, dyn):
        return []
    out = [(_int(p, 6), 0)]
    if _int(p, 5):
        out.append((_int(p, 0), 1))
    term = _int(p, 8) if int8 else 0
    if term:
        if group_scales:  # ConvolutionDepthWise
            if term in (1, 101):
                out += [(_int(p, 7, 1), 1), (1, 1)]
            elif term in (2, 102):
                out += [(1, 1), (1, 1)]
        else:
            out += [(_int(p, 0), 1), (1, 1)]
        if term > 100:
            out.append((1, 1))
    return out


def _affine(count_key: int, affine_key: int) -> Callable[[Params], Loads]:
    return lambda p: [(_int(p, count_key), 1)] * 2 if _int(p, affine_key, 1) else []


def _rnn(gates: int) -> Callable[[Params], Loads]:
    def loads(p: Params) -> Loads:
        dirs = 2 if _int(p, 2) == 2 else 1
        out, hidden = _int(p, 0), _int(p, 3, _int(p, 0)) if gates == 4 else _int(p, 0)
        size = _int(p, 1) // max(dirs * hidden * gates, 1)
        bias_rows = 4 if gates == 3 else gates
        res = [(size * hidden * gates * dirs, 0), (hidden * bias_rows * dirs, 0),
               (out * hidden * gates * dirs, 0)]  # fmt: skip
        if gates == 4 and out != hidden:
            res.append((hidden * out * dirs, 0))
        if _int(p, 8):
            res += [(hidden * gates * dirs, 1)] * 2
        return res

    return loads


def _memorydata(p: Params) -> Loads:
    dims = [_int(p, k) for k in (0, 1, 11, 2)]
    n = math.prod(d for d in dims if d) if any(dims) else 0
    return [(n, _int(p, 21, 1))] if n else []


def _gemm(p: Params) -> Loads | None:
    if _int(p, 18):  # quantised Gemm: a layout kernelatlas does not size
        return None
    m, n, k = _int(p, 7), _int(p, 8), _int(p, 9)
    out = []
    if _int(p, 4) == 1:
        out.append((m * k, 0))
    if _int(p, 5) == 1:
        out.append((n * k, 0))
    c = _int(p, 10)
    if _int(p, 6) == 1 and c != -1:
        out.append(({0: 1, 1: m, 2: m, 3: m * n, 4: n}.get(c, 0), 0))
    return out


def _mha(p: Params) -> Loads | None:
    if _int(p, 18):
        return None
    e = _int(p, 0)
    q = _int(p, 2) // max(e, 1)
    kd, vd = _int(p, 3, e), _int(p, 4, e)
    return [(e * q, 0), (e, 1), (e * kd, 0), (e, 1), (e * vd, 0), (e, 1), (q * e, 0), (q, 1)]


_CONV_TYPES = ("Convolution", "Convolution1D", "Convolution3D", "ConvolutionDepthWise1D",
               "ConvolutionDepthWise3D", "DeformableConv2D")  # fmt: skip
_LOADS: dict[str, Callable[[Params], Loads | None]] = {
    "Convolution": _conv,
    "ConvolutionDepthWise": lambda p: _conv(p, group_scales=True),
    **{t: (lambda p: _conv(p, int8=False)) for t in _CONV_TYPES[1:]},
    **{
        t: (lambda p: _conv(p, dyn=28, int8=False))
        for t in (
            "Deconvolution",
            "DeconvolutionDepthWise",
            "Deconvolution1D",
            "DeconvolutionDepthWise1D",
        )
    },  # fmt: skip
    **{
        t: (lambda p: _conv(p, dyn=-1, int8=False))
        for t in ("Deconvolution3D", "DeconvolutionDepthWise3D")
    },  # fmt: skip
    "InnerProduct": lambda p: (
        [(_int(p, 2), 0)]
        + [(_int(p, 0), 1)] * bool(_int(p, 1))
        + ([(_int(p, 0), 1), (1, 1)] if _int(p, 8) else [])
    ),
    "Embed": lambda p: (
        [(_int(p, 3), 0)] + [(_int(p, 0), 1)] * bool(_int(p, 2)) + [(1, 1)] * bool(_int(p, 18))
    ),
    "BatchNorm": lambda p: [(_int(p, 0), 1)] * 4,
    "Scale": lambda p: [] if _int(p, 0) == -233 else [(_int(p, 0), 1)] * (1 + bool(_int(p, 1))),
    "PReLU": lambda p: [(_int(p, 0), 1)],
    "Bias": lambda p: [(_int(p, 0), 1)],
    "Normalize": lambda p: [(_int(p, 3), 1)],
    "Padding": lambda p: [(_int(p, 6), 1)] if _int(p, 6) else [],
    "Quantize": lambda p: [(_int(p, 0, 1), 1)],
    "Dequantize": lambda p: [(_int(p, 0, 1), 1)] + [(_int(p, 1), 1)] * bool(_int(p, 1)),
    "Requantize": lambda p: (
        [(_int(p, 0, 1), 1), (_int(p, 1, 1), 1)] + [(_int(p, 2), 1)] * bool(_int(p, 2))
    ),
    "InstanceNorm": _affine(0, 2),
    "GroupNorm": _affine(1, 3),
    "LayerNorm": _affine(0, 2),
    "RMSNorm": lambda p: [(_int(p, 0), 1)] if _int(p, 2, 1) else [],
    "MemoryData": _memorydata,
    "RNN": _rnn(1),
    "LSTM": _rnn(4),
    "GRU": _rnn(3),
    "Gemm": _gemm,
    "MultiHeadAttention": _mha,
}
#: ncnn's built-in layer types that load nothing from the .bin.
_NO_WEIGHTS = frozenset(
    "AbsVal ArgMax BNLL Concat Crop Dropout Eltwise ELU Exp Flatten Input Log LRN MVN Pooling "
    "Power Proposal Reduction ReLU Reshape ROIPooling Sigmoid Slice Softmax Split SPP TanH "
    "Threshold Tile BinaryOp UnaryOp Squeeze ExpandDims Permute PriorBox DetectionOutput Interp "
    "ShuffleChannel Clip Reorg YoloDetectionOutput Yolov3DetectionOutput PSROIPooling ROIAlign "
    "Packing Cast HardSigmoid SELU HardSwish Noop PixelShuffle DeepCopy Mish StatisticsPooling "
    "Swish Softplus GELU Pooling1D Pooling3D MatMul Einsum GLU Fold Unfold GridSample "
    "CumulativeSum CopyTo Erf Diag CELU Shrink Spectrogram InverseSpectrogram Flip SDPA "
    "RotaryEmbed".split()
)


class _Bin:
    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = path, where
        try:
            st = os.stat(path)
        except OSError:
            raise FormatError(
                f"{where}: its weights file {path.name} is missing; an ncnn model is "
                "model.param + model.bin: copy the .bin beside the .param"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{path}: not a regular file (a directory, device or FIFO)")
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.f.fileno()).st_size

    def read(self, offset: int, n: int, what: str) -> bytes:
        if offset + n > self.size:
            raise FormatError(
                f"{what}: its weights (bytes {offset:,}..{offset + n:,}) run past the end of "
                f"{self.path.name} ({self.size:,} bytes); the .bin is truncated or not this "
                "model's"
            )
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise FormatError(f"{self.path}: shorter than when it was opened; read it again")
        return data


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _buffer(b: _Bin, offset: int, count: int, kind: int, what: str) -> tuple[int, int, int]:
    """``(flag, data offset, end)`` of one weight buffer (flag -1: raw float32, no flag)."""
    if kind == 1:
        return -1, offset, offset + 4 * count
    flag = int(np.frombuffer(b.read(offset, 4, what), "<u4")[0])
    data = offset + 4
    if flag == _TAG_F16:
        return flag, data, data + _align4(2 * count)
    if flag == _TAG_I8:
        return flag, data, data + _align4(count)
    if flag == _TAG_F32_SCALED or flag == 0:
        return flag, data, data + 4 * count
    return flag, data, data + 1024 + _align4(count)  # 256-entry table, uint8 indexes


def _decode(b: _Bin, flag: int, data: int, count: int, what: str) -> tuple[np.ndarray, str]:
    if flag == _TAG_F16:
        check_tensor(what, [count], 2, available=b.size - data)
        return np.frombuffer(b.read(data, 2 * count, what), "<f2").astype(np.float32), "float16"
    if flag == _TAG_I8:
        check_tensor(what, [count], 1, available=b.size - data)
        return np.frombuffer(b.read(data, count, what), "i1").astype(np.float32), "int8"
    if flag in (-1, 0, _TAG_F32_SCALED):
        check_tensor(what, [count], 4, available=b.size - data)
        return np.frombuffer(b.read(data, 4 * count, what), "<f4").astype(np.float32), "float32"
    check_tensor(what, [count], 1, available=b.size - data - 1024)
    table = np.frombuffer(b.read(data, 1024, what), "<f4")
    index = np.frombuffer(b.read(data + 1024, count, what), "u1")
    return table[index].astype(np.float32), "uint8"


def _read(path: Path) -> ReadResult:
    where = str(path)
    size = path.stat().st_size
    if size > MAX_PARAM_BYTES:
        raise TensorTooLargeError(
            f"{where}: a {size:,}-byte .param; over the {MAX_PARAM_BYTES:,}-byte limit"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(
            f"{where}: not a text .param (a binary .param.bin from ncnn2mem is not read); "
            "pass the text model.param"
        ) from None
    layers = _parse(text, where)
    b: _Bin | None = None
    out: list[LayerKernels] = []
    skipped: dict[str, int] = {}
    notes: list[str] = []
    offset = 0
    try:
        for i, layer in enumerate(layers):
            what = f"{where}: {layer.type} {layer.name!r}"
            rule = _LOADS.get(layer.type)
            if rule is None and layer.type in _NO_WEIGHTS:
                continue
            loads = rule(layer.params) if rule is not None else None
            if loads is None:
                rest = sum(lay.type == "ConvolutionDepthWise" for lay in layers[i + 1 :])
                if rest:
                    skipped[AFTER_UNKNOWN] = rest
                    notes.append(
                        f"layer {layer.name!r} of type {layer.type!r}: the size of its weights "
                        f"is not known to kernelatlas, so the {rest} depthwise layers after it "
                        "cannot be located in the .bin"
                    )
                break
            if not loads:
                if layer.type == "ConvolutionDepthWise" and _int(layer.params, 19):
                    skipped[NOT_CONSTANT] = skipped.get(NOT_CONSTANT, 0) + 1
                continue
            b = b or _Bin(path.with_suffix(".bin"), where)
            bufs = []
            for count, kind in loads:
                check_tensor(what, [count], 1, budget=False)
                bufs.append(_buffer(b, offset, count, kind, what))
                offset = bufs[-1][2]
            if offset > b.size:
                b.read(offset, 0, what)  # the one message for weights past the end
            if layer.type == "ConvolutionDepthWise":
                got = _depthwise(b, layer, bufs, what, notes)
                if got == "1x1":
                    skipped["1x1"] = skipped.get("1x1", 0) + 1
                elif got is not None:
                    out.append(LayerKernels(layer.name, len(out), *got))
        else:
            if b is not None and offset != b.size:
                notes.append(
                    f"the layers' weights end at byte {offset:,} of {b.path.name}, which has "
                    f"{b.size:,}: the .bin may not be this .param's (or a layer's weight size "
                    "is not what kernelatlas knows)"
                )
    finally:
        if b is not None:
            b.f.close()
    return ReadResult(out, skipped, tuple(notes))


def _depthwise(
    b: _Bin, layer: _Layer, bufs: list[tuple[int, int, int]], what: str, notes: list[str]
) -> tuple | str | None:
    p = layer.params
    n_out, group = _int(p, 0), _int(p, 7, 1)
    kw = _int(p, 1)
    kh = _int(p, 11, kw)
    size = _int(p, 6)
    if group < 2 or kh < 1 or kw < 1 or n_out % group or size != n_out * kh * kw:
        return None  # grouped with several input channels a group: not depthwise
    if (kh, kw) == (1, 1):
        return "1x1"
    flag, data, _ = bufs[0]
    w, dtype = _decode(b, flag, data, size, what)
    if flag == _TAG_I8:
        term = _int(p, 8)
        scale_buf = 2 if _int(p, 5) else 1
        if term and scale_buf < len(bufs):
            _, s_off, s_end = bufs[scale_buf]
            scales = np.frombuffer(b.read(s_off, s_end - s_off, what), "<f4")
            per = np.repeat(scales, n_out // scales.size) if scales.size in (1, group) else None
            if per is None or per.size != n_out:
                raise FormatError(f"{what}: {scales.size} int8 scales for {group} groups")
            with np.errstate(divide="ignore", invalid="ignore"):
                w = w.reshape(n_out, -1) / per[:, None]
        else:
            notes.append(
                f"{layer.name!r}: int8 weights without scales, kept in quantised units "
                "(shapes exact, magnitudes relative)"
            )
    stride = max(_int(p, 3, 1), _int(p, 13, _int(p, 3, 1)))
    dilation = max(_int(p, 2, 1), _int(p, 12, _int(p, 2, 1)))
    weights = np.ascontiguousarray(np.asarray(w, np.float32).reshape(n_out, kh, kw))
    return weights, stride, dilation, False, dtype


def _sniff(head: bytes, ext: str) -> bool:
    return head.startswith(MAGIC.encode()) and head[len(MAGIC) : len(MAGIC) + 1] in (b"\n", b"\r")


@register_format(
    "ncnn",
    extensions=(".param",),
    sniff=_sniff,
    description="ncnn model (model.param + model.bin beside it)",
    glob_by_content=True,
)
def read_ncnn(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of an ncnn model (its ``.param``; the ``.bin`` beside it)."""
    return read_or_say(Path(path), _read, "ncnn model", "export it again")
