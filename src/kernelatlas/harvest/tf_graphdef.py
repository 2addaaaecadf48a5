"""Reader: TensorFlow frozen graphs (``GraphDef`` ``.pb``) and ``saved_model.pb``; parsed from
the protobuf wire format by kernelatlas (TensorFlow is never imported, nothing is run).

Depthwise = a ``DepthwiseConv2dNative`` node whose filter (input 1, through ``Identity``
nodes) is a ``Const`` holding ``[kh, kw, C, mult]``: ``C * mult`` kernels, channel
``c * mult + m``; strides and dilations from the node. Filters are float32, float16,
bfloat16 or float64, as ``tensor_content`` bytes or typed values (fewer values than
elements repeat the last one, as TensorFlow does). A filter that is not a constant (a
variable of a SavedModel, whose weights live in ``variables/``; a computed one) is counted
under ``skipped``. In a ``saved_model.pb`` every meta graph's ``GraphDef`` is read.
``bn_folded`` is False (freezing tools often fold batch norms; the file does not say).

Safety: the file is read once (:data:`MAX_PB_BYTES`, charged to the source budget); every
length, tag and varint is checked against the bytes that hold it; only the node headers
and the depthwise filters' tensors are decoded, each checked against :mod:`kernelatlas.limits`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..limits import TensorTooLargeError, charge, check_tensor
from .base import LayerKernels, read_or_say
from .formats import ReadResult, register_format
from .keras_h5 import hwcm_layer

__all__ = ["read_graphdef", "DEPTHWISE_OP", "MAX_PB_BYTES", "NOT_CONSTANT"]

#: The op whose input 1 is a depthwise filter ``[kh, kw, C, mult]``.
DEPTHWISE_OP = "DepthwiseConv2dNative"
#: Largest ``.pb`` read (protobuf's own limit is 2 GiB).
MAX_PB_BYTES = 2 * 2**30
NOT_CONSTANT = "weights not constant"
_MAX_IDENTITY = 64
#: TensorFlow DataType -> (numpy dtype of tensor_content, dtype column name).
_DTYPES = {1: ("<f4", "float32"), 2: ("<f8", "float64"), 19: ("<f2", "float16"),
           14: ("<u2", "bfloat16")}  # fmt: skip


class _Wire:
    """Protobuf wire-format fields of ``buf[start:end]``, bounds-checked."""

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.where = buf, where

    def _bad(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: {what}; the file is truncated or not a TensorFlow graph")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        out = shift = 0
        buf = self.buf
        while True:
            if pos >= end or shift > 63:
                raise self._bad("a varint runs past its message")
            b = buf[pos]
            pos += 1
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out, pos
            shift += 7

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """``(field number, wire type, a, b)``: for varints ``a`` is the value; for
        length-delimited fields ``buf[a:b]`` is the payload; for fixed ones too."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wt = key >> 3, key & 7
            if num == 0:
                raise self._bad("field number 0")
            if wt == 0:
                v, pos = self.varint(pos, end)
                yield num, wt, v, pos
            elif wt == 2:
                n, pos = self.varint(pos, end)
                if n > end - pos:
                    raise self._bad(f"a {n:,}-byte field runs past its message")
                yield num, wt, pos, pos + n
                pos += n
            elif wt in (1, 5):
                size = 8 if wt == 1 else 4
                if pos + size > end:
                    raise self._bad("a fixed-size field runs past its message")
                yield num, wt, pos, pos + size
                pos += size
            else:
                raise self._bad(f"wire type {wt} (groups or invalid)")

    def text(self, a: int, b: int) -> str:
        return self.buf[a:b].decode("utf-8", "replace")


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, tuple[int, int]] = field(default_factory=dict)  # AttrValue payloads


def _nodes(w: _Wire, start: int, end: int) -> list[_Node]:
    """The NodeDefs of a GraphDef (field 1); function libraries are not read."""
    out = []
    for num, wt, a, b in w.fields(start, end):
        if num != 1 or wt != 2:
            continue
        node = _Node("", "")
        for n2, wt2, a2, b2 in w.fields(a, b):
            if wt2 != 2:
                continue
            if n2 == 1:
                node.name = w.text(a2, b2)
            elif n2 == 2:
                node.op = w.text(a2, b2)
            elif n2 == 3:
                node.inputs.append(w.text(a2, b2))
            elif n2 == 5:  # map<string, AttrValue> entry
                key, val = "", (0, 0)
                for n3, wt3, a3, b3 in w.fields(a2, b2):
                    if n3 == 1 and wt3 == 2:
                        key = w.text(a3, b3)
                    elif n3 == 2 and wt3 == 2:
                        val = (a3, b3)
                node.attrs[key] = val
        out.append(node)
    return out


