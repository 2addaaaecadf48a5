"""Reader: OpenVINO IR (``model.xml`` + ``model.bin``; parsed as XML and raw bytes, nothing run).

An IR is an XML graph (``<net version="10|11">``: ``<layers>`` of typed ops, ``<edges>``
between their ports) and a headerless ``.bin`` of the same name beside it; each ``Const``
op names its bytes there (``element_type``, ``shape``, ``offset``, ``size``).
Depthwise = a ``GroupConvolution`` whose weight (input port 1) is ``[G, mult, 1, kh, kw]``
with ``G > 1``: ``G * mult`` kernels, channel ``g * mult + m``. The weight is a ``Const``,
possibly through the ops OpenVINO's converters and NNCF write: ``Convert`` (f16 weights,
``compress_to_fp16``; int8/int4 compressed weights), ``Subtract`` (zero point), ``Multiply``
(scale), ``Add``, ``Divide``, ``FakeQuantize``, ``Reshape``, ``Squeeze``, ``Unsqueeze``,
``Transpose``. A depthwise layer whose weight is computed at run time (or of a type not read:
f8, nf4, u1) is counted under ``skipped``. ``bn_folded`` is False: OpenVINO's converters
fold batch norms into the weights, but the file does not say.

Safety: the XML is parsed by expat with every document type declaration refused (no DTD,
no entities: nothing to expand, nothing external to fetch) and its size bounded
(:data:`MAX_XML_BYTES`); the ``.bin`` must be a regular file; every ``Const``'s byte range
is checked against the ``.bin``'s size and its declared shape and type, and against
:mod:`kernelatlas.limits`, before a byte of it is read; only the ranges the depthwise
weights need are read. Constant folding is memoised and bounded (:data:`MAX_FOLD_STEPS`
ops, chains of at most 64), every broadcast charged to the source budget first.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np

from ..errors import FormatError, UnsafeFileError
from ..limits import TensorTooLargeError, charge, check_tensor
from .base import LayerKernels, read_or_say
from .formats import ReadResult, register_format

__all__ = ["read_openvino", "MAX_XML_BYTES", "MAX_FOLD_STEPS", "NOT_CONSTANT"]

#: Largest ``.xml`` read (bytes).
MAX_XML_BYTES = 256 * 2**20
#: Most ops constant folding may evaluate for one model.
MAX_FOLD_STEPS = 100_000
#: The skip reason of a depthwise layer whose weight is not a constant (as for ONNX).
NOT_CONSTANT = "weights not constant"
_MAX_DEPTH = 64
_PENDING = object()

#: OpenVINO element type -> (numpy dtype, bits per element, dtype column name).
_TYPES: dict[str, tuple[str, int, str]] = {
    "f32": ("<f4", 32, "float32"), "f16": ("<f2", 16, "float16"), "f64": ("<f8", 64, "float64"),
    "bf16": ("<u2", 16, "bfloat16"), "i8": ("i1", 8, "int8"), "u8": ("u1", 8, "uint8"),
    "i16": ("<i2", 16, "int16"), "u16": ("<u2", 16, "uint16"), "i32": ("<i4", 32, "int32"),
    "u32": ("<u4", 32, "uint32"), "i64": ("<i8", 64, "int64"), "u64": ("<u8", 64, "uint64"),
    "boolean": ("u1", 8, "bool"), "i4": ("u1", 4, "int4"), "u4": ("u1", 4, "uint4"),
}  # fmt: skip
#: Element types OpenVINO has that kernelatlas does not decode (counted, never guessed).
_UNREAD = {"u1", "u2", "u3", "u6", "nf4", "f4e2m1", "f8e4m3", "f8e5m2", "f8e8m0", "string"}
_FLOAT_DEST = {"f32", "f16", "f64", "bf16"}
_ELEMENTWISE = {"Multiply": np.multiply, "Add": np.add, "Subtract": np.subtract,
                "Divide": np.divide}  # fmt: skip


@dataclass
class _Layer:
    id: str
    name: str
    type: str
    data: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[int] | None] = field(default_factory=dict)  # port -> dims


@dataclass
class _IR:
    version: int
    layers: dict[str, _Layer]
    order: list[str]
    edges: dict[tuple[str, str], tuple[str, str]]  # (to layer, to port) -> (from, port)


def _refuse_dtd(where: str) -> Any:
    def handler(*_: Any) -> Any:
        raise UnsafeFileError(
            f"{where}: the XML declares a document type or entities (DTD), which no OpenVINO "
            "IR has; refused (nothing in it was expanded or fetched)"
        )

    return handler


def _parse(raw: bytes, where: str) -> _IR:
    """The layers and edges of an IR's XML (nested bodies of Loop/If/TensorIterator left out)."""
    p = expat.ParserCreate()
    refuse = _refuse_dtd(where)
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[str] = []
    root: dict[str, str] = {}
    layers: dict[str, _Layer] = {}
    order: list[str] = []
    edges: dict[tuple[str, str], tuple[str, str]] = {}
    cur: dict[str, Any] = {}  # the open layer, its open input port, that port's dims

    def start(tag: str, attrs: dict[str, str]) -> None:
        stack.append(tag)
        path = tuple(stack)
        if len(path) == 1:
            root.update(attrs, tag=tag)
        elif path == ("net", "layers", "layer"):
            lid = attrs.get("id")
            if lid is None or lid in layers:
                raise FormatError(f"{where}: a layer with a missing or repeated id {lid!r}")
            cur["layer"] = layers[lid] = _Layer(lid, attrs.get("name", lid), attrs.get("type", ""))
            order.append(lid)
        elif path == ("net", "layers", "layer", "data"):
            cur["layer"].data = dict(attrs)
        elif path == ("net", "layers", "layer", "input", "port"):
            cur["dims"] = []
            cur["layer"].inputs[attrs.get("id", "")] = cur["dims"]
        elif path == ("net", "layers", "layer", "input", "port", "dim"):
            cur["text"] = []
        elif path == ("net", "edges", "edge"):
            try:
                key = (attrs["to-layer"], attrs["to-port"])
                edges[key] = (attrs["from-layer"], attrs["from-port"])
            except KeyError:
                raise FormatError(f"{where}: an edge without its from/to layer and port") from None

    def end(tag: str) -> None:
        if tuple(stack) == ("net", "layers", "layer", "input", "port", "dim"):
            text = "".join(cur.pop("text", [])).strip()
            cur["dims"].append(int(text) if text.lstrip("-").isdigit() else -1)
        stack.pop()

    def chars(text: str) -> None:
        if "text" in cur:
            cur["text"].append(text)

    p.StartElementHandler, p.EndElementHandler, p.CharacterDataHandler = start, end, chars
    try:
        p.Parse(raw, True)
    except expat.ExpatError as exc:
        raise FormatError(
            f"{where}: truncated or corrupt XML ({expat.ErrorString(exc.code)} at line "
            f"{exc.lineno}); export the model again"
        ) from None
    if root.get("tag") != "net":
        raise FormatError(
            f"{where}: an XML file whose root is <{root.get('tag', '?')}>, not an OpenVINO IR "
            "(<net>); pass an OpenVINO model.xml"
        )
    try:
        version = int(root.get("version", "0"))
    except ValueError:
        version = 0
    if version < 10:
        raise FormatError(
            f"{where}: OpenVINO IR version {root.get('version', '?')}; kernelatlas reads IR v10 "
            "and v11 (OpenVINO 2020.4 and later): convert the model again with a current "
            "openvino (ovc, or openvino.save_model)"
        )
    return _IR(version, layers, order, edges)


