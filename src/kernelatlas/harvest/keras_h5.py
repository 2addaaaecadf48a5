"""Reader: Keras weights (h5py; TensorFlow/Keras itself is not needed).

Depthwise kernels are ``[kh, kw, C, mult]``; channel ``c*mult + m`` holds ``[:, :, c, m]``
(the PyTorch order). Depthwise layers are found **by class** in the saved config
(``DepthwiseConv2D``, and the depthwise part of ``SeparableConv2D``), in model order and in
nested models at any depth (a ``Functional`` backbone inside a model, the usual
transfer-learning save). Optimizer state (``optimizer_weights/``, ``optimizer/``) is never
read. Three layouts:

- Legacy ``.h5`` (Keras 2, and Keras 3 ``model.save('m.h5')``): ``model_weights`` holds one
  group per top-level layer (``layer_names``), each listing ``weight_names``; a nested
  model's group holds all its weights (``<nested>/block_1_depthwise/kernel``: Keras 3 names
  a depthwise kernel ``kernel``, Keras 2 ``depthwise_kernel:0``). The classes and strides
  come from ``model_config``. A weights-only Keras 2 file (no config) falls back to the name
  ``depthwise_kernel``, which only depthwise kernels carry.
- Keras 3 ``.keras`` archive: ``config.json`` + ``model.weights.h5``, whose groups are named
  by class and position (``layers/functional/layers/depthwise_conv2d_3/vars/0``), as Keras
  writes them; ``vars`` groups carrying a ``name`` attribute are checked against the config.
- A bare Keras 3 ``.weights.h5`` holds no layer classes: refused, pointing to ``.keras``.

Safety: only the model's own file is read. HDF5 external links, external raw storage and
virtual datasets are refused; every dataset's declared size (and chunk size) is checked
against :mod:`kernelatlas.limits` and charged to the source budget before it is read (so a
gzip-compressed dataset is charged by its decompressed size); so are ``.keras`` members, by
their declared uncompressed size, before decompression. The walk over groups and
attributes is bounded by work (:data:`MAX_HDF5_OBJECTS`), not by a guess at loops.
libhdf5 is C and can crash on a corrupt file, so on POSIX the file is read in a forked
child that hands back plain arrays (no pickle) through an anonymous temporary file (nothing
is left on disk, whatever happens to either process). The child has its own deadline
(``RLIMIT_CPU`` and ``alarm``), dies with its parent (``PR_SET_PDEATHSIG``), and a crash or a
read that does not finish in 60 s (+1 s per 10 MB) becomes a
:class:`~kernelatlas.errors.FormatError`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import tempfile
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError, UnsafeFileError
from ..limits import TensorTooLargeError, charge, check_tensor, zip_member
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = [
    "read_keras",
    "DEPTHWISE_CLASSES",
    "GROUPED_CLASSES",
    "is_depthwise",
    "MAX_HDF5_OBJECTS",
    "ConfigLayer",
    "config_layers",
    "match_weights",
    "hwcm_layer",
]

#: Keras layer classes that hold a depthwise kernel.
DEPTHWISE_CLASSES = ("DepthwiseConv2D", "SeparableConv2D")
#: Classes of grouped convolutions, depthwise when each group has one input channel (a
#: kernel ``[kh, kw, 1, filters]``): Keras's own ConvNeXt writes its depthwise convs as
#: ``Conv2D(groups=channels)``.
GROUPED_CLASSES = ("Conv2D", "Convolution2D")
#: Variable names of the depthwise kernel, by class (Keras 3 ``DepthwiseConv2D``: ``kernel``).
KERNEL_VARS: dict[str, tuple[str, ...]] = {
    "DepthwiseConv2D": ("kernel", "depthwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel",),
    **dict.fromkeys(GROUPED_CLASSES, ("kernel",)),
}
#: Without a config, only these variable names say "depthwise kernel" unambiguously.
NAME_RULE_VARS = ("depthwise_kernel", "depthwise_filter", "depthwise_weights")
#: Most HDF5 links, groups and attributes one file may make the reader look at.
MAX_HDF5_OBJECTS = 1_000_000
_MAX_CONFIG_BYTES = 256 * 2**20  # config.json / model_config attribute
_MAX_NESTING = 64


# -- the saved config ----------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigLayer:
    """A depthwise layer of a saved Keras config.

    Attributes
    ----------
    name : the layer's name.
    class_name : ``DepthwiseConv2D`` or ``SeparableConv2D``.
    config : its ``config`` dict (strides, dilation_rate...).
    scope : names of the nested models around it, outermost first (empty: top level).
    h5path : where a Keras 3 ``.keras`` archive keeps its variables
        (``layers/functional/layers/depthwise_conv2d_2``).
    """

    name: str
    class_name: str
    config: dict
    scope: tuple[str, ...]
    h5path: str


def _snake(class_name: str) -> str:
    """Keras's ``naming.to_snake_case`` (``DepthwiseConv2D`` -> ``depthwise_conv2d``)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _model_layers(node: Any) -> list | None:
    """The ``layers`` list of a model config node, or None when it is not a model."""
    if not isinstance(node, dict):
        return None
    cfg = node.get("config", node)
    if isinstance(cfg, list):  # Keras 2.0 Sequential: config is the list of layers
        return cfg
    if isinstance(cfg, dict) and isinstance(cfg.get("layers"), list):
        return cfg["layers"]
    return None