def _graphs(w: _Wire) -> tuple[list[tuple[int, int]], bool]:
    """The GraphDef byte ranges of the file and whether it is a SavedModel."""
    first = next(w.fields(0, len(w.buf)), None)
    if first is None:
        raise FormatError(f"{w.where}: an empty protobuf; not a TensorFlow graph")
    if first[0] == 1 and first[1] == 2:  # GraphDef: node = 1
        return [(0, len(w.buf))], False
    graphs = []  # SavedModel: schema version = 1 (varint), meta_graphs = 2
    for num, wt, a, b in w.fields(0, len(w.buf)):
        if num == 2 and wt == 2:
            graphs += [(a2, b2) for n2, wt2, a2, b2 in w.fields(a, b) if n2 == 2 and wt2 == 2]
    if not graphs:
        raise FormatError(
            f"{w.where}: a protobuf that is neither a GraphDef (nodes) nor a SavedModel "
            "(meta graphs); pass a frozen graph .pb"
        )
    return graphs, True


def _ints(w: _Wire, attr: tuple[int, int] | None) -> list[int]:
    """``list.i`` of an AttrValue (packed or not)."""
    if attr is None:
        return []
    out: list[int] = []
    for num, wt, a, b in w.fields(*attr):
        if num != 1 or wt != 2:
            continue
        for n2, wt2, a2, b2 in w.fields(a, b):
            if n2 == 3 and wt2 == 0:
                out.append(a2)
            elif n2 == 3 and wt2 == 2:
                pos = a2
                while pos < b2:
                    v, pos = w.varint(pos, b2)
                    out.append(v)
    return out


def _tensor(w: _Wire, attr: tuple[int, int], what: str) -> tuple[np.ndarray, str] | None:
    """The float value of a Const's ``value`` attr (a TensorProto), or None for other dtypes."""
    t = next(((a, b) for num, wt, a, b in w.fields(*attr) if num == 8 and wt == 2), None)
    if t is None:
        return None
    dtype, shape, content = 0, [], None
    values: dict[int, list[tuple[int, int, int, int]]] = {}
    for num, wt, a, b in w.fields(*t):
        if num == 1 and wt == 0:
            dtype = a
        elif num == 2 and wt == 2:
            for n2, wt2, a2, b2 in w.fields(a, b):
                if n2 == 2 and wt2 == 2:
                    size = next(
                        (v for n3, wt3, v, _ in w.fields(a2, b2) if n3 == 1 and wt3 == 0), 0
                    )
                    shape.append(size - (1 << 64) if size >= 1 << 63 else size)
        elif num == 4 and wt == 2:
            content = (a, b)
        elif num in (5, 6, 13):
            values.setdefault(num, []).append((num, wt, a, b))
    if dtype not in _DTYPES:
        return None
    np_dtype, label = _DTYPES[dtype]
    itemsize = np.dtype(np_dtype).itemsize
    numel = check_tensor(what, shape, itemsize)
    if content is not None:
        if content[1] - content[0] != numel * itemsize:
            raise FormatError(
                f"{what}: {content[1] - content[0]:,} bytes of tensor_content for shape {shape} "
                f"({numel * itemsize:,} expected); the file is corrupt"
            )
        arr = np.frombuffer(w.buf, np_dtype, numel, content[0])
    else:
        arr = _typed_values(w, values, dtype, numel, what)
    if label == "bfloat16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32).reshape(shape), label


def _typed_values(w: _Wire, values: dict, dtype: int, numel: int, what: str) -> np.ndarray:
    """``float_val`` / ``double_val`` / ``half_val`` (bits), packed or not; fewer values than
    elements repeat the last one (TensorFlow's rule), none is zeros."""
    key, np_dtype = {1: (5, "<f4"), 2: (6, "<f8"), 19: (13, None), 14: (13, None)}[dtype]
    parts: list[np.ndarray] = []
    for _, wt, a, b in values.get(key, []):
        if np_dtype is None:  # half_val: int32 varints holding the 16 bits
            bits = []
            if wt == 0:
                bits.append(a)
            else:
                pos = a
                while pos < b:
                    v, pos = w.varint(pos, b)
                    bits.append(v)
            parts.append(np.asarray(bits, np.uint64).astype(np.uint16))
        else:
            if (b - a) % np.dtype(np_dtype).itemsize:
                raise FormatError(f"{what}: a packed value field of {b - a} bytes; corrupt")
            parts.append(np.frombuffer(w.buf[a:b], np_dtype))
    got = np.concatenate(parts) if parts else np.zeros(0, np_dtype or np.uint16)
    if dtype == 19:  # DT_HALF: the bits of float16 values (DT_BFLOAT16 is widened later)
        got = got.view(np.float16)
    if got.size > numel:
        raise FormatError(f"{what}: {got.size:,} values for {numel:,} elements; corrupt")
    if got.size == numel:
        return got
    charge(f"{what} (repeated value)", 4 * numel)
    fill = got[-1] if got.size else 0
    return np.concatenate([got, np.full(numel - got.size, fill, got.dtype)])


