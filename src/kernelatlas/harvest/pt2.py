"""Reader: PyTorch 2 exported programs (``torch.export.save``: a ``.pt2`` zip), parsed as
JSON and raw bytes: no pickle is ever loaded and no code runs.

The archive holds ``<root>/models/<name>.json`` (the graph: ``aten.conv2d`` /
``aten.convolution`` nodes with their ``weight`` input, ``stride``, ``dilation`` and
``groups``; the signature maps graph inputs to parameter names) and
``<root>/data/weights/model_weights_config.json`` (and ``data/constants/...``: each tensor's
file, dtype, sizes, strides and storage offset), the bytes in ``data/weights/<file>``.
Depthwise = a convolution with ``groups > 1`` whose weight is ``[C * mult, 1, kh, kw]``, in
graph order; its kernels are ``weight[:, 0]``. A tensor stored as a pickle
(``use_pickle``) is refused, never unpickled. Batch norms are not folded (``--fold-bn`` is
refused: export a model with its batch norms folded, or harvest the nn.Module).
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, UnsafeFileError
from ..limits import check_tensor, zip_member
from .base import LayerKernels
from .formats import ReadResult, register_format
from .torch_pickle import _DTYPES, _decode

__all__ = ["read_pt2", "CONV_TARGETS"]

#: Graph ops read as convolutions, and the position of ``groups`` among their inputs.
CONV_TARGETS = {
    "torch.ops.aten.conv2d.default": 6,
    "torch.ops.aten.convolution.default": 8,
}
# torch._export.serde.schema.ScalarType -> kernelatlas's torch dtype names
_SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 12: "bool", 13: "bfloat16", 28: "uint16", 29: "float8_e4m3fn",
    30: "float8_e5m2", 34: "uint32", 35: "uint64",
}  # fmt: skip
_MAX_JSON = 256 * 2**20  # a graph or weights config, uncompressed


def _sniff(head: bytes, ext: str) -> bool:
    return head[:2] == b"PK" and ext == ".pt2"


def _json(zf: zipfile.ZipFile, name: str, path: Path) -> Any:
    try:
        return json.loads(zip_member(zf, name, path, _MAX_JSON))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError(f"{path}: {name} is not JSON; the file is corrupt") from None


def _arg(node: dict, name: str, index: int) -> Any:
    """A node input by name (the serialised schema names them), else by position."""
    inputs = node.get("inputs") if isinstance(node.get("inputs"), list) else []
    for i, inp in enumerate(inputs):
        if isinstance(inp, dict) and (
            inp.get("name") == name or (i == index and not inp.get("name"))
        ):
            return inp.get("arg")
    return None


def _ints(arg: Any, default: int = 1) -> int:
    if not isinstance(arg, dict):
        return default
    if isinstance(arg.get("as_int"), int):
        return int(arg["as_int"])
    vals = arg.get("as_ints")
    if isinstance(vals, list) and vals and all(isinstance(v, int) for v in vals):
        return int(max(vals))
    return default


def _size(v: Any) -> int:
    n = v.get("as_int") if isinstance(v, dict) else v
    if not isinstance(n, int) or n < 0:
        raise FormatError("a tensor size that is not a fixed integer (a dynamic weight shape?)")
    return n


def _tensor(
    zf: zipfile.ZipFile, root: str, folder: str, entry: Any, name: str, path: Path, big: bool
) -> tuple[np.ndarray, str]:
    """The array of one weights-config entry (float32) and its stored dtype's name;
    ``big``: the archive's byte order is big-endian."""
    what = f"{path}: {name!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("tensor_meta"), dict):
        raise FormatError(f"{what}: no tensor description; the file is corrupt")
    if entry.get("use_pickle"):
        raise UnsafeFileError(
            f"{what} is stored as a pickle, which kernelatlas never loads: export it again "
            "(torch.export.save stores plain tensors as raw bytes)"
        )
    meta = entry["tensor_meta"]
    dtype = _DTYPES.get(_SCALAR_TYPES.get(meta.get("dtype"), ""))
    if dtype is None or not dtype.floating:
        raise FormatError(f"{what}: weights of dtype code {meta.get('dtype')!r} are not read")
    shape = tuple(_size(s) for s in meta.get("sizes") or [])
    strides = tuple(_size(s) for s in meta.get("strides") or [])
    offset = _size(meta.get("storage_offset", 0))
    file = entry.get("path_name")
    if not isinstance(file, str) or "/" in file or file in ("", ".", ".."):
        raise FormatError(f"{what}: weight file {str(file)[:40]!r} is not a file name")
    member = f"{root}data/{folder}/{file}"
    if member not in zf.NameToInfo:
        raise FormatError(f"{what}: {member} is missing; the file is truncated")
    if len(strides) != len(shape):
        raise FormatError(f"{what}: {len(shape)} sizes but {len(strides)} strides")
    check_tensor(what, shape, dtype.itemsize)
    numel = math.prod(shape)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if numel else 0
    raw = zip_member(zf, member, path)
    count = offset + span
    if count * dtype.itemsize > len(raw):
        raise FormatError(f"{what}: its view runs past the {len(raw):,} bytes of {member}")
    flat = _decode(raw, dtype, big, 0, count) if numel else np.zeros(0, np.float32)
    arr = np.lib.stride_tricks.as_strided(
        flat[offset:], shape, tuple(s * flat.itemsize for s in strides), writeable=False
    )
    return np.array(arr, np.float32), dtype.name


