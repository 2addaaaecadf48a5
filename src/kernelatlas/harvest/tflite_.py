"""Reader: TFLite flatbuffers (parsed here with numpy and ``struct``; nothing is executed).

Depthwise = a ``DEPTHWISE_CONV_2D`` op; its input 1 is the kernel ``[1, kh, kw, C*mult]``,
either a constant buffer (fp32, or int8/uint8 with per-tensor or per-channel scales and zero
points) or the output of ``DEQUANTIZE`` (fp16 or int8) and/or ``DENSIFY`` ops over a
constant; a sparse constant (the converter's sparsity encoding: dense and CSR dimensions,
block maps) is densified here. A weight computed at run time by any other op is counted
under ``skipped``. TFLite has no batch-norm op: converters fold it into the kernels, so
``bn_folded`` is True. A tensor's declared shape is checked against its buffer and
:mod:`kernelatlas.limits` before use.

A MediaPipe Tasks bundle (``.task``: a zip of ``.tflite`` models, possibly nested ``.task``
bundles) is read member by member (format ``tflite_task``), each member charged to the
source budget before it is decompressed.

Speed: the operator list is scanned with numpy over the raw flatbuffer (one vectorised
gather per field for all ops), and only depthwise ops and their weights are decoded field by
field, so a harvest costs about as much as loading the file (docs/benchmarks/harvest.md).
Field numbers follow TensorFlow's ``schema.fbs``. Every offset is bounds-checked: a corrupt
file is a :class:`~kernelatlas.errors.FormatError`, never a read outside the buffer.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import FormatError, KernelAtlasError
from ..limits import check_tensor, zip_member
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["read_tflite", "read_task"]

_NP = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16,
    9: np.int8, 10: np.float64,
}  # fmt: skip
#: TensorType INT4: signed 4-bit values packed two a byte, the first in the low nibble.
_INT4 = 17
#: The other TensorType names, for the message about a weight type that is not read.
_TYPE_NAMES = {5: "STRING", 6: "BOOL", 8: "COMPLEX64", 11: "COMPLEX128", 12: "UINT64",
               13: "RESOURCE", 14: "VARIANT", 15: "UINT32", 16: "UINT16", 18: "BFLOAT16"}  # fmt: skip
_DEPTHWISE_CONV_2D, _DEQUANTIZE, _DENSIFY = 4, 6, 124
#: Ops between a constant and a depthwise filter that only decode it, followed back.
_DECODE_OPS = (_DEQUANTIZE, _DENSIFY)
#: The skip reason of a depthwise layer whose filter no constant (or decoded constant) gives.
NOT_CONSTANT = "weights not constant"
_U16, _I32, _U32 = struct.Struct("<H"), struct.Struct("<i"), struct.Struct("<I")


class _Corrupt(Exception):
    """An offset outside the buffer."""


class _Unsupported(Exception):
    """A weight of a tensor type the reader does not decode (its layer is counted)."""


class _Table:
    """One flatbuffer table at ``pos`` of ``buf`` (bounds-checked scalar access)."""

    __slots__ = ("buf", "pos", "vt", "vtlen")

    def __init__(self, buf: bytes, pos: int) -> None:
        n = len(buf)
        if not 0 <= pos <= n - 4:
            raise _Corrupt
        vt = pos - _I32.unpack_from(buf, pos)[0]
        if not 0 <= vt <= n - 4:
            raise _Corrupt
        self.buf, self.pos, self.vt, self.vtlen = buf, pos, vt, _U16.unpack_from(buf, vt)[0]

    def _field(self, i: int) -> int:
        o = 4 + 2 * i
        if o + 2 > self.vtlen or self.vt + o + 2 > len(self.buf):
            return 0
        return _U16.unpack_from(self.buf, self.vt + o)[0]  # struct.error past the end

    def scalar(self, i: int, fmt: str, default: int | float = 0) -> int | float:
        off = self._field(i)
        return struct.unpack_from(fmt, self.buf, self.pos + off)[0] if off else default

    def _ref(self, i: int) -> int | None:
        off = self._field(i)
        if not off:
            return None
        p = self.pos + off
        target = p + _U32.unpack_from(self.buf, p)[0]
        if target > len(self.buf) - 4:
            raise _Corrupt
        return target

    def table(self, i: int) -> _Table | None:
        p = self._ref(i)
        return None if p is None else _Table(self.buf, p)

    def vector(self, i: int, dtype: str) -> np.ndarray:
        p = self._ref(i)
        if p is None:
            return np.zeros(0, dtype)
        n = _U32.unpack_from(self.buf, p)[0]
        if p + 4 + n * np.dtype(dtype).itemsize > len(self.buf):
            raise _Corrupt
        return np.frombuffer(self.buf, dtype, n, p + 4)

    def tables(self, i: int) -> np.ndarray:
        """Absolute positions of a vector of tables."""
        p = self._ref(i)
        if p is None:
            return np.zeros(0, np.int64)
        rel = self.vector(i, "<u4").astype(np.int64)
        pos = p + 4 + 4 * np.arange(rel.size, dtype=np.int64) + rel
        if rel.size and (pos.max() > len(self.buf) - 4):
            raise _Corrupt
        return pos

    def string(self, i: int) -> str:
        data = self.vector(i, "u1")
        return data.tobytes().decode(errors="replace")


def _gather(u8: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """One little-endian scalar at each position (vectorised, bounds-checked)."""
    width = np.dtype(dtype).itemsize
    if pos.size and (pos.min() < 0 or pos.max() > u8.size - width):
        raise _Corrupt
    return u8[pos[:, None] + np.arange(width)].copy().view(dtype).ravel()


def _field_pos(u8: np.ndarray, tables: np.ndarray, i: int) -> np.ndarray:
    """For tables at ``tables``: where field ``i`` is (0 where absent), vectorised."""
    vt = tables - _gather(u8, tables, "<i4").astype(np.int64)
    vtlen = _gather(u8, vt, "<u2").astype(np.int64)
    has = vtlen >= 4 + 2 * i + 2
    off = np.zeros(tables.size, np.int64)
    if has.any():
        off[has] = _gather(u8, vt[has] + 4 + 2 * i, "<u2")
    return np.where(off > 0, tables + off, 0)


def _tensor_values(buf: bytes, buffers: np.ndarray, t: _Table, name: str) -> tuple | None:
    """A constant tensor as float32 (dequantised) and its stored type name, or None when it
    has no data (computed at run time); :class:`_Unsupported` for a type not decoded."""
    ttype = int(t.scalar(1, "<b"))
    dtype = np.int8 if ttype == _INT4 else _NP.get(ttype)
    bidx = int(t.scalar(2, "<I"))
    if not 0 <= bidx < buffers.size:
        return None
    if dtype is None:
        raise _Unsupported(_TYPE_NAMES.get(ttype, f"type {ttype}"))
    b = _Table(buf, int(buffers[bidx]))
    data = b.vector(0, "u1")
    if data.size == 0:
        if not (b.scalar(2, "<Q") or b.scalar(1, "<Q")):
            return None
        raise FormatError("TFLite models with external (>2 GB) buffers are not supported")
    shape = tuple(int(s) for s in t.vector(0, "<i4"))
    if ttype == _INT4:
        numel = check_tensor(f"tensor {name!r}", shape, 1, available=2 * data.size)
        if (numel + 1) // 2 != data.size:
            raise FormatError(
                f"int4 tensor of shape {shape} has {data.size} bytes: the file is corrupt"
            )
        packed = data.view(np.int8)
        nibbles = np.empty((data.size, 2), np.int8)  # sign-extended low, then high nibble
        nibbles[:, 0] = np.left_shift(packed, 4) >> 4
        nibbles[:, 1] = packed >> 4
        arr = nibbles.ravel()[:numel].reshape(shape)
    elif t.table(6) is not None:  # a sparse tensor: stored values + their positions
        numel = check_tensor(f"tensor {name!r}", shape, np.dtype(dtype).itemsize)
        if data.size % np.dtype(dtype).itemsize:
            raise FormatError(f"sparse tensor {name!r} has {data.size} bytes: the file is corrupt")
        arr = _densify(t.table(6), data.view(dtype), shape, name)
    else:
        numel = check_tensor(f"tensor {name!r}", shape, np.dtype(dtype).itemsize,
                             available=data.size)  # fmt: skip
        if numel * np.dtype(dtype).itemsize != data.size:
            raise FormatError(f"tensor of shape {shape} has {data.size} bytes: the file is corrupt")
        arr = data.view(dtype).reshape(shape)
    q = t.table(4)
    if q is not None and np.issubdtype(arr.dtype, np.integer):
        scale = q.vector(2, "<f4").astype(np.float32)
        if scale.size:
            zero = q.vector(3, "<i8").astype(np.float32)
            zero = zero if zero.size else np.zeros_like(scale)
            if scale.size > 1:
                shp = [1] * arr.ndim
                shp[int(q.scalar(6, "<i"))] = -1
                scale, zero = scale.reshape(shp), zero.reshape(shp)
            stored = "int4" if ttype == _INT4 else np.dtype(dtype).name
            return (arr.astype(np.float32) - zero) * scale, stored
    return arr.astype(np.float32), "int4" if ttype == _INT4 else np.dtype(dtype).name


#: SparseIndexVector union members (Int32Vector, Uint16Vector, Uint8Vector): element type.
_INDEX_TYPES = {1: "<i4", 2: "<u2", 3: "u1"}


def _index_vector(dm: _Table, type_field: int, name: str) -> np.ndarray:
    kind = int(dm.scalar(type_field, "<B"))
    vec = dm.table(type_field + 1)
    if kind not in _INDEX_TYPES or vec is None:
        raise FormatError(f"sparse tensor {name!r}: a CSR dimension without its index vector")
    return vec.vector(0, _INDEX_TYPES[kind]).astype(np.int64)


def _densify(sp: _Table, values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The dense array of a sparse tensor (TFLite's ``SparsityParameters``: a traversal order
    over the dimensions and block dimensions, each DENSE or SPARSE_CSR, and a block map),
    what the ``DENSIFY`` op computes, vectorised level by level."""
    bad = f"sparse tensor {name!r}: inconsistent sparsity parameters; the file is corrupt"
    order = sp.vector(0, "<i4").astype(np.int64)
    block_map = sp.vector(1, "<i4").astype(np.int64)
    dims = [_Table(sp.buf, int(q)) for q in sp.tables(2)]
    n = len(shape)
    if len(dims) != order.size or order.size != n + block_map.size:
        raise FormatError(bad)
    if sorted(order.tolist()) != list(range(order.size)) or np.any(block_map >= max(n, 1)):
        raise FormatError(bad)
    # walk the levels: `parent` numbers the nodes of the level above, `coords` their indices
    coords = np.zeros((1, order.size), np.int64)
    size = np.zeros(order.size, np.int64)  # dense size per dimension (0: a CSR level)
    for level, dm in enumerate(dims):
        d = int(order[level])
        if int(dm.scalar(0, "<b")) == 0:  # DENSE
            k = int(dm.scalar(1, "<i"))
            if k < 0 or coords.shape[0] * k > values.size:
                raise FormatError(bad)
            coords = np.repeat(coords, k, axis=0)
            coords[:, d] = np.tile(np.arange(k), coords.shape[0] // max(k, 1))
            size[d] = k
        else:  # SPARSE_CSR: segments per parent node, then the indices along this level
            seg = _index_vector(dm, 2, name)
            idx = _index_vector(dm, 4, name)
            if seg.size != coords.shape[0] + 1 or seg[0] != 0 or np.any(np.diff(seg) < 0):
                raise FormatError(bad)
            if seg[-1] != idx.size or idx.size > values.size:
                raise FormatError(bad)
            coords = np.repeat(coords, np.diff(seg), axis=0)
            coords[:, d] = idx
    if coords.shape[0] != values.size:
        raise FormatError(bad)
    # a dimension's position = its block index * block size + the index inside the block
    full = coords[:, :n].copy()
    for j, orig in enumerate(block_map):  # block dimensions are dense (TFLite requires it)
        if size[n + j] <= 0:
            raise FormatError(bad)
        full[:, orig] = full[:, orig] * size[n + j] + coords[:, n + j]
    if full.size and (np.any(full < 0) or np.any(full >= np.asarray(shape, np.int64))):
        raise FormatError(bad)
    dense = np.zeros(shape, values.dtype)
    if values.size:
        dense[tuple(full.T)] = values
    return dense


@register_format(
    "tflite",
    extensions=(".tflite",),
    sniff=lambda head, ext: head[4:8] == b"TFL3",
    extra="tflite",
    can_fold_bn=True,  # TFLite has no batch-norm op: kernels are already folded
    description="TensorFlow Lite flatbuffer (fp32, fp16 behind DEQUANTIZE, int8, int4)",
)
def read_tflite(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a TFLite model (all subgraphs, in op order)."""
    buf = Path(path).read_bytes()
    layers, skipped = _read_model(buf, str(path))
    return ReadResult(layers, skipped)


def _read_model(buf: bytes, where: str) -> tuple[list[LayerKernels], dict[str, int]]:
    """:func:`_read` of one flatbuffer, its errors one line naming ``where``."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise FormatError(f"{where}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return _read(buf, where)
    except KernelAtlasError as exc:  # say which file
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except Exception as exc:  # offsets out of range, bad indices: truncated/corrupt
        raise FormatError(
            f"{where}: truncated or corrupt TFLite file ({type(exc).__name__}); get it again"
        ) from None


#: Nesting of ``.task`` bundles inside ``.task`` bundles (MediaPipe nests one level).
_MAX_TASK_DEPTH = 4
_ZIP = b"PK\x03\x04"


def _sniff_task(head: bytes, ext: str) -> bool:
    """A zip named ``.task``, or one whose first member (its name is in the local header,
    within the first 64 bytes) is a ``.tflite`` model or a nested ``.task`` bundle."""
    if head[:4] != _ZIP:
        return False
    if ext == ".task":
        return True
    n = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
    first = head[30 : 30 + n].lower()
    return len(first) == n > 0 and first.endswith((b".tflite", b".task"))


@register_format(
    "tflite_task",
    extensions=(".task",),
    sniff=_sniff_task,
    extra="tflite",
    can_fold_bn=True,  # its members are TFLite models: kernels already folded
    description="MediaPipe Tasks bundle (.task: a zip of .tflite models, nested bundles too)",
)
def read_task(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of every ``.tflite`` model in a MediaPipe ``.task`` bundle, in the
    bundle's order; a layer is named ``member.tflite/OP:tensor``."""
    layers: list[LayerKernels] = []
    skipped: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            n_models = _read_bundle(f, str(path), "", 0, layers, skipped)
    except zipfile.BadZipFile as exc:
        raise FormatError(
            f"{path}: truncated or corrupt .task bundle (BadZipFile: {str(exc)[:80]}); get it again"
        ) from None
    if not n_models:
        raise FormatError(
            f"{path}: a zip without .tflite models, not a MediaPipe .task bundle; harvest the "
            "model file itself"
        )
    return ReadResult(layers, skipped)


def _read_bundle(
    f: object, where: str, prefix: str, depth: int, layers: list[LayerKernels],
    skipped: dict[str, int],
) -> int:  # fmt: skip
    """Read the models of one (possibly nested) bundle into ``layers``; how many were read."""
    n_models = 0
    with zipfile.ZipFile(f) as zf:  # type: ignore[arg-type]
        for info in zf.infolist():
            name = info.filename
            low = name.lower()
            if info.is_dir() or not low.endswith((".tflite", ".task")):
                continue  # metadata (.binarypb, labels...)
            try:
                data = zip_member(zf, name, where)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # CRC, truncation
                raise FormatError(
                    f"{where}: member {name!r} is truncated or corrupt ({type(exc).__name__}); "
                    "get the bundle again"
                ) from None
            if low.endswith(".task"):
                if depth >= _MAX_TASK_DEPTH:
                    raise FormatError(f"{where}: .task bundles nested too deep; refused")
                n_models += _read_bundle(io.BytesIO(data), f"{where}:{name}", f"{prefix}{name}/",
                                         depth + 1, layers, skipped)  # fmt: skip
                continue
            got, skip = _read_model(data, f"{where}:{name}")
            n_models += 1
            layers += [replace(lk, layer=f"{prefix}{name}/{lk.layer}",
                               layer_index=len(layers) + i) for i, lk in enumerate(got)]  # fmt: skip
            for reason, k in skip.items():
                skipped[reason] = skipped.get(reason, 0) + k
    return n_models


def _read(buf: bytes, path: str) -> tuple[list[LayerKernels], dict[str, int]]:
    u8 = np.frombuffer(buf, np.uint8)
    model = _Table(buf, _U32.unpack_from(buf, 0)[0])
    codes = np.array(
        [max(int(c.scalar(3, "<i")), int(c.scalar(0, "<b")))
         for c in (_Table(buf, int(p)) for p in model.tables(1))], np.int64,
    )  # fmt: skip
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    layers: list[LayerKernels] = []
    skipped = not_constant = 0
    unsupported: dict[str, int] = {}
    for s, sg_pos in enumerate(subgraphs):
        sg = _Table(buf, int(sg_pos))
        tensors = sg.tables(0)
        ops = sg.tables(3)
        if ops.size == 0:
            continue
        # opcode of every op at once; only depthwise and DEQUANTIZE ops are decoded further
        op_field = _field_pos(u8, ops, 0)
        opcode = np.where(op_field > 0, _gather(u8, np.maximum(op_field, 0), "<u4"), 0)
        if opcode.size and opcode.max() >= codes.size:
            raise _Corrupt
        code = codes[opcode.astype(np.int64)]
        decoder: dict[int, _Table] = {}  # output tensor -> the DEQUANTIZE/DENSIFY op
        for j in np.flatnonzero(np.isin(code, _DECODE_OPS)):
            op = _Table(buf, int(ops[j]))
            outs = op.vector(2, "<i4")
            if outs.size:
                decoder[int(outs[0])] = op
        for j in np.flatnonzero(code == _DEPTHWISE_CONV_2D):
            op = _Table(buf, int(ops[j]))
            inputs = op.vector(1, "<i4")
            if inputs.size < 2 or not 0 <= int(inputs[1]) < tensors.size:
                raise _Corrupt
            widx = int(inputs[1])
            wt = _Table(buf, int(tensors[widx]))
            name = wt.string(3) or f"op{j}"
            t = wt
            for _ in range(len(_DECODE_OPS) + 1):  # back through DEQUANTIZE / DENSIFY
                src = decoder.get(widx)
                if src is None:
                    break
                sin = src.vector(1, "<i4")
                if sin.size < 1 or not 0 <= int(sin[0]) < tensors.size:
                    raise _Corrupt
                widx = int(sin[0])
                t = _Table(buf, int(tensors[widx]))
            try:  # a constant buffer (a weight computed at run time has no data)
                got = _tensor_values(buf, buffers, t, name)
            except _Unsupported as exc:
                unsupported[str(exc)] = unsupported.get(str(exc), 0) + 1
                continue
            if got is None:
                not_constant += 1
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
            layers.append(
                LayerKernels(
                    layer=f"{s}/{j}:{name}" if subgraphs.size > 1 else f"{j}:{name}",
                    layer_index=len(layers),
                    weights=np.ascontiguousarray(np.moveaxis(w[0], -1, 0), np.float32),
                    stride=stride,
                    dilation=dilation,
                    bn_folded=True,
                    dtype=stored,
                )
            )
    out = {"1x1": skipped} if skipped else {}
    if not_constant:
        out[NOT_CONSTANT] = not_constant
    out.update({f"{kind} weights, a type not read": n for kind, n in unsupported.items()})
    return layers, out


def _options(op: _Table) -> tuple[int, int]:
    """Stride and dilation of a DEPTHWISE_CONV_2D op (DepthwiseConv2DOptions)."""
    opt = op.table(4)
    if opt is None:
        return 1, 1
    sw, sh = int(opt.scalar(1, "<i")), int(opt.scalar(2, "<i"))
    dw, dh = int(opt.scalar(5, "<i", 1)), int(opt.scalar(6, "<i", 1))
    return max(sw, sh), max(dw, dh)