def config_layers(config: Any) -> list[ConfigLayer]:
    """The depthwise layers of a saved model config, in model order, nested models included.

    ``config`` is the model's ``{"class_name": ..., "config": {...}}`` (``config.json``,
    the ``model_config`` attribute, a TF.js layers model's topology).
    """
    out: list[ConfigLayer] = []
    budget = [MAX_HDF5_OBJECTS]

    def walk(layers: list, scope: tuple[str, ...], prefix: str) -> None:
        if len(scope) > _MAX_NESTING:
            raise FormatError(f"models nested more than {_MAX_NESTING} deep; the file is corrupt")
        used: dict[str, int] = {}
        for entry in layers:
            budget[0] -= 1
            if budget[0] < 0:
                raise FormatError(f"config with more than {MAX_HDF5_OBJECTS:,} layers; refused")
            if not isinstance(entry, dict):
                continue
            cls = entry.get("class_name")
            cls = cls if isinstance(cls, str) else ""
            cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            name = cfg.get("name", entry.get("name", ""))
            name = name if isinstance(name, str) else str(name)
            snake = _snake(cls)
            n = used.get(snake)
            used[snake] = 0 if n is None else n + 1
            path = f"{prefix}/{snake}" if n is None else f"{prefix}/{snake}_{n + 1}"
            if cls in DEPTHWISE_CLASSES or (
                cls in GROUPED_CLASSES and _max2(cfg.get("groups")) > 1
            ):
                out.append(ConfigLayer(name, cls, cfg, scope, path))
                continue
            inner = _model_layers(entry)
            if inner is not None:
                walk(inner, (*scope, name), f"{path}/layers")

    top = _model_layers(config)
    if top is None and isinstance(config, dict) and isinstance(config.get("model_config"), dict):
        top = _model_layers(config["model_config"])  # TF.js layers-model topology
    if top is not None:
        walk(top, (), "layers")
    return out


def _var_name(component: str) -> str:
    return component.split(":", 1)[0]


def match_weights(layers: list[ConfigLayer], paths: Iterable[str]) -> list[tuple[Any, str]]:
    """Pair depthwise config layers with the weight paths that hold their kernels.

    A path ``.../<layer>/<var>`` (``:0`` suffixes ignored) is a layer's kernel when ``<var>``
    is one of :data:`KERNEL_VARS` for its class and ``<layer>`` is its name; failing that,
    when the path starts with the name of a top-level layer (legacy ``.h5``: the layer's
    group), or when ``<layer>`` is its name plus TF's uniquifying ``_N`` (Keras 2.0 saved
    ``separable_conv2d_1_1/depthwise_kernel:0`` for layer ``separable_conv2d_1``). Among
    layers of one name, the one whose outermost nested model starts the path wins. Without
    ``layers`` (no config saved), a path whose ``<var>`` is in :data:`NAME_RULE_VARS` is a
    kernel. Returns ``(layer or None, path)`` in model order (path order without config).
    """
    paths = list(paths)
    if not layers:
        return [(None, p) for p in paths if _var_name(p.rsplit("/", 1)[-1]) in NAME_RULE_VARS]
    by_name: dict[str, list[int]] = {}
    for i, lay in enumerate(layers):
        by_name.setdefault(lay.name, []).append(i)
    found: dict[int, str] = {}
    for p in paths:
        comps = p.split("/")
        if len(comps) < 2:
            continue
        cands = by_name.get(comps[-2]) or [i for i in by_name.get(comps[0], ())
                                           if not layers[i].scope]  # fmt: skip
        if not cands:
            cands = by_name.get(re.sub(r"_\d+$", "", comps[-2]), [])
        for i in cands:
            lay = layers[i]
            if i in found or _var_name(comps[-1]) not in KERNEL_VARS[lay.class_name]:
                continue
            if len(cands) > 1 and lay.scope and comps[0] != lay.scope[0]:
                continue
            found[i] = p
            break
    return [(layers[i], found[i]) for i in sorted(found)]


