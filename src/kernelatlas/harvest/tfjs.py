"""Reader: TensorFlow.js models (``model.json`` + ``.bin`` weight shards; nothing is run).

A TF.js model is a JSON manifest whose ``weightsManifest`` lists weight groups; each group
names its shard files (``paths``) and its weights in storage order (``name``, ``shape``,
``dtype``, optional ``quantization``). A group's weights are the concatenation of its shards.
Three kinds, all read the same way:

- **graph models** (``format: graph-model``, ``tfjs-converter`` output): depthwise = a
  ``DepthwiseConv2dNative`` / ``FusedDepthwiseConv2dNative`` node whose filter (input 1,
  through ``Identity`` nodes) is a ``Const`` holding a weight ``[kh, kw, C, mult]``; strides
  and dilations from the node's attributes.
- **layers models** (a Keras model converted): the Keras config in ``modelTopology``
  decides, as for Keras files (``DepthwiseConv2D``, ``SeparableConv2D``'s depthwise part,
  nested models; see :mod:`kernelatlas.harvest.keras_h5`); optimizer weights
  (``group: optimizer``) are never read.
- **bare weight manifests** (a JSON list of groups, e.g. ``face-api`` models, whose
  architecture lives in code): a 4-D weight named ``.../depthwise_filter``,
  ``depthwise_kernel`` or ``depthwise_weights``.

Weights are fp32, float16 (``quantization: {dtype: float16}``) or affine-quantised
``uint8``/``uint16`` (``value = min + scale * q``). Safety: the manifest's sizes are checked
against the shard files' sizes before any weight is read; shard paths must stay inside the
model's folder (no absolute paths, no ``..``, no symlink out of it, regular files only);
each weight's size is checked against :mod:`kernelatlas.limits` and charged to the source
budget before it is read. ``bn_folded`` is False: the converter may have folded batch norms
into graph-model filters, but the file does not say.

A path to the model's folder is accepted too (it reads ``model.json``).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import FormatError, UnsafeFileError
from ..limits import TensorTooLargeError, charge, check_tensor
from .base import LayerKernels, read_or_say
from .formats import ReadResult, register_format
from .keras_h5 import config_layers, hwcm_layer, is_depthwise, match_weights

__all__ = ["read_tfjs", "DEPTHWISE_OPS", "MANIFEST_NAME"]

#: Graph-model ops whose input 1 is a depthwise filter ``[kh, kw, C, mult]``.
DEPTHWISE_OPS = ("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
#: The manifest's usual name (read when a folder is given).
MANIFEST_NAME = "model.json"
_MAX_JSON_BYTES = 256 * 2**20
_MAX_STRINGS = 1_000_000  # elements of a string weight whose length must be walked
#: bytes per stored element, by (quantisation) dtype; "string" is variable-length
_ITEMSIZE = {"float32": 4, "int32": 4, "bool": 1, "complex64": 8, "float16": 2, "uint8": 1,
             "uint16": 2, "int8": 1, "int16": 2}  # fmt: skip
_NP = {"float32": "<f4", "int32": "<i4", "float16": "<f2", "uint8": "u1", "uint16": "<u2",
       "int8": "i1", "int16": "<i2"}  # fmt: skip


@dataclass(frozen=True)
class _Weight:
    name: str
    shape: tuple[int, ...]
    dtype: str  # the logical dtype
    stored: str  # what the bytes are (quantisation dtype, or dtype)
    scale: float | None
    minimum: float | None
    group: int
    offset: int | None  # None: after a string weight whose length is not walked yet
    nbytes: int | None  # None for strings


def _regular_file(p: Path, what: str) -> os.stat_result:
    try:
        st = p.stat()
    except OSError as exc:
        raise FormatError(f"{what}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{what}: not a regular file (a device, FIFO or socket); refused")
    return st


def _load_json(path: Path) -> Any:
    st = _regular_file(path, str(path))
    if st.st_size > _MAX_JSON_BYTES:
        raise TensorTooLargeError(
            f"{path}: a {st.st_size:,}-byte manifest; over the {_MAX_JSON_BYTES:,}-byte limit"
        )
    charge("the parsed manifest", 16 * st.st_size)  # Python objects: ~16x the JSON text
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(
            f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:80]}); get it again"
        ) from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deep; the file is corrupt") from None


def _shape(raw: Any, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) for d in raw):
        raise FormatError(f"{what}: shape {str(raw)[:40]} is not a list of integers")
    if any(d < 0 for d in raw) or len(raw) > 32:
        raise FormatError(f"{what}: shape {raw} is not a tensor shape; the manifest is corrupt")
    return tuple(raw)


def _weights(manifest: Any, where: str) -> list[_Weight]:
    """Every weight of the manifest, with its group and byte range (declared sizes)."""
    if not isinstance(manifest, list):
        raise FormatError(f"{where}: weightsManifest is not a list of groups")
    out: list[_Weight] = []
    for gi, group in enumerate(manifest):
        if not isinstance(group, dict) or not isinstance(group.get("weights"), list):
            raise FormatError(f"{where}: weight group {gi} has no list of weights")
        offset: int | None = 0
        for spec in group["weights"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise FormatError(f"{where}: weight group {gi} has an entry without a name")
            what = f"{where}: weight {spec['name']!r}"
            shape = _shape(spec.get("shape"), what)
            dtype = spec.get("dtype", "float32")
            quant = spec.get("quantization")
            scale = minimum = None
            stored = dtype
            if quant is not None:
                if not isinstance(quant, dict) or quant.get("dtype") not in ("uint8", "uint16",
                                                                             "float16"):  # fmt: skip
                    raise FormatError(f"{what}: unknown quantization {str(quant)[:60]}")
                stored = quant["dtype"]
                if stored != "float16":
                    try:
                        scale, minimum = float(quant["scale"]), float(quant["min"])
                    except (KeyError, TypeError, ValueError):
                        raise FormatError(f"{what}: quantization without scale/min") from None
            if stored != "string" and stored not in _ITEMSIZE:
                raise FormatError(f"{what}: unknown dtype {str(stored)[:20]!r}")
            numel = math.prod(shape)
            nbytes = None if stored == "string" else numel * _ITEMSIZE[stored]
            out.append(_Weight(spec["name"], shape, str(dtype), stored, scale, minimum, gi,
                               offset, nbytes))  # fmt: skip
            offset = None if nbytes is None or offset is None else offset + nbytes
    return out


class _Shards:
    """The concatenated shards of one weight group, read by byte range."""

    def __init__(self, folder: Path, paths: Any, where: str, gi: int) -> None:
        if not isinstance(paths, list) or not paths:
            raise FormatError(f"{where}: weight group {gi} lists no shard paths")
        real = folder.resolve()
        self.files: list[tuple[Path, int]] = []
        for rel in paths:
            self.files.append(_confined(folder, real, rel, where))
        self.size = sum(s for _, s in self.files)
        self._open: dict[int, Any] = {}

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        start = 0
        for k, (path, size) in enumerate(self.files):
            end = start + size
            if length and offset < end and offset + length > start:
                lo = max(offset, start) - start
                hi = min(offset + length, end) - start
                f = self._open.get(k)
                if f is None:
                    f = self._open[k] = open(path, "rb")  # noqa: SIM115 - closed by close()
                f.seek(lo)
                chunk = f.read(hi - lo)
                if len(chunk) != hi - lo:
                    raise FormatError(f"{path}: shorter than when it was checked; read it again")
                out += chunk
            start = end
        if len(out) != length:
            raise FormatError("weights run past the end of their shards; the model is corrupt")
        return bytes(out)


def _confined(folder: Path, real: Path, rel: Any, where: str) -> tuple[Path, int]:
    """A shard path inside the model's folder: its resolved path and size."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise FormatError(f"{where}: shard path {str(rel)[:60]!r} is not a file name")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafeFileError(
            f"{where}: shard path {rel[:80]!r} points outside the model's folder; refused"
        )
    target = folder.joinpath(*pure.parts)
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise FormatError(
            f"{where}: shard {rel[:80]!r} is missing; copy it beside the manifest"
        ) from None
    if real != resolved and real not in resolved.parents:
        raise UnsafeFileError(
            f"{where}: shard {rel[:80]!r} is a link to {str(resolved)[:80]!r}, outside the "
            "model's folder; refused"
        )
    st = _regular_file(resolved, f"{where}: shard {rel[:80]!r}")
    return resolved, st.st_size