class _Bin:
    """The model's ``.bin``, read by byte range (opened on the first ``Const`` read)."""

    def __init__(self, path: Path, xml: str) -> None:
        self.path, self.xml = path, xml
        self._f: Any = None
        self.size = -1

    def _open(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            raise FormatError(
                f"{self.xml}: its weights file {self.path.name} is missing; an OpenVINO IR is "
                "model.xml + model.bin: copy the .bin beside the .xml"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{self.path}: not a regular file (a directory, device or FIFO)")
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self._f.fileno()).st_size

    def check(self, offset: int, size: int, what: str) -> None:
        """Refuse a byte range that is not inside the ``.bin`` (opening it first)."""
        if self._f is None:
            self._open()
        if offset < 0 or size < 0 or offset + size > self.size:
            raise FormatError(
                f"{what}: bytes {offset:,}..{offset + size:,} lie past the end of "
                f"{self.path.name} ({self.size:,} bytes); the .bin is truncated or not this "
                "model's"
            )

    def read(self, offset: int, size: int, what: str) -> bytes:
        self.check(offset, size, what)
        self._f.seek(offset)
        data = self._f.read(size)
        if len(data) != size:
            raise FormatError(f"{self.path}: shorter than when it was opened; read it again")
        return data

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def _ints(text: str | None, what: str) -> list[int]:
    if text is None:
        return []
    parts = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [int(t) for t in parts]
    except ValueError:
        raise FormatError(f"{what}: {text[:40]!r} is not a list of integers") from None


class _Folder:
    """Constant folding over the IR's ops: the value of an op's output, or None."""

    def __init__(self, ir: _IR, binf: _Bin, where: str) -> None:
        self.ir, self.bin, self.where = ir, binf, where
        self.memo: dict[tuple[str, str], Any] = {}
        self.steps = 0

    def input(self, layer: _Layer, port: int, depth: int) -> tuple[np.ndarray, str] | None:
        src = self.ir.edges.get((layer.id, str(port)))
        if src is None:
            return None
        return self.value(*src, depth=depth + 1)

    def value(self, lid: str, port: str, depth: int = 0) -> tuple[np.ndarray, str] | None:
        key = (lid, port)
        got = self.memo.get(key)
        if got is _PENDING:  # a cycle: not a constant
            return None
        if key in self.memo:
            return got
        if depth > _MAX_DEPTH:
            return None
        self.steps += 1
        if self.steps > MAX_FOLD_STEPS:
            raise TensorTooLargeError(
                f"{self.where}: constant folding needs more than {MAX_FOLD_STEPS:,} ops; refused"
            )
        self.memo[key] = _PENDING
        layer = self.ir.layers.get(lid)
        out = None if layer is None else self._fold(layer, depth)
        self.memo[key] = out
        return out

    def _const(self, layer: _Layer) -> tuple[np.ndarray, str] | None:
        what = f"{self.where}: Const {layer.name!r}"
        d = layer.data
        et = d.get("element_type", "")
        if et in _UNREAD:
            return None
        if et not in _TYPES:
            raise FormatError(f"{what}: unknown element_type {et[:20]!r}; the file is corrupt")
        np_dtype, bits, label = _TYPES[et]
        shape = _ints(d.get("shape"), what)
        try:
            offset, size = int(d["offset"]), int(d["size"])
        except (KeyError, ValueError):
            raise FormatError(f"{what}: no byte offset/size; the file is corrupt") from None
        numel = check_tensor(what, shape, max(bits // 8, 1), budget=False)
        if size != (numel * bits + 7) // 8:
            raise FormatError(
                f"{what}: {size:,} bytes for a {et} tensor of shape {shape} "
                f"({(numel * bits + 7) // 8:,} expected); the file is corrupt"
            )
        self.bin.check(offset, size, what)
        check_tensor(what, shape, max(bits // 8, 1))  # charged: it is read now
        raw = self.bin.read(offset, size, what)
        arr = np.frombuffer(raw, np_dtype)
        if bits == 4:  # two a byte, low nibble first
            nib = np.empty(arr.size * 2, np.uint8)
            nib[0::2], nib[1::2] = arr & 0x0F, arr >> 4
            arr = nib[:numel]
            if et == "i4":
                arr = arr.astype(np.int8)
                arr[arr > 7] -= 16
        elif et == "bf16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.reshape(shape), label

    def _fold(self, layer: _Layer, depth: int) -> tuple[np.ndarray, str] | None:
        t = layer.type
        if t == "Const":
            return self._const(layer)
        a = self.input(layer, 0, depth)
        if a is None:
            return None
        x, stored = a
        what = f"{self.where}: {t} {layer.name!r}"
        if t == "Convert":
            dest = layer.data.get("destination_type", "f32")
            return (x.astype(np.float32) if dest in _FLOAT_DEST else x.astype(np.int64)), stored
        if t == "ConvertLike":
            return x.astype(np.float32), stored
        if t in _ELEMENTWISE:
            b = self.input(layer, 1, depth)
            if b is None:
                return None
            y = b[0]
            _charge_broadcast(what, x, y)
            with np.errstate(all="ignore"):
                return _ELEMENTWISE[t](x.astype(np.float32), y.astype(np.float32)), stored
        if t == "FakeQuantize":
            ins = [self.input(layer, i, depth) for i in range(1, 5)]
            if any(v is None for v in ins):
                return None
            lo, hi, olo, ohi = (np.asarray(v[0], np.float32) for v in ins)  # type: ignore[index]
            _charge_broadcast(what, x, lo, hi, olo, ohi)
            return _fake_quantize(x, lo, hi, olo, ohi, int(layer.data.get("levels", 256))), stored
        if t in ("Reshape", "Squeeze", "Unsqueeze", "Transpose"):
            b = self.input(layer, 1, depth) if (layer.id, "1") in self.ir.edges else None
            if b is None and t != "Squeeze":
                return None
            arg = [int(v) for v in np.asarray(b[0]).reshape(-1)] if b is not None else None
            try:
                return _layout(t, x, arg, layer.data.get("special_zero") == "true"), stored
            except (ValueError, IndexError, np.exceptions.AxisError) as exc:
                raise FormatError(f"{what}: {exc}; the file is corrupt") from None
        return None  # anything else: computed at run time


def _charge_broadcast(what: str, *arrays: np.ndarray) -> None:
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise FormatError(
            f"{what}: shapes {[list(a.shape) for a in arrays]} do not broadcast; the file is "
            "corrupt"
        ) from None
    check_tensor(what, shape, 4)


def _fake_quantize(x, lo, hi, olo, ohi, levels: int) -> np.ndarray:  # noqa: ANN001
    """OpenVINO's FakeQuantize (its opset1 definition), elementwise."""
    x = np.asarray(x, np.float32)
    with np.errstate(all="ignore"):
        q = np.round((x - lo) / (hi - lo) * (levels - 1)) / (levels - 1) * (ohi - olo) + olo
    return np.where(x <= np.minimum(lo, hi), olo, np.where(x > np.maximum(lo, hi), ohi, q))


def _layout(t: str, x: np.ndarray, arg: list[int] | None, special_zero: bool) -> np.ndarray:
    if t == "Transpose":
        return np.transpose(x, arg or None)
    if t == "Unsqueeze":
        assert arg is not None
        return np.expand_dims(x, tuple(arg))
    if t == "Squeeze":
        return np.squeeze(x) if not arg else np.squeeze(x, tuple(arg))
    assert arg is not None
    shape = [x.shape[i] if (special_zero and d == 0) else d for i, d in enumerate(arg)]
    return x.reshape(shape)


def _max(v: list[int]) -> int:
    return max(v) if v else 0


def _read(path: Path) -> ReadResult:
    where = str(path)
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise TensorTooLargeError(
            f"{where}: a {size:,}-byte XML; over the {MAX_XML_BYTES:,}-byte limit"
        )
    charge("the parsed XML", 8 * size)
    ir = _parse(path.read_bytes(), where)
    binf = _Bin(path.with_suffix(".bin"), where)
    try:
        return _harvest(ir, _Folder(ir, binf, where), where)
    finally:
        binf.close()


def _harvest(ir: _IR, fold: _Folder, where: str) -> ReadResult:
    layers: list[LayerKernels] = []
    skipped: dict[str, int] = {}
    for lid in ir.order:
        layer = ir.layers[lid]
        if layer.type != "GroupConvolution":
            continue
        declared = layer.inputs.get("1")
        src = ir.edges.get((lid, "1"))
        got = None if src is None else fold.value(*src)
        if got is None:
            if declared is None or len(declared) != 5 or declared[2] in (1, -1):
                skipped[NOT_CONSTANT] = skipped.get(NOT_CONSTANT, 0) + 1
            continue
        w, stored = got
        what = f"{where}: GroupConvolution {layer.name!r}"
        if declared and all(d >= 0 for d in declared) and list(w.shape) != declared:
            raise FormatError(
                f"{what}: weight of shape {list(w.shape)}, but the layer declares {declared}; "
                "the file is corrupt"
            )
        if w.ndim != 5 or w.shape[2] != 1 or w.shape[0] < 2:
            continue  # 1-D/3-D, or grouped with several input channels a group: not depthwise
        g, mult, _, kh, kw = w.shape
        if (kh, kw) == (1, 1):
            skipped["1x1"] = skipped.get("1x1", 0) + 1
            continue
        charge(f"kernels of {layer.name!r}", 4 * w.size)
        d = layer.data
        layers.append(
            LayerKernels(
                layer=layer.name,
                layer_index=len(layers),
                weights=np.ascontiguousarray(np.asarray(w, np.float32).reshape(g * mult, kh, kw)),
                stride=_max(_ints(d.get("strides"), what)),
                dilation=_max(_ints(d.get("dilations"), what)),
                bn_folded=False,
                dtype=stored,
            )
        )
    return ReadResult(layers, skipped)


def _sniff(head: bytes, ext: str) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith((b"<?xml", b"<net")) and (b"<net " in text or b"<net>" in text)


@register_format(
    "openvino",
    extensions=(".xml",),
    sniff=_sniff,
    description="OpenVINO IR (model.xml + model.bin beside it)",
    glob_by_content=True,
)
def read_openvino(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of an OpenVINO IR model (its ``.xml``; the ``.bin`` beside it)."""
    return read_or_say(Path(path), _read, "OpenVINO IR", "export it again")
