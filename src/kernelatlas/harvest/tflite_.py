"""Reader: TFLite flatbuffers (parsed with the ``tflite`` package; nothing is executed).

Depthwise = a ``DEPTHWISE_CONV_2D`` op; its input 1 is the kernel ``[1, kh, kw, C*mult]``,
either a constant buffer (fp32, or int8/uint8 with per-tensor or per-channel scales and zero
points) or the output of a ``DEQUANTIZE`` op over a constant (fp16 or int8). TFLite has no
batch-norm op: converters fold it into the kernels, so ``bn_folded`` is True. A tensor's
declared shape is checked against its buffer and :mod:`kernelatlas.limits` before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError
from ..limits import check_tensor
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["read_tflite"]

_NP = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16,
    9: np.int8, 10: np.float64,
}  # fmt: skip


def _tensor_values(model: Any, tensor: Any) -> tuple[np.ndarray, str] | None:
    dtype = _NP.get(tensor.Type())
    buf = model.Buffers(tensor.Buffer())
    if dtype is None or buf is None:
        return None
    if buf.DataLength() == 0:
        size = buf.Size() if hasattr(buf, "Size") else 0
        if not size:
            return None
        raise FormatError("TFLite models with external (>2 GB) buffers are not supported")
    shape = tuple(int(s) for s in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    name = tensor.Name().decode(errors="replace") if tensor.Name() else "?"
    numel = check_tensor(f"tensor {name!r}", shape, np.dtype(dtype).itemsize,
                         available=buf.DataLength())  # fmt: skip
    arr = buf.DataAsNumpy().view(dtype)
    if arr.size != numel:
        raise FormatError(f"tensor of shape {shape} has {arr.size} values: the file is corrupt")
    arr = arr.reshape(shape)
    q = tensor.Quantization()
    if q is not None and q.ScaleLength() and np.issubdtype(arr.dtype, np.integer):
        scale = q.ScaleAsNumpy().astype(np.float32)
        zero = (
            q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.zeros_like(scale)
        )
        if scale.size > 1:
            shp = [1] * arr.ndim
            shp[q.QuantizedDimension()] = -1
            scale, zero = scale.reshape(shp), zero.reshape(shp)
        return (arr.astype(np.float32) - zero) * scale, np.dtype(dtype).name
    return arr.astype(np.float32), np.dtype(dtype).name


@register_format(
    "tflite",
    extensions=(".tflite",),
    sniff=lambda head, ext: head[4:8] == b"TFL3",
    extra="tflite",
    can_fold_bn=True,  # TFLite has no batch-norm op: kernels are already folded
    description="TensorFlow Lite flatbuffer (fp32, fp16 behind DEQUANTIZE, int8)",
)
def read_tflite(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a TFLite model (all subgraphs, in op order)."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator as Op

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise FormatError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            codes.append(max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())))
        layers: list[LayerKernels] = []
        skipped = 0
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            # one pass over the ops: the depthwise ones, and DEQUANTIZE outputs -> op
            dequant: dict[int, Any] = {}
            depthwise = []
            for j in range(sg.OperatorsLength()):
                op = sg.Operators(j)
                code = codes[op.OpcodeIndex()]
                if code == Op.DEPTHWISE_CONV_2D:
                    depthwise.append((j, op))
                elif code == Op.DEQUANTIZE:
                    dequant[int(op.Outputs(0))] = op
            for j, op in depthwise:
                widx = int(op.Inputs(1))
                wt = sg.Tensors(widx)
                src = dequant.get(widx)
                if src is not None:
                    got = _tensor_values(model, sg.Tensors(int(src.Inputs(0))))
                else:  # a constant buffer (a weight computed at run time has no data)
                    got = _tensor_values(model, wt)
                if got is None:
                    continue
                w, stored = got
                if w.ndim != 4 or w.shape[0] != 1:
                    raise FormatError(
                        f"{path}: depthwise kernel of shape {w.shape}, expected [1,kh,kw,C]"
                    )
                _, kh, kw, c = w.shape
                if (kh, kw) == (1, 1):
                    skipped += 1
                    continue
                stride, dilation = _options(op)
                name = wt.Name().decode(errors="replace") if wt.Name() else f"op{j}"
                layers.append(
                    LayerKernels(
                        layer=f"{s}/{j}:{name}" if model.SubgraphsLength() > 1 else f"{j}:{name}",
                        layer_index=len(layers),
                        weights=np.ascontiguousarray(np.moveaxis(w[0], -1, 0), np.float32),
                        stride=stride,
                        dilation=dilation,
                        bn_folded=True,
                        dtype=stored,
                    )
                )
    except KernelAtlasError as exc:  # say which file
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except Exception as exc:  # flatbuffer offsets out of range: truncated/corrupt
        raise FormatError(
            f"{path}: truncated or corrupt TFLite file ({type(exc).__name__}); get it again"
        ) from None
    return ReadResult(layers, {"1x1": skipped} if skipped else {})


def _options(op: Any) -> tuple[int, int]:
    from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions

    table = op.BuiltinOptions()
    if table is None:
        return 1, 1
    opt = DepthwiseConv2DOptions()
    opt.Init(table.Bytes, table.Pos)
    return (
        int(max(opt.StrideH(), opt.StrideW())),
        int(max(opt.DilationHFactor(), opt.DilationWFactor())),
    )