def _node_name(ref: str) -> str:
    ref = ref[1:] if ref.startswith("^") else ref
    head, sep, tail = ref.rpartition(":")
    return head if sep and tail.isdigit() else ref


def _harvest(w: _Wire, graphs: list[tuple[int, int]], saved: bool) -> ReadResult:
    layers: list[LayerKernels] = []
    skipped: dict[str, int] = {}
    for gi, rng in enumerate(graphs):
        nodes = _nodes(w, *rng)
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            if node.op != DEPTHWISE_OP or len(node.inputs) < 2:
                continue
            src = by_name.get(_node_name(node.inputs[1]))
            for _ in range(_MAX_IDENTITY):
                if src is None or src.op != "Identity" or not src.inputs:
                    break
                src = by_name.get(_node_name(src.inputs[0]))
            what = f"{w.where}: {node.name!r}"
            got = None
            if src is not None and src.op == "Const" and "value" in src.attrs:
                got = _tensor(w, src.attrs["value"], f"{w.where}: Const {src.name!r}")
            if got is None:
                skipped[NOT_CONSTANT] = skipped.get(NOT_CONSTANT, 0) + 1
                continue
            filt, label = got
            if filt.ndim != 4:
                raise FormatError(f"{what}: filter of shape {list(filt.shape)}, expected 4-D")
            if filt.shape[:2] == (1, 1):
                skipped["1x1"] = skipped.get("1x1", 0) + 1
                continue
            strides = _ints(w, node.attrs.get("strides"))
            dilations = _ints(w, node.attrs.get("dilations"))
            cfg = {"strides": strides or [1], "dilation_rate": dilations or [1]}
            name = node.name if len(graphs) == 1 else f"meta_graph{gi}/{node.name}"
            charge(f"kernels of {node.name!r}", 4 * filt.size)
            layers.append(hwcm_layer(name, len(layers), filt, cfg, label))
    notes = ()
    if saved and skipped.get(NOT_CONSTANT):
        notes = (
            f"{skipped[NOT_CONSTANT]} depthwise filters are variables of the SavedModel, kept in "
            "its variables/ folder (a TensorFlow checkpoint kernelatlas does not read): convert "
            "the model to TFLite or ONNX, or freeze the graph",
        )
    return ReadResult(layers, skipped, notes)


def _read(path: Path) -> ReadResult:
    size = path.stat().st_size
    if size > MAX_PB_BYTES:
        raise TensorTooLargeError(
            f"{path}: a {size:,}-byte .pb; over the {MAX_PB_BYTES:,}-byte limit"
        )
    charge("the .pb", size)
    w = _Wire(path.read_bytes(), str(path))
    graphs, saved = _graphs(w)
    return _harvest(w, graphs, saved)


def _sniff(head: bytes, ext: str) -> bool:
    """A GraphDef's first bytes: node (field 1) { name (field 1) = printable text, op = 2 };
    or a SavedModel's: schema version 1, then meta_graphs (field 2)."""
    if head[:3] == b"\x08\x01\x12":
        return True
    try:
        w = _Wire(head, "")
        if head[:1] != b"\n":
            return False
        _, pos = w.varint(1, len(head))
        if head[pos : pos + 1] != b"\n":
            return False
        n, pos = w.varint(pos + 1, len(head))
        name = head[pos : pos + n]
        return (
            pos + n < len(head) and len(name) == n and name.isascii() and name.decode().isprintable()
            and head[pos + n : pos + n + 1] == b"\x12"
        )  # fmt: skip
    except FormatError:
        return False


@register_format(
    "tf_graphdef",
    extensions=(".pb",),
    sniff=_sniff,
    description="TensorFlow frozen GraphDef .pb (saved_model.pb: filters in variables/ not read)",
    glob_by_content=True,
)
def read_graphdef(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a TensorFlow frozen graph (``.pb``)."""
    return read_or_say(Path(path), _read, "TensorFlow graph", "export it again")