def _string_bytes(shards: _Shards, offset: int, numel: int, what: str) -> int:
    """Bytes of a string weight (each element: uint32 length, then the bytes)."""
    if numel > _MAX_STRINGS or offset + 4 * numel > shards.size:
        raise FormatError(f"{what}: {numel:,} strings do not fit their shards; corrupt manifest")
    pos = offset
    for _ in range(numel):
        (n,) = np.frombuffer(shards.read(pos, 4), "<u4")
        pos += 4 + int(n)
        if pos > shards.size:
            raise FormatError(f"{what}: strings run past the shards; the manifest is corrupt")
    return pos - offset


def _node_name(ref: Any) -> str:
    s = str(ref)
    s = s[1:] if s.startswith("^") else s
    return s.rsplit(":", 1)[0] if ":" in s and s.rsplit(":", 1)[1].isdigit() else s


def _ints(attr: Any) -> list[int]:
    try:
        return [int(v) for v in attr["list"]["i"]]
    except (KeyError, TypeError, ValueError):
        return []


def _graph_layers(topology: dict, names: set[str]) -> list[tuple[str, str, dict]]:
    """``(layer, weight name, {strides, dilation_rate})`` for each depthwise node."""
    nodes = list(topology.get("node") or [])
    library = topology.get("library")
    if isinstance(library, dict):
        for fn in library.get("function") or []:
            if isinstance(fn, dict):
                nodes += list(fn.get("nodeDef") or [])
    by_name = {
        n["name"]: n for n in nodes if isinstance(n, dict) and isinstance(n.get("name"), str)
    }
    out = []
    for node in nodes:
        if not isinstance(node, dict) or node.get("op") not in DEPTHWISE_OPS:
            continue
        inputs = node.get("input") or []
        if len(inputs) < 2:
            continue
        src = _node_name(inputs[1])
        for _ in range(64):  # through Identity nodes
            n = by_name.get(src)
            if n is None or n.get("op") != "Identity" or not n.get("input"):
                break
            src = _node_name(n["input"][0])
        attr = node.get("attr") if isinstance(node.get("attr"), dict) else {}
        cfg = {"strides": _ints(attr.get("strides")) or [1],
               "dilation_rate": _ints(attr.get("dilations")) or [1]}  # fmt: skip
        out.append((str(node["name"]), src if src in names else "", cfg))
    return out