def is_depthwise(shape: tuple[int, ...], cfg: dict | None) -> bool:
    """Whether a 4-D kernel of a config layer is depthwise: always for the depthwise
    classes; for a grouped convolution (``groups > 1``) when each group has one input
    channel (``[kh, kw, 1, filters]``, the same layout as ``[kh, kw, groups, mult]``)."""
    return not (cfg and _max2(cfg.get("groups")) > 1 and shape[2] != 1)


def hwcm_layer(name: str, idx: int, w: np.ndarray, cfg: dict | None, dtype: str) -> LayerKernels:
    """A ``[kh, kw, C, mult]`` kernel (Keras, TF.js, TF) as one layer of ``C*mult`` kernels
    (a depthwise grouped convolution's ``[kh, kw, 1, filters]``: the same kernels, in order)."""
    kh, kw, c, mult = w.shape
    k = np.asarray(w, np.float32).reshape(kh, kw, c * mult).transpose(2, 0, 1)
    return LayerKernels(
        layer=name,
        layer_index=idx,
        weights=np.ascontiguousarray(k),
        stride=_max2(cfg.get("strides")) if cfg else 0,
        dilation=_max2(cfg.get("dilation_rate")) if cfg else 0,
        bn_folded=False,
        dtype=dtype,
    )


def _max2(v: Any, default: int = 1) -> int:
    try:
        if v is None:
            return default
        return int(max(v)) if isinstance(v, list | tuple) else int(v)
    except (TypeError, ValueError):
        return default


