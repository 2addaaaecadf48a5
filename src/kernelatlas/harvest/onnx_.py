"""Reader: ONNX graphs.

Depthwise = a ``Conv`` node with ``group == C_in > 1`` (C_in = weight channels * group)
and a weight of shape ``[C_in * mult, 1, kh, kw]``. The weight comes from an initializer
or a ``Constant`` node, possibly through ``Identity``, ``Cast``, ``Mul`` by a constant,
``Transpose``/``Reshape``/``Unsqueeze``/``Squeeze`` (a kernel stored as ``[kh, kw, C, 1]``
or ``[C, kh, kw]``), ``QuantizeLinear`` (fake-quantised float weights) and
``DequantizeLinear`` (int8 weight-only models; per-tensor or per-channel scales). A
depthwise conv whose weight is computed at run time is counted under ``skipped``.
Quantised convolutions count too: ``QLinearConv`` (dequantised with its weight scale and
zero point) and ``ConvInteger`` (with its zero point and the weight scale of onnxruntime's
dynamic-quantisation pattern), and onnxruntime's ``FusedConv``. With ``fold_bn=True`` a
``BatchNormalization`` node that is the conv's only consumer (through the ops that only
dequantise its output, :data:`_TO_FLOAT`) is folded in; a warning counts the layers without
one.
Every tensor's declared size is checked against its data and :mod:`kernelatlas.limits`
before it is read; external data is read only from regular files beside the model.
Constant folding is memoised (each node folded once, however often its output is reused)
and bounded (:data:`MAX_FOLD_STEPS` nodes, chains of at most 64); every broadcast is charged
to the source budget before it is computed, and so is every harvested layer (an initializer
shared by hundreds of convs yields hundreds of layers, each charged).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError
from ..limits import charge, check_tensor
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["read_onnx", "MAX_FOLD_STEPS"]

#: The skip reason of a depthwise conv whose weight is not a constant (as for TFLite).
NOT_CONSTANT = "weights not constant"


_MAX_DEPTH = 64  # constant-folding chain length
#: Most graph nodes constant folding may evaluate for one model.
MAX_FOLD_STEPS = 100_000
_PENDING = object()  # memo marker: being folded (a cycle reaching it is not constant)


class _Graph:
    def __init__(self, graph: Any, path: Path) -> None:
        from onnx import numpy_helper

        self.nh = numpy_helper
        self.path = path
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self._graph = graph
        self._consumers: dict[str, list[Any]] | None = None
        self.graph_outputs = {o.name for o in graph.output}
        self.memo: dict[str, Any] = {}
        self.steps = 0

    @property
    def consumers(self) -> dict[str, list[Any]]:
        """Nodes that read each tensor (built on first use: only batch-norm folding needs it)."""
        if self._consumers is None:
            self._consumers = {}
            for n in self._graph.node:
                for i in n.input:
                    self._consumers.setdefault(i, []).append(n)
        return self._consumers

    def to_array(self, t: Any) -> np.ndarray:
        """A TensorProto as an array, its declared size checked before anything is read."""
        from onnx import TensorProto, helper

        what = f"{self.path}: tensor {t.name!r}"
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{what}: unknown element type {t.data_type}") from None
        if t.data_location == TensorProto.EXTERNAL:
            self._load_external(t, what)
        if t.HasField("raw_data"):
            available = len(t.raw_data)
        else:
            fields = (t.float_data, t.int32_data, t.int64_data, t.double_data, t.uint64_data)
            available = max(len(f) for f in fields) * dtype.itemsize
        check_tensor(what, t.dims, dtype.itemsize, available=available)
        return self.nh.to_array(t)

    def _load_external(self, t: Any, what: str) -> None:
        """Read a tensor's external data, only from a regular file beside the model."""
        info = {e.key: e.value for e in t.external_data}
        base = self.path.resolve().parent
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or base not in target.parents:
            raise FormatError(
                f"{what}: external data {loc!r} is not a file beside the model; refused"
            )
        if not target.is_file():
            raise FormatError(f"{what}: external data file {loc!r} is missing; copy it too")
        offset, size = int(info.get("offset", 0)), target.stat().st_size
        length = int(info.get("length", size - offset))
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(f"{what}: external data range runs past {loc!r}; file corrupt")
        check_tensor(what, [length], 1)
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = 0

    def const(self, name: str, depth: int = 0) -> tuple[np.ndarray, str] | None:
        """Value of ``name`` if it is constant, with the dtype it is stored in (memoised)."""
        got = self.memo.get(name)
        if got is _PENDING:
            return None  # a cycle: not constant
        if got is not None or name in self.memo:
            return got
        if depth > _MAX_DEPTH:
            return None
        self.steps += 1
        if self.steps > MAX_FOLD_STEPS:
            raise FormatError(
                f"{self.path}: constant folding needs more than {MAX_FOLD_STEPS:,} steps; "
                "refused (simplify the graph, e.g. onnxsim, and export it again)"
            )
        self.memo[name] = _PENDING
        try:
            value = self._fold(name, depth)
        finally:
            self.memo.pop(name, None)
        self.memo[name] = value
        return value

    def _fold(self, name: str, depth: int) -> tuple[np.ndarray, str] | None:
        if name in self.inits:
            arr = self.to_array(self.inits[name])
            return arr, str(arr.dtype)
        node = self.producer.get(name)
        if node is None:
            return None
        op = node.op_type
        if op == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    arr = self.to_array(a.t)
                    return arr, str(arr.dtype)
            return None
        if op == "Identity":
            return self.const(node.input[0], depth + 1)
        if op == "Cast":
            inner = self.const(node.input[0], depth + 1)
            if inner is None:
                return None
            charge(f"{node.name or name!r} (Cast)", 4 * inner[0].size)
            return inner[0].astype(np.float32), inner[1]
        if op == "Mul":
            a, b = self.const(node.input[0], depth + 1), self.const(node.input[1], depth + 1)
            if a is None or b is None:
                return None
            what = f"{self.path}: {node.name or name!r}"
            check_tensor(what, _bcast(what, a[0], b[0]), 4)  # charged before it is computed
            stored = a[1] if a[0].size >= b[0].size else b[1]
            return np.multiply(a[0], b[0], dtype=np.float32), stored
        if op in _LAYOUT_OPS:
            return self._layout(node, name, depth)
        if op == "QuantizeLinear":  # fake quantisation of a float weight (QDQ, QAT export)
            x = self.const(node.input[0], depth + 1)
            scale = self.const(node.input[1], depth + 1)
            has_zero = len(node.input) > 2 and node.input[2]
            zero = self.const(node.input[2], depth + 1) if has_zero else None
            attrs = _attrs(node)
            if x is None or scale is None or (has_zero and zero is None):
                return None
            if int(attrs.get("block_size", 0)) or "output_dtype" in attrs:
                return None  # blocked / typed-by-attribute quantisation: not folded here
            what = f"{self.path}: {node.name or name!r}"
            return _quantize(what, x[0], scale[0], None if zero is None else zero[0],
                             int(attrs.get("axis", 1))), x[1]  # fmt: skip
        if op == "DequantizeLinear":
            x = self.const(node.input[0], depth + 1)
            scale = self.const(node.input[1], depth + 1)
            if x is None or scale is None:
                return None
            zero = None
            if len(node.input) > 2 and node.input[2]:
                zero = self.const(node.input[2], depth + 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            what = f"{self.path}: {node.name or name!r}"
            return _dequantize(what, x[0], scale[0], None if zero is None else zero[0], axis), x[1]
        return None

    def _layout(self, node: Any, name: str, depth: int) -> tuple[np.ndarray, str] | None:
        """``Transpose``, ``Reshape``, ``Unsqueeze``, ``Squeeze`` of a constant (an exporter
        that stores a kernel as ``[kh, kw, C, 1]`` or ``[C, kh, kw]`` and reorders it in the
        graph), with ONNX's semantics (``Reshape``'s 0 and -1; axes as attribute or input)."""
        x = self.const(node.input[0], depth + 1)
        if x is None:
            return None
        arr, stored = x
        attrs = _attrs(node)
        what = f"{self.path}: {node.name or name!r} ({node.op_type})"
        axes: Any = attrs.get("axes")
        if len(node.input) > 1 and node.input[1]:
            second = self.const(node.input[1], depth + 1)
            if second is None:
                return None
            axes = second[0]
        try:
            if node.op_type == "Transpose":
                perm = attrs.get("perm") or list(range(arr.ndim))[::-1]
                out = np.transpose(arr, [int(p) for p in perm])
            elif node.op_type == "Reshape":
                shape = [int(d) for d in np.asarray(axes).ravel()]
                if not int(attrs.get("allowzero", 0)):
                    shape = [
                        arr.shape[i] if d == 0 and i < arr.ndim else d for i, d in enumerate(shape)
                    ]
                out = arr.reshape(shape)
            elif node.op_type == "Unsqueeze":
                ax = [int(a) for a in np.asarray(axes).ravel()]
                rank = arr.ndim + len(ax)
                out = np.expand_dims(arr, tuple(sorted(a % rank for a in ax)))
            else:  # Squeeze
                out = np.squeeze(arr) if axes is None else np.squeeze(
                    arr, tuple(int(a) for a in np.asarray(axes).ravel()))  # fmt: skip
        except (ValueError, TypeError, IndexError):  # numpy AxisError is both
            raise FormatError(
                f"{what}: does not fit its constant input; the file is corrupt"
            ) from None
        charge(what, out.nbytes)  # a copy is made when it is harvested
        return out, stored


#: Ops that only reorder or reshape a constant kernel, followed by constant folding.
_LAYOUT_OPS = ("Transpose", "Reshape", "Unsqueeze", "Squeeze")


def _quantize(
    what: str, x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int
) -> np.ndarray:
    """ONNX ``QuantizeLinear``: ``saturate(round_half_even(x / scale) + zero)`` in the zero
    point's integer type (uint8 without one), a 1-D ``scale``/``zero`` along ``axis``."""
    dtype = np.dtype(np.uint8) if zero is None else np.asarray(zero).dtype
    if not np.issubdtype(dtype, np.integer):
        raise FormatError(f"{what}: QuantizeLinear to {dtype}; not an integer type")
    s, z = _scale_zero(scale, zero, x.ndim, axis)
    numel = check_tensor(what, _bcast(what, x, s, z), 4)  # charged before computing
    charge(f"{what} (temporary)", 4 * numel)
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, np.float32) / s) + z
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(
    what: str, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int
) -> np.ndarray:
    """``(q - zero) * scale`` in float32, a 1-D ``scale``/``zero`` along ``axis`` (ONNX's
    per-axis quantisation), charged to the source budget before it is computed."""
    s, z = _scale_zero(scale, zero, q.ndim, axis)
    numel = check_tensor(what, _bcast(what, q, s, z), 4)  # charged before computing
    charge(f"{what} (temporary)", 4 * numel)
    return np.subtract(q, z, dtype=np.float32) * s