def _decode(raw: bytes, w: _Weight) -> np.ndarray:
    if w.stored not in _NP:
        raise FormatError(f"weight {w.name!r}: a {w.stored} depthwise filter; expected floats")
    arr = np.frombuffer(raw, _NP[w.stored]).reshape(w.shape)
    if w.scale is not None:
        return arr.astype(np.float32) * np.float32(w.scale) + np.float32(w.minimum)
    return arr.astype(np.float32)


def _manifest_path(path: Path) -> Path:
    return path / MANIFEST_NAME if path.is_dir() else path


def _read(path: Path) -> ReadResult:
    manifest_file = _manifest_path(path)
    where = str(manifest_file)
    data = _load_json(manifest_file)
    if isinstance(data, list):
        kind, groups, topology = "weights", data, None
    elif isinstance(data, dict) and "weightsManifest" in data:
        groups, topology = data["weightsManifest"], data.get("modelTopology")
        graph = data.get("format") == "graph-model" or (
            isinstance(topology, dict) and isinstance(topology.get("node"), list)
        )
        kind = "graph" if graph else "layers"
    else:
        raise FormatError(f"{where}: a JSON file without weightsManifest is not a TF.js model")
    weights = _weights(groups, where)
    folder = manifest_file.parent
    shards = [_Shards(folder, g.get("paths"), where, gi) for gi, g in enumerate(groups)]
    try:
        return _harvest(kind, topology, groups, weights, shards, where)
    finally:
        for sh in shards:
            sh.close()