# -- HDF5, confined to the model's own file --------------------------------------------------
class _Walk:
    """Counts the HDF5 objects looked at; refuses a file that needs more than the limit."""

    def __init__(self) -> None:
        self.left = MAX_HDF5_OBJECTS

    def step(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise FormatError(
                f"more than {MAX_HDF5_OBJECTS:,} HDF5 groups, links and attributes to look "
                "through; kernelatlas stops there (save the model without unrelated data)"
            )


def _get(group: Any, relpath: str, walk: _Walk, what: str, hops: int = 0) -> Any:
    """``group[relpath]``, one link at a time: soft links followed inside the file (at most
    16 deep), external and user-defined links refused."""
    import h5py

    cur = group
    for part in (p for p in relpath.split("/") if p):
        walk.step()
        if not isinstance(cur, h5py.Group):
            raise FormatError(f"{what}: {part!r} is inside a dataset; the file is corrupt")
        link = cur.get(part, default=None, getlink=True)
        if link is None:
            raise FormatError(f"{what}: {relpath!r} is missing; the file is corrupt")
        if isinstance(link, h5py.SoftLink):
            if hops >= 16:
                raise FormatError(f"{what}: soft links nested over 16 deep (a cycle?); corrupt")
            base = cur.file if link.path.startswith("/") else cur
            cur = _get(base, link.path, walk, what, hops + 1)
            continue
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeFileError(
                f"{what}: {relpath!r} is an HDF5 external link to {link.filename!r}; refused "
                "(kernelatlas reads only the model's own file)"
            )
        if not isinstance(link, h5py.HardLink):
            raise UnsafeFileError(f"{what}: {relpath!r} is a user-defined HDF5 link; refused")
        cur = cur[part]
    return cur


def _attr(obj: Any, name: str, walk: _Walk) -> Any:
    """An attribute (or Keras's chunked ``name0, name1, ...``), size checked before reading."""
    import h5py

    def one(key: str) -> Any:
        walk.step()
        aid = h5py.h5a.open(obj.id, key.encode())
        if 0 in (aid.shape or ()):  # empty (a layer without weights): HDF5 stores nothing
            return obj.attrs[key]
        size = aid.get_storage_size()
        if size > _MAX_CONFIG_BYTES:
            raise TensorTooLargeError(f"attribute {key!r} of {size:,} bytes; refused")
        charge(f"attribute {key!r}", 4 * size)
        return obj.attrs[key]

    if name in obj.attrs:
        return one(name)
    parts, i = [], 0
    while f"{name}{i}" in obj.attrs:
        parts.extend(one(f"{name}{i}"))
        i += 1
    return parts if i else None


def _as_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _dataset(obj: Any, what: str) -> np.ndarray:
    """A numeric dataset stored in this file, its declared and chunk sizes checked first."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise FormatError(f"{what} is a {type(obj).__name__}, not a dataset; the file is corrupt")
    if obj.is_virtual:
        raise UnsafeFileError(
            f"{what}: a virtual dataset (data mapped from other files); refused, kernelatlas "
            "reads only the model's own file"
        )
    if obj.external:
        raise UnsafeFileError(
            f"{what}: stored in the external file {_as_str(obj.external[0][0])!r}; refused, "
            "kernelatlas reads only the model's own file"
        )
    if obj.dtype.kind not in "fiu":
        raise FormatError(f"{what}: dtype {obj.dtype} is not numeric; the file is corrupt")
    check_tensor(what, obj.shape, obj.dtype.itemsize)
    if obj.chunks is not None:  # libhdf5 decompresses whole chunks: charge one
        check_tensor(f"{what} (one chunk)", obj.chunks, obj.dtype.itemsize, out_itemsize=0)
    return np.asarray(obj[()])


def _kernel(obj: Any, what: str) -> np.ndarray:
    w = _dataset(obj, what)
    if w.ndim != 4:
        raise FormatError(f"{what}: depthwise kernel of shape {list(w.shape)}, expected 4-D")
    return w


class _Layers:
    """Collects kept layers and skipped counts."""

    def __init__(self) -> None:
        self.layers: list[LayerKernels] = []
        self.skipped: dict[str, int] = {}
        self.notes: list[str] = []

    def add(self, name: str, w: np.ndarray, cfg: dict | None) -> None:
        if not is_depthwise(w.shape, cfg):  # a grouped convolution, not a depthwise one
            return
        if w.shape[:2] == (1, 1):
            self.skipped["1x1"] = self.skipped.get("1x1", 0) + 1
            return
        self.layers.append(hwcm_layer(name, len(self.layers), w, cfg, str(w.dtype)))

    def missing(self, lay: ConfigLayer) -> None:
        self.skipped["no weights saved"] = self.skipped.get("no weights saved", 0) + 1
        if len(self.notes) < 3:
            self.notes.append(f"{lay.class_name} {lay.name!r} has no saved kernel; skipped")


def _layer_name(lay: ConfigLayer | None, path: str) -> str:
    if lay is None:
        return path.rsplit("/", 1)[0]
    return "/".join((*lay.scope, lay.name))


def _read_legacy(f: Any, walk: _Walk) -> _Layers:
    """Keras 2 / Keras 3 legacy .h5: model_weights/<top layer>/<weight name>."""
    root = _get(f, "model_weights", walk, "model_weights") if "model_weights" in f else f
    layer_names = _attr(root, "layer_names", walk)
    if layer_names is None:
        raise FormatError("an HDF5 file without Keras weights (no layer_names)")
    config = None
    raw = _attr(f, "model_config", walk)
    if raw is not None:
        config = json.loads(_as_str(raw))
    dw = config_layers(config) if config is not None else []
    walk.step(len(layer_names))
    tops = [_as_str(n) for n in layer_names]
    if dw:  # only the top-level groups that can hold a depthwise layer
        wanted = {lay.scope[0] if lay.scope else lay.name for lay in dw}
        tops = [t for t in tops if t in wanted]
    out = _Layers()
    paths: dict[str, tuple[Any, str]] = {}
    for top in tops:
        group = _get(root, top, walk, "model_weights")
        names = _attr(group, "weight_names", walk)
        names = [] if names is None else list(names)
        walk.step(len(names))
        for wn in (_as_str(n) for n in names):
            paths[f"{top}/{wn}"] = (group, wn)
    matched = match_weights(dw, paths)
    seen = {id(lay) for lay, _ in matched}
    for lay, p in matched:
        group, wn = paths[p]
        out.add(_layer_name(lay, p), _kernel(_get(group, wn, walk, p), repr(p)), lay and lay.config)
    for lay in dw:
        if id(lay) not in seen:
            out.missing(lay)
    return out


def _read_v3(config: Any, f: Any, walk: _Walk) -> _Layers:
    """Keras 3 model.weights.h5: layers/<class>_<i>/.../vars/0, as the config says."""
    import h5py

    out = _Layers()
    index: dict[str, str] | None = None
    for lay in config_layers(config):
        group = None
        for cand in (lay.h5path, f"layers/{lay.name}"):
            try:
                g = _get(f, f"{cand}/vars", walk, cand)
            except UnsafeFileError:
                raise
            except FormatError:
                continue
            tag = g.attrs.get("name") if isinstance(g, h5py.Group) else None
            if isinstance(g, h5py.Group) and (tag is None or _as_str(tag) == lay.name):
                group = g
                break
        if group is None:  # written by another Keras version: look for its name tag
            index = _name_index(f, walk) if index is None else index
            if lay.name in index:
                group = _get(f, index[lay.name], walk, lay.name)
        if group is None or "0" not in group:
            out.missing(lay)
            continue
        what = f"{lay.name!r} ({(group.name or '').lstrip('/')}/0)"
        out.add(_layer_name(lay, ""), _kernel(_get(group, "0", walk, what), what), lay.config)
    return out


def _name_index(f: Any, walk: _Walk) -> dict[str, str]:
    """``{layer name: vars group path}`` from the ``name`` tags Keras 3 writes (bounded)."""
    import h5py

    out: dict[str, str] = {}
    stack = [("", f)]
    while stack:
        prefix, group = stack.pop()
        for key in group:
            walk.step()
            if key in ("optimizer", "optimizer_weights"):
                continue
            link = group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                continue
            obj = group[key]
            if not isinstance(obj, h5py.Group):
                continue
            path = f"{prefix}/{key}" if prefix else key
            if key == "vars":
                tag = obj.attrs.get("name")
                if tag is not None:
                    out.setdefault(_as_str(tag), path)
            else:
                stack.append((path, obj))
    return out


def _no_filter_plugins() -> None:
    """libhdf5 loads compression-filter plugins (shared libraries) on demand: not for us."""
    try:
        import h5py

        h5py.h5pl.set_loading_state(0)
    except (ImportError, AttributeError, RuntimeError, ValueError):
        pass


def _read_keras(path: Path) -> _Layers:
    import h5py

    walk = _Walk()
    try:
        _no_filter_plugins()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    if "config.json" in names and "model.weights.json" in names:
                        raise FormatError(
                            f"{path}: a sharded .keras archive is not supported yet; save it "
                            "without max_shard_size"
                        )
                    raise FormatError(
                        f"{path}: a zip without config.json/model.weights.h5 is not a .keras archive"
                    )
                config = json.loads(zip_member(zf, "config.json", path, _MAX_CONFIG_BYTES))
                data = zip_member(zf, "model.weights.h5", path)
            with h5py.File(io.BytesIO(data), "r") as f:
                return _read_v3(config, f, walk)
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "layer_names0" in f.attrs or "model_weights" in f:
                return _read_legacy(f, walk)
            if "layers" in f:
                raise FormatError(
                    f"{path}: a Keras 3 .weights.h5 does not say which layers are depthwise; "
                    "pass the .keras archive (model.save('m.keras')) instead"
                )
            raise FormatError(f"{path}: an HDF5 file without Keras weights (no layer_names)")
    except KernelAtlasError as exc:
        msg = " ".join(str(exc).split())
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (MemoryError, RecursionError) as exc:
        raise FormatError(f"{path}: corrupt Keras file ({type(exc).__name__})") from None
    except Exception as exc:  # libhdf5/h5py, zip and JSON errors of every kind
        raise FormatError(
            f"{path}: truncated or corrupt Keras file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); save it again"
        ) from None


# -- the forked child --------------------------------------------------------------------------
_ERRORS = {
    "FormatError": FormatError,
    "UnsafeFileError": UnsafeFileError,
    "TensorTooLargeError": TensorTooLargeError,
}


def _time_limit(path: Path) -> float:
    """Seconds a forked read may take: 60 s plus 1 s per 10 MB (libhdf5 reads >100 MB/s)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return 60.0 + size / 10e6


def _wait(pid: int, limit: float, done_fd: int | None = None) -> int | None:
    """The child's wait status, or None after killing it at ``limit`` seconds.

    ``done_fd`` is the read end of a pipe whose write end only the child holds: it becomes
    readable (EOF) the moment the child exits, so the parent wakes at once instead of polling.
    """
    import select
    import time

    deadline, pause = time.monotonic() + limit, 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        if done_fd is not None:
            if select.select([done_fd], [], [], left)[0]:
                return os.waitpid(pid, 0)[1]  # EOF: the child has exited
            continue
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)