@register_format(
    "pt2",
    extensions=(".pt2",),
    sniff=_sniff,
    description="PyTorch 2 exported program (torch.export.save .pt2): graph JSON + raw "
    "tensors, no pickle",
)
def read_pt2(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a ``torch.export`` archive, in graph order."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FormatError(
            f"{path}: not a readable .pt2 zip ({type(exc).__name__}); save it again"
        ) from None
    with zf:
        names = zf.namelist()
        graphs = sorted(
            n
            for n in names
            if n.count("/") == 2 and n.split("/")[1] == "models" and n.endswith(".json")
        )
        if not graphs:
            hint = " (an AOTInductor package holds compiled code, not a graph)" if any(
                "/aotinductor/" in n for n in names) else ""  # fmt: skip
            raise FormatError(
                f"{path}: a .pt2 without an exported program{hint}: save it with torch.export.save"
            )
        root = graphs[0].split("/")[0] + "/"
        order = f"{root}byteorder"
        big = order in zf.NameToInfo and zip_member(zf, order, path, 64).strip() == b"big"
        configs = {}
        for folder, file in (
            ("weights", "model_weights_config.json"),
            ("constants", "model_constants_config.json"),
        ):
            member = f"{root}data/{folder}/{file}"
            if member in zf.NameToInfo:
                doc = _json(zf, member, path)
                for k, v in (
                    ((doc or {}).get("config") or {}).items() if isinstance(doc, dict) else ()
                ):
                    configs[k] = (folder, v)
        layers: list[LayerKernels] = []
        skipped = 0
        for graph_file in graphs:
            doc = _json(zf, graph_file, path)
            gm = doc.get("graph_module") if isinstance(doc, dict) else None
            if not isinstance(gm, dict) or not isinstance(gm.get("graph"), dict):
                raise FormatError(f"{path}: {graph_file} holds no graph; the file is corrupt")
            params: dict[str, str] = {}  # graph input name -> weights-config key
            for spec in (gm.get("signature") or {}).get("input_specs") or []:
                for kind, key in (("parameter", "parameter_name"), ("buffer", "buffer_name"),
                                  ("tensor_constant", "tensor_constant_name")):  # fmt: skip
                    s = spec.get(kind) if isinstance(spec, dict) else None
                    if isinstance(s, dict) and isinstance(s.get("arg"), dict):
                        params[str(s["arg"].get("name"))] = str(s.get(key))
            for node in gm["graph"].get("nodes") or []:
                if not isinstance(node, dict) or node.get("target") not in CONV_TARGETS:
                    continue
                groups = _ints(_arg(node, "groups", CONV_TARGETS[node["target"]]))
                weight = _arg(node, "weight", 1)
                wname = (
                    (weight or {}).get("as_tensor", {}).get("name")
                    if isinstance(weight, dict)
                    else None
                )
                key = params.get(str(wname))
                if groups < 2 or key not in configs:
                    continue  # a dense conv, or a weight computed in the graph
                folder, entry = configs[key]
                w, stored = _tensor(zf, root, folder, entry, key, path, big)
                if w.ndim != 4 or w.shape[1] != 1:
                    continue  # grouped, but more than one input channel per group
                if w.shape[2:] == (1, 1):
                    skipped += 1
                    continue
                layers.append(LayerKernels(
                    layer=key.removesuffix(".weight"), layer_index=len(layers),
                    weights=np.ascontiguousarray(w[:, 0]),
                    stride=_ints(_arg(node, "stride", 3)), dilation=_ints(_arg(node, "dilation", 5)),
                    bn_folded=False, dtype=stored,
                ))  # fmt: skip
    return ReadResult(layers, {"1x1": skipped} if skipped else {})