def _harvest(
    kind: str, topology: Any, groups: list, weights: list[_Weight], shards: list[_Shards],
    where: str,
) -> ReadResult:  # fmt: skip
    for gi, sh in enumerate(shards):  # every size checked before any weight is read
        ws = [w for w in weights if w.group == gi]
        fixed = sum(w.nbytes or 0 for w in ws)
        exact = all(w.nbytes is not None for w in ws)
        if fixed > sh.size or (exact and fixed != sh.size):
            raise FormatError(
                f"{where}: weight group {gi} declares {fixed:,} bytes but its shards hold "
                f"{sh.size:,}; the manifest or a shard is wrong (get the model again)"
            )
    picked: list[tuple[str, _Weight | None, dict | None]] = []
    if kind == "graph":
        by_name: dict[str, _Weight] = {}
        for w in weights:
            by_name.setdefault(w.name, w)
        for layer, wname, cfg in _graph_layers(topology, set(by_name)):
            picked.append((layer, by_name.get(wname), cfg))
    else:  # optimizer state (group: optimizer) is never a candidate
        specs = [spec for g in groups for spec in g["weights"]]
        model = {}
        for w, spec in zip(weights, specs, strict=True):
            if spec.get("group") != "optimizer":
                model.setdefault(w.name, w)
        dw = config_layers(topology) if isinstance(topology, dict) else []
        for lay, wname in match_weights(dw, model):
            name = wname.rsplit("/", 1)[0] if lay is None else "/".join((*lay.scope, lay.name))
            picked.append((name, model[wname], lay.config if lay else None))
    layers: list[LayerKernels] = []
    skipped: dict[str, int] = {}
    for layer, w, cfg in picked:
        if w is None:
            skipped["filter not constant"] = skipped.get("filter not constant", 0) + 1
            continue
        what = f"{where}: weight {w.name!r}"
        if len(w.shape) != 4:
            raise FormatError(f"{what}: depthwise filter of shape {list(w.shape)}, expected 4-D")
        if not is_depthwise(tuple(w.shape), cfg):  # a grouped convolution, not a depthwise one
            continue
        if w.shape[:2] == (1, 1):
            skipped["1x1"] = skipped.get("1x1", 0) + 1
            continue
        offset = w.offset if w.offset is not None else _offset(weights, w, shards, where)
        sh = shards[w.group]
        assert w.nbytes is not None
        check_tensor(what, w.shape, _ITEMSIZE[w.stored], available=sh.size - offset)
        arr = _decode(sh.read(offset, w.nbytes), w)
        layers.append(hwcm_layer(layer, len(layers), arr, cfg, w.stored))
    return ReadResult(layers, skipped)


def _offset(weights: list[_Weight], target: _Weight, shards: list[_Shards], where: str) -> int:
    """The byte offset of a weight that follows string weights in its group."""
    pos = 0
    for w in weights:
        if w.group != target.group:
            continue
        if w is target:
            return pos
        if w.nbytes is None:
            pos += _string_bytes(shards[w.group], pos, math.prod(w.shape),
                                 f"{where}: weight {w.name!r}")  # fmt: skip
        else:
            pos += w.nbytes
    raise FormatError(f"{where}: weight {target.name!r} not in its group")  # pragma: no cover


def _sniff(head: bytes, ext: str) -> bool:
    start = head.lstrip()[:1]
    if start == b"{":
        return ext == ".json" or any(k in head for k in (b"weightsManifest", b"modelTopology"))
    return start == b"[" and (ext == ".json" or b'"paths"' in head)


@register_format(
    "tfjs",
    extensions=(".json",),
    sniff=_sniff,
    folder_file=MANIFEST_NAME,
    description="TensorFlow.js graph/layers model or weights manifest (model.json + .bin shards)",
)
def read_tfjs(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a TF.js model (a manifest, or the folder holding model.json)."""
    return read_or_say(Path(path), _read, "TF.js model", "get it again")