def _die_with_parent(parent: int) -> None:
    """In the child: SIGKILL when the parent dies (Linux), and exit if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(4)


def _child_limits(limit: float) -> None:
    """In the child: its own deadline, whatever happens to the parent."""
    seconds = max(1, math.ceil(limit))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds + 1)  # wall clock (a loop blocked in a system call)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (seconds + 1, seconds + 2))  # SIGXCPU, SIGKILL
    except (ImportError, ValueError, OSError):
        pass


def _run_forked(path: Path) -> _Layers:
    """:func:`_read_keras` in a forked child; arrays come back in an .npz (no pickle)."""
    limit = _time_limit(path)
    parent = os.getpid()
    with tempfile.TemporaryFile(prefix=".kernelatlas-h5-") as tmp:  # unlinked: never left
        done_r, done_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                os.close(done_r)  # done_w closes when this process ends, however it ends
                _die_with_parent(parent)
                _child_limits(limit)
                import faulthandler

                faulthandler.disable()  # a libhdf5 crash is reported by the parent
                try:
                    got = _read_keras(path)
                    meta: dict = {"skipped": got.skipped, "notes": got.notes, "layers": [
                        {"layer": lk.layer, "layer_index": lk.layer_index, "stride": lk.stride,
                         "dilation": lk.dilation, "bn_folded": lk.bn_folded, "dtype": lk.dtype}
                        for lk in got.layers]}  # fmt: skip
                    arrays = {f"w{i}": lk.weights for i, lk in enumerate(got.layers)}
                except KernelAtlasError as exc:
                    meta = {"error": type(exc).__name__, "message": str(exc)}
                    arrays = {}
                blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
                with open(tmp.fileno(), "wb", closefd=False) as f:
                    np.savez(f, meta=blob, **arrays)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        os.close(done_w)
        try:
            status = _wait(pid, limit, done_r)
        finally:
            os.close(done_r)
        if status is None:
            raise FormatError(
                f"{path}: the HDF5 library did not finish reading it in {limit:.0f} s; the file "
                "is corrupt or far larger than a model (save it again)"
            )
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            if sig in ("SIGXCPU", "SIGALRM"):
                raise FormatError(
                    f"{path}: the HDF5 library did not finish reading it in {limit:.0f} s "
                    f"({sig}); the file is corrupt, save it again"
                )
            raise FormatError(
                f"{path}: the HDF5 library crashed reading it ({sig}); the file is corrupt, "
                "save it again"
            )
        if os.WEXITSTATUS(status) != 0:
            raise FormatError(f"{path}: could not be read as a Keras file; save it again")
        tmp.seek(0)
        with np.load(tmp, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if "error" in meta:
                raise _ERRORS.get(meta["error"], KernelAtlasError)(meta["message"])
            out = _Layers()
            out.skipped, out.notes = dict(meta["skipped"]), list(meta["notes"])
            for i, m in enumerate(meta["layers"]):
                w = z[f"w{i}"]
                charge(f"kernels of {m['layer']!r}", w.nbytes)
                out.layers.append(LayerKernels(weights=w, **m))
        return out


@register_format(
    "keras",
    extensions=(".h5", ".hdf5", ".keras"),
    sniff=lambda head, ext: (
        head[:8] == b"\x89HDF\r\n\x1a\n" or (head[:2] == b"PK" and ext == ".keras")
    ),
    extra="keras",
    description="Keras 2/3 model (.h5 HDF5, .keras zip; nested models), read in a forked child",
)
def read_keras(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a Keras .h5 / .keras file (batch norms stay separate layers)."""
    path = Path(path)
    got = _run_forked(path) if hasattr(os, "fork") else _read_keras(path)
    return ReadResult(got.layers, dict(got.skipped), tuple(got.notes))