def _scale_zero(
    scale: np.ndarray, zero: np.ndarray | None, ndim: int, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """A (de)quantisation's ``scale`` and ``zero`` point (0 without one) in float32, a 1-D
    pair of more than one value shaped to run along ``axis`` of an ``ndim``-D tensor."""
    s = np.asarray(scale, np.float32)
    z = np.zeros_like(s) if zero is None else np.asarray(zero, np.float32)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return s, z


def _bcast(what: str, *arrays: np.ndarray) -> tuple[int, ...]:
    try:
        return np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise FormatError(
            f"{what}: constant operands of incompatible shapes; the file is corrupt"
        ) from None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


#: Ops between a convolution and the batch norm that consumes its output that only turn
#: the conv's own output back into floats: a QDQ file's ``QuantizeLinear`` ->
#: ``DequantizeLinear`` pair after a ``Conv``; ``QLinearConv`` -> ``DequantizeLinear``;
#: ``ConvInteger`` -> (bias ``Add``) -> ``Cast`` -> ``Mul`` by the input and weight scales
#: (the weight scale is in the harvested kernels already, the input's is not the kernel's).
_TO_FLOAT = {
    "Conv": ("QuantizeLinear", "DequantizeLinear"),
    "QLinearConv": ("DequantizeLinear",),
    "ConvInteger": ("Add", "Cast", "Mul"),
}


def _bn_scale(g: _Graph, conv: Any) -> np.ndarray | None:
    """``gamma / sqrt(var + eps)`` of the BatchNormalization that is the only consumer of
    the conv's output (through :data:`_TO_FLOAT` for a quantised conv), else None."""
    if conv.op_type == "FusedConv":
        return None  # its activation comes before any batch norm
    out = conv.output[0]
    passes = _TO_FLOAT.get(conv.op_type, ())
    for _ in range(len(passes) + 1):
        users = g.consumers.get(out, [])
        if len(users) != 1 or out in g.graph_outputs:
            return None
        if users[0].op_type == "BatchNormalization":
            break
        if users[0].op_type not in passes:
            return None
        out = users[0].output[0]
    else:
        return None
    bn = users[0]
    vals = [g.const(i) for i in bn.input[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, _, _, var = (v[0].astype(np.float64) for v in vals)
    eps = float(_attrs(bn).get("epsilon", 1e-5))
    return (gamma / np.sqrt(var + eps)).astype(np.float32)


@register_format(
    "onnx",
    extensions=(".onnx",),
    sniff=lambda head, ext: ext == ".onnx",  # protobuf has no magic bytes
    extra="onnx",
    can_fold_bn=True,
    description="ONNX graph (initializers, Constant nodes, Cast/Mul/DequantizeLinear, "
    "QLinearConv/ConvInteger, BN nodes)",
)
def read_onnx(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of an ONNX model, in graph (topological) order."""
    import onnx

    try:
        # external data is read by _Graph.to_array, only from files beside the model
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise FormatError(
            f"{path}: truncated or corrupt ONNX file ({type(exc).__name__}); export it again"
        ) from None
    if not model.graph.node:
        raise FormatError(f"{path}: not an ONNX model (empty graph); check the file")
    try:
        layers, skipped, notes = _read_graph(path, model, fold_bn)
        return ReadResult(layers, {k: n for k, n in skipped.items() if n}, tuple(notes))
    except KernelAtlasError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise FormatError(f"{path}: corrupt ONNX graph ({type(exc).__name__})") from None
    except Exception as exc:  # a well-formed protobuf whose contents make no sense
        raise FormatError(
            f"{path}: corrupt ONNX graph ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
            "export it again"
        ) from None


#: Convolution ops and the input index of their weight (layout ``[M, C/group, kh, kw]``):
#: ``Conv``, the quantised convolutions onnxruntime's quantizer writes (``QLinearConv``:
#: static, QOperator format; ``ConvInteger``: dynamic) and the ``FusedConv`` (conv +
#: activation) of its optimised files.
_CONV_WEIGHT = {
    ("", "Conv"): 1,
    ("", "QLinearConv"): 3,
    ("", "ConvInteger"): 1,
    ("com.microsoft", "FusedConv"): 1,
}
#: onnxruntime's NCHWc convolutions (files saved at ORT_ENABLE_ALL): their weights are
#: reordered into CPU-specific channel blocks, so they are counted, never read as kernels.
_NCHWC = "com.microsoft.nchwc"


def _conv_weight(g: _Graph, node: Any, notes: list[str]) -> tuple[np.ndarray, str] | None:
    """The float weight of a convolution node and its stored dtype, or None if not constant.

    ``QLinearConv`` weights are dequantised with their own scale and zero point (per tensor
    or per output channel); ``ConvInteger`` weights with their zero point and the weight
    scale onnxruntime multiplies its output by (:func:`_conv_integer_scale`), else they are
    kept in quantised units and a note says so.
    """
    op = node.op_type
    got = g.const(node.input[_CONV_WEIGHT[node.domain if node.domain != "ai.onnx" else "", op]])
    if got is None or op not in ("QLinearConv", "ConvInteger"):
        return got
    q, stored = got
    what = f"{g.path}: {node.name or node.output[0]!r}"
    if op == "QLinearConv":
        scale = g.const(node.input[4])
        zero = g.const(node.input[5]) if len(node.input) > 5 and node.input[5] else None
        if scale is None:
            return None
        return _dequantize(what, q, scale[0], None if zero is None else zero[0], 0), stored
    zero = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    scale = _conv_integer_scale(g, node)
    if scale is None:
        notes.append(
            f"ConvInteger {node.name or node.output[0]!r}: weight scale not found, kernels "
            "kept in quantised units (shapes exact, magnitudes relative)"
        )
        scale = np.ones(1, np.float32)
    return _dequantize(what, q, scale, None if zero is None else zero[0], 0), stored


def _conv_integer_scale(g: _Graph, node: Any) -> np.ndarray | None:
    """The weight scale of a ``ConvInteger`` as onnxruntime's dynamic quantizer writes it:
    the output (through a bias ``Add`` and a ``Cast``) is multiplied by
    ``Mul(input_scale, weight_scale)``, the input's scale computed at run time, the weight's
    a constant (scalar or per output channel). None for any other pattern."""
    out = node.output[0]
    for _ in range(3):
        users = g.consumers.get(out, [])
        if len(users) != 1:
            return None
        user = users[0]
        if user.op_type in ("Add", "Cast"):
            out = user.output[0]
            continue
        if user.op_type != "Mul":
            return None
        other = user.input[1] if user.input[0] == out else user.input[0]
        prod = g.producer.get(other)
        if prod is None or prod.op_type != "Mul":
            return None
        consts = [c for c in (g.const(i) for i in prod.input) if c is not None]
        if len(consts) != 1:  # both constant: input and weight scales not told apart
            return None
        scale = np.asarray(consts[0][0], np.float32)
        return scale if scale.ndim <= 1 else None
    return None


def _read_graph(path: Path, model: Any, fold_bn: bool) -> tuple[list[LayerKernels], int, list[str]]:
    g = _Graph(model.graph, Path(path))
    layers: list[LayerKernels] = []
    skipped = 0
    notes: list[str] = []
    nchwc = not_constant = 0
    for node in model.graph.node:
        op = (node.domain if node.domain != "ai.onnx" else "", node.op_type)
        if op == (_NCHWC, "Conv") and int(_attrs(node).get("group", 1)) > 1:
            nchwc += 1
            continue
        if op not in _CONV_WEIGHT or len(node.input) <= _CONV_WEIGHT[op]:
            continue
        attrs = _attrs(node)
        group = int(attrs.get("group", 1))
        if group < 2:
            continue
        got = _conv_weight(g, node, notes)
        if got is None:  # weight computed at run time: nothing to harvest, but counted
            wname = node.input[_CONV_WEIGHT[op]]
            if _declared_in_channels(model.graph, wname) in (1, None):
                not_constant += 1
            continue
        w, stored = got
        if w.ndim != 4 or w.shape[1] != 1 or w.shape[0] % group:
            continue  # grouped, not depthwise
        c, _, kh, kw = w.shape
        if (kh, kw) == (1, 1):
            skipped += 1
            continue
        name = node.name or node.output[0]
        charge(f"kernels of {name!r}", 4 * w.size)  # each layer is a copy in the bank
        k = np.asarray(w, np.float32).reshape(c, kh, kw)
        scale = _bn_scale(g, node) if fold_bn else None
        if scale is not None:
            k = k * scale[:, None, None]
        layers.append(
            LayerKernels(
                layer=name,
                layer_index=len(layers),
                weights=np.ascontiguousarray(k, np.float32),
                stride=int(max(attrs.get("strides", [1]))),
                dilation=int(max(attrs.get("dilations", [1]))),
                bn_folded=scale is not None,
                dtype=stored,
            )
        )
    unfolded = sum(not lk.bn_folded for lk in layers)
    if fold_bn and unfolded:
        warnings.warn(
            f"{path}: fold_bn: {unfolded} of {len(layers)} depthwise layers have no following "
            "BatchNormalization node (already folded by the exporter?); kept unfolded "
            "(bn_folded=False)",
            stacklevel=4,
        )
    return layers, {"1x1": skipped, "nchwc": nchwc, NOT_CONSTANT: not_constant}, notes


def _declared_in_channels(graph: Any, name: str) -> int | None:
    """Dimension 1 (input channels per group) of a tensor's declared type, None if unknown:
    a non-constant weight with more than 1 is a grouped conv, not a depthwise one."""
    for vi in (*graph.value_info, *graph.input):
        if vi.name == name and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None
