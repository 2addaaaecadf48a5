"""Reader: PyTorch files (.pt / .pth / .bin / .ckpt): state dicts, whole pickled models
(``torch.save(model)``, Ultralytics YOLO checkpoints) and TorchScript archives, all read by
the restricted unpickler of :mod:`kernelatlas.harvest.torch_pickle` (no code runs, no
``torch.load``).

Which model: the checkpoint's object is searched breadth-first (nested under
``state_dict``, ``model``, ``model_ema``... first, optimizer state never) for a pickled
``nn.Module``, a TorchScript module or a state dict. The first one found is read; another
holding the same tensors (an EMA copy) is named in the notes and not read twice.

Which tensors are depthwise (:func:`select_depthwise`):

- when the file records the layer (a pickled ``nn.Conv2d``'s ``groups``/``in_channels``,
  a TorchScript class's constants): ``groups == in_channels > 1``, as for an
  ``nn.Module``; stride and dilation come from it too;
- otherwise from the whole set of 4-D shapes (state dicts, safetensors, traced
  TorchScript): ``[C, 1, kh, kw]`` with ``C > 1``, except a grayscale stem, which has the
  same shape. The stem is decided from the shapes, not the key order: an ordinary conv
  that reads 2-4 channels no layer produces is the image's entry (RGB), so there is no
  grayscale stem; otherwise the first convolution (names in numeric-aware order) is the
  stem when its output feeds a spatial convolution rather than only a 1x1 (a depthwise
  layer hands its channels to its pointwise 1x1). A lone depthwise layer is kept.

Skipped layers are counted by reason in ``ReadResult.skipped`` (``1x1``, ``stem``,
``expanded view``). ``fold_bn`` works on pickled models and TorchScript (the batch norm
that is the conv's next sibling module, as Ultralytics' ``Conv`` and torchvision's
``Conv2dNormActivation`` are built); a state dict has no architecture: harvest the
``nn.Module`` (or a registry source with ``arch``).
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError
from .base import LayerKernels
from .formats import ReadResult, register_format
from .torch_pickle import (
    Opaque,
    TensorRef,
    TorchFile,
    is_tensor,
    open_torch_file,
    overlapping,
    script_constants,
)

__all__ = [
    "ConvEntry",
    "read_checkpoint",
    "read_torch_file",
    "select_depthwise",
    "grayscale_stem",
    "load_state_dict",
    "natural_key",
    "NEST_KEYS",
]

#: Keys under which training scripts nest the weights, in the order they are tried.
NEST_KEYS: tuple[str, ...] = (
    "state_dict",
    "model",
    "model_state_dict",
    "module",
    "net",
    "network",
    "params",
    "model_ema",
    "state_dict_ema",
    "ema",
)
#: Keys of an optimizer's per-parameter state (never a model).
_OPTIMIZER_KEYS = frozenset(
    {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
     "acc_delta", "sum", "ax", "eta", "mu", "prev", "step_size", "exp_inf"}
)  # fmt: skip
_MAX_DEPTH = 6


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class ConvEntry:
    """A 4-D tensor of a model, as a reader declares it (nothing read yet).

    Attributes
    ----------
    name : its path in the model (``model.22.cv3.0.0.conv.weight``).
    shape : ``(out, in/groups, kh, kw)``.
    floating : whether its dtype is floating point.
    dtype : stored dtype name (``float16``...).
    ref : what the reader needs to read it (see :func:`select_depthwise`'s ``load``).
    meta : the layer's recorded attributes (``groups``, ``in_channels``, ``stride``...),
        None where the file records none.
    """

    name: str
    shape: tuple[int, ...]
    floating: bool
    dtype: str
    ref: Any = None
    meta: Mapping[str, Any] | None = None


def _meta_decides(e: ConvEntry) -> bool:
    m = e.meta
    return m is not None and type(m.get("groups")) is int and type(m.get("in_channels")) is int


def _meta_depthwise(e: ConvEntry) -> bool:
    m = e.meta or {}
    cin, groups = m["in_channels"], m["groups"]
    return (
        not m.get("transposed", False)
        and cin > 1
        and groups == cin
        and e.shape[0] % cin == 0
        and e.shape[1] == 1
    )


def grayscale_stem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The name of a grayscale stem among 4-D conv shapes, or None (see the module
    docstring); decided from the set of shapes, so any key order gives the same answer."""
    convs = {n: s for n, s in shapes.items() if len(s) == 4}
    if not convs:
        return None
    produced = {s[0] for s in convs.values()}
    if any(2 <= s[1] <= 4 and s[1] not in produced for s in convs.values()):
        return None  # the image enters through an ordinary conv with 2-4 channels
    first = min(convs, key=natural_key)
    out, cin, kh, kw = convs[first]
    if cin != 1 or out < 2 or (kh, kw) == (1, 1):
        return None
    spatial_consumer = any(
        n != first and s[2:] != (1, 1) and (s[1] == out or (s[1] == 1 and s[0] == out))
        for n, s in convs.items()
    )
    return first if spatial_consumer else None


def select_depthwise(
    entries: list[ConvEntry], load: Callable[[ConvEntry], np.ndarray]
) -> ReadResult:
    """Depthwise layers among ``entries`` (model order), read with ``load(entry)`` ->
    float32 ``[C, 1, kh, kw]`` (or ``[C, kh, kw]``); skips counted by reason."""
    convs = [e for e in entries if len(e.shape) == 4 and e.floating]
    undecided = {e.name: e.shape for e in convs if not _meta_decides(e)}
    stem = grayscale_stem({e.name: e.shape for e in convs}) if undecided else None
    if stem is not None and stem not in undecided:
        stem = None
    layers: list[LayerKernels] = []
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    for e in convs:
        c, one, kh, kw = (int(s) for s in e.shape)
        if _meta_decides(e):
            if not _meta_depthwise(e):
                continue
        elif one != 1 or c < 2:
            continue
        elif e.name == stem:
            skipped["stem"] += 1
            notes.append(
                f"skipped {e.name} {list(e.shape)}: the grayscale stem (the first conv, on a "
                "1-channel image, has the depthwise shape)"
            )
            continue
        if (kh, kw) == (1, 1):
            skipped["1x1"] += 1
            continue
        if isinstance(e.ref, TensorRef) and overlapping(e.ref):
            if not skipped["expanded view"]:
                notes.append(f"skipped {e.name} and any like it: an expanded view (stride 0), "
                             "not a trained weight; never materialised")  # fmt: skip
            skipped["expanded view"] += 1
            continue
        arr = load(e)
        m = e.meta or {}
        layers.append(
            LayerKernels(
                layer=e.name.removesuffix(".weight"),
                layer_index=len(layers),
                weights=np.ascontiguousarray(arr.reshape(c, kh, kw), np.float32),
                stride=_spatial(m.get("stride")),
                dilation=_spatial(m.get("dilation")),
                dtype=e.dtype,
            )
        )
    return ReadResult(layers, dict(skipped), tuple(notes))


def _spatial(v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, tuple | list) and v and all(type(x) is int for x in v):
        return int(max(v))
    return 0


# --------------------------------------------------------------- models in a pickle
def _kind(o: Any) -> str | None:
    """``module`` (a pickled nn.Module), ``script`` (a TorchScript module), ``state_dict``."""
    if isinstance(o, Opaque) and isinstance(o.state, dict):
        if "_modules" in o.state or "_parameters" in o.state:
            return "module"
        if o.qualname.startswith("__torch__."):
            return "script"
    if isinstance(o, dict):
        tensors = [v for k, v in o.items() if type(k) is str and is_tensor(v)]
        if any(t.ndim == 4 for t in tensors) and not set(o) <= _OPTIMIZER_KEYS:
            return "state_dict"
    return None


def _roots(obj: Any) -> list[tuple[str, str, Any]]:
    """Models in ``obj``, breadth first, preferred keys first: ``(path, kind, root)``."""
    found: list[tuple[str, str, Any]] = []
    queue: deque[tuple[str, Any, int]] = deque([("", obj, 0)])
    seen: set[int] = set()
    while queue and len(seen) < 100_000:
        path, o, depth = queue.popleft()
        if id(o) in seen:
            continue
        seen.add(id(o))
        kind = _kind(o)
        if kind is not None:
            found.append((path, kind, o))
            continue
        if depth >= _MAX_DEPTH:
            continue
        if isinstance(o, dict):
            keys = [k for k in NEST_KEYS if k in o] + [k for k in o if k not in NEST_KEYS]
            children = [(str(k), o[k]) for k in keys if "optim" not in str(k).lower()]
        elif isinstance(o, list | tuple):
            children = [(str(i), v) for i, v in enumerate(o)]
        elif isinstance(o, Opaque):  # a wrapper (e.g. an EMA object holding the module)
            state = o.state if isinstance(o.state, dict) else {}
            children = [(str(k), v) for k, v in state.items()]
        else:
            continue
        for key, child in children:
            queue.append((f"{path}/{key}" if path else key, child, depth + 1))
    return found


def _tensor_entry(name: str, ref: Any, meta: Mapping[str, Any] | None) -> ConvEntry:
    dt = ref.dtype
    return ConvEntry(name, tuple(ref.shape), bool(dt.floating), dt.name, ref, meta)


_CONV_ATTRS = ("in_channels", "out_channels", "groups", "kernel_size", "stride", "dilation",
               "transposed")  # fmt: skip


class _Tree:
    """The module tree of a pickled nn.Module (``module``) or TorchScript module
    (``script``): per module its tensors, child modules and attributes, in model order."""

    def __init__(self, tf: TorchFile, kind: str, root: Opaque) -> None:
        self.tf, self.kind, self.root = tf, kind, root
        self._consts: dict[str, dict[str, Any]] = {}

    def attrs(self, mod: Opaque) -> Mapping[str, Any]:
        """Recorded attributes: the pickled ``__dict__``, or a TorchScript class's constants
        (read from its code as literals)."""
        if self.kind == "module":
            return mod.state
        q = mod.qualname
        if q not in self._consts:
            module, _, cls = q.rpartition(".")
            src = self.tf.code(module)
            self._consts[q] = script_constants(src, cls) if src else {}
        return self._consts[q]

    def parts(self, mod: Opaque) -> tuple[dict[str, Any], list[tuple[str, Opaque]]]:
        st = mod.state
        if self.kind == "module":
            tensors: dict[str, Any] = {}
            for group in ("_parameters", "_buffers"):
                d = st.get(group)
                if isinstance(d, dict):
                    tensors.update((k, v) for k, v in d.items() if type(k) is str and is_tensor(v))
            children = st.get("_modules")
            kids = (
                [(k, c) for k, c in children.items() if type(k) is str and _kind(c)]
                if isinstance(children, dict)
                else []
            )
            return tensors, kids
        tensors = {k: v for k, v in st.items() if type(k) is str and is_tensor(v)}
        kids = [(k, v) for k, v in st.items() if type(k) is str and _kind(v) == "script"]
        return tensors, kids

    def modules(self) -> Iterator[tuple[str, Opaque, dict[str, Any], list[tuple[str, Opaque]]]]:
        """``(prefix, module, tensors, children)`` depth first, in model order."""
        stack: list[tuple[str, Any]] = [("", self.root)]
        seen: set[int] = set()
        while stack:
            prefix, mod = stack.pop()
            if id(mod) in seen or not isinstance(mod, Opaque) or not isinstance(mod.state, dict):
                continue
            seen.add(id(mod))
            tensors, kids = self.parts(mod)
            yield prefix, mod, tensors, kids
            stack.extend((prefix + k + ".", c) for k, c in reversed(kids))

    def entries(self) -> Iterator[ConvEntry]:
        for prefix, mod, tensors, _ in self.modules():
            for k, v in tensors.items():
                meta = None
                if k == "weight" and v.ndim == 4:
                    meta = _conv_meta(self.attrs(mod), v)
                yield _tensor_entry(prefix + k, v, meta)

    def batch_norms(self) -> dict[str, tuple[Any, Any, float]]:
        """conv weight name -> (gamma or None, running_var, eps) of the batch norm that is its
        next sibling (Ultralytics ``Conv``: conv, bn, act; torchvision: 0 conv, 1 bn)."""
        out: dict[str, tuple[Any, Any, float]] = {}
        for prefix, _, _, kids in self.modules():
            for (a_name, a), (_, b) in zip(kids, kids[1:], strict=False):
                a_t, _ = self.parts(a)
                b_t, _ = self.parts(b)
                w, var = a_t.get("weight"), b_t.get("running_var")
                eps = self.attrs(b).get("eps")
                if w is None or var is None or w.ndim != 4 or var.ndim != 1:
                    continue
                if type(eps) is float and var.shape[0] == w.shape[0]:
                    out[f"{prefix}{a_name}.weight"] = (b_t.get("weight"), var, eps)
        return out


def _conv_meta(attrs: Mapping[str, Any], weight: Any) -> dict[str, Any] | None:
    meta = {k: attrs[k] for k in _CONV_ATTRS if k in attrs}
    if type(meta.get("groups")) is not int:
        return None
    if "in_channels" not in meta:  # a traced convolution records its groups only
        meta["in_channels"] = int(weight.shape[1]) * meta["groups"]
    return meta


def _state_entries(root: dict) -> Iterator[ConvEntry]:
    for k, v in root.items():
        if type(k) is str and is_tensor(v):
            yield _tensor_entry(k, v, None)


def _entries(tf: TorchFile, kind: str, root: Any) -> list[ConvEntry]:
    if kind in ("module", "script"):
        return list(_Tree(tf, kind, root).entries())
    return list(_state_entries(root))


def _signature(entries: list[ConvEntry]) -> tuple:
    return tuple((e.name, e.shape) for e in entries if len(e.shape) == 4)


def read_torch_file(tf: TorchFile, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of an opened torch file (see the module docstring).

    ``fold_bn`` multiplies each kernel by ``gamma / sqrt(running_var + eps)`` of the batch
    norm that is the conv's next sibling module; it needs a module tree (a pickled model or
    TorchScript), not a state dict.
    """
    roots = _roots(tf.obj)
    notes: list[str] = []
    if isinstance(tf.constants, tuple | list):  # a frozen TorchScript model keeps them here
        consts = {f"CONSTANTS.c{i}": c for i, c in enumerate(tf.constants) if is_tensor(c)}
        if any(c.ndim == 4 for c in consts.values()):
            if not any(_signature(_entries(tf, k, r)) for _, k, r in roots):
                roots = [("CONSTANTS", "state_dict", consts)]
                notes.append("a frozen TorchScript model: weights read from its constants")
    if not roots:
        return ReadResult([], {}, ("no model or state dict with 4-D tensors in the file",))
    path, kind, root = roots[0]
    entries = _entries(tf, kind, root)
    if isinstance(root, Opaque):
        what = ("a pickled nn.Module" if kind == "module" else "a TorchScript module") + (
            f" {root.qualname}"
        )
        notes.append(f"{what}, read as data: its code was not run")
    if path and path != "CONSTANTS":
        notes.append(f"the model is nested under {path!r}")
    sig = _signature(entries)
    for other_path, other_kind, other in roots[1:]:
        other_entries = _entries(tf, other_kind, other)
        if _signature(other_entries) == sig:
            notes.append(f"{other_path!r} holds a copy of the same model (e.g. its EMA): not read")
        else:
            n = sum(1 for e in other_entries if len(e.shape) == 4)
            notes.append(f"{other_path!r} holds another set of weights ({n} 4-D tensors): not read")

    def load(e: ConvEntry) -> np.ndarray:
        return tf.array(e.ref, f"{tf.path}: {e.name!r}")

    if fold_bn and kind == "state_dict":
        raise KernelAtlasError(
            f"{tf.path}: --fold-bn needs the architecture, which a state dict does not hold; "
            "build the model, load the weights and harvest the nn.Module (or drop --fold-bn)"
        )
    res = select_depthwise(entries, load)
    layers = res.layers
    if fold_bn and layers:
        layers = _fold(tf, _Tree(tf, kind, root).batch_norms(), layers)
    return ReadResult(layers, res.skipped, (*notes, *res.notes))


def _fold(tf: TorchFile, bns: Mapping[str, tuple[Any, Any, float]], layers: list[LayerKernels]
          ) -> list[LayerKernels]:  # fmt: skip
    import dataclasses
    import warnings

    out = []
    for lk in layers:
        bn = bns.get(lk.layer + ".weight")
        if bn is None:
            out.append(lk)
            continue
        gamma, var, eps = bn
        v = tf.array(var, f"{tf.path}: running_var of {lk.layer}").astype(np.float64)
        g = tf.array(gamma, f"{tf.path}: bn weight of {lk.layer}") if gamma is not None else 1.0
        scale = (np.asarray(g, np.float64) / np.sqrt(v + eps)).astype(np.float32)
        if scale.shape != (lk.weights.shape[0],):
            out.append(lk)
            continue
        weights = lk.weights * scale[:, None, None]
        out.append(dataclasses.replace(lk, weights=weights, bn_folded=True))
    missing = sum(not lk.bn_folded for lk in out)
    if missing:
        warnings.warn(
            f"fold_bn: {missing} of {len(out)} depthwise layers have no following BatchNorm; "
            "kept unfolded (bn_folded=False)",
            stacklevel=4,
        )
    return out


def load_state_dict(path: Path) -> tuple[dict[str, Any], str]:
    """The (possibly nested) state dict of a checkpoint as float32 numpy arrays, read
    without pickle code; returns it and where it was nested (``''`` at the top)."""
    with open_torch_file(path) as tf:
        roots = _roots(tf.obj)
        if not roots:
            return {}, ""
        where, kind, root = roots[0]
        return {e.name: tf.array(e.ref, f"{path}: {e.name!r}") for e in
                _entries(tf, kind, root)}, where  # fmt: skip


def _sniff(head: bytes, ext: str) -> bool:
    # a zip (torch.save) or a pickle (legacy torch.save, bare pickle); .keras/.npz zips
    # and TorchScript archives are claimed earlier
    return head[:2] == b"PK" or head[:1] == b"\x80"


@register_format(
    "checkpoint",
    extensions=(".pt", ".pth", ".bin", ".ckpt"),
    sniff=_sniff,
    can_fold_bn=True,  # pickled models only; a state dict refuses it in read
    description="PyTorch checkpoint, state dict or pickled model (torch.save, zip or legacy), "
    "read without running pickle code",
)
def read_checkpoint(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a PyTorch checkpoint file."""
    try:
        with open_torch_file(path) as tf:
            return read_torch_file(tf, fold_bn=fold_bn)
    except KernelAtlasError:
        raise
    except (MemoryError, RecursionError):
        raise FormatError(f"{path}: corrupt PyTorch file (absurd sizes or nesting)") from None


# --------------------------------------------------------- architecture + checkpoint
class _MetaNoInit:
    """Build modules on the meta device without running their weight initialisers (the
    checkpoint replaces every tensor): a TorchFunctionMode, entered as a context."""

    def __init__(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode

        T = torch.Tensor
        init = torch.nn.init
        skip = {T.normal_, T.uniform_, T.zero_, T.fill_, T.fmod_, T.erfinv_, T.clamp_}
        skip |= {getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_")}
        ctors = torch.utils._device._device_constructors()

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                if func in skip:
                    return args[0] if args else (kwargs or {}).get("tensor")
                kwargs = kwargs or {}
                if func in ctors and kwargs.get("device") is None:
                    kwargs["device"] = "meta"
                return func(*args, **kwargs)

        self._mode = Mode()

    def __enter__(self) -> None:
        self._mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def module_from_checkpoint(
    builder: Callable[[], Any], path: Path, *, name: str, fold_bn: bool = False
) -> Any:
    """``builder()`` built on the meta device (no initialisation), checked against the
    checkpoint's state dict (names and shapes, as a strict ``load_state_dict``), with the
    tensors of its depthwise convolutions (and, for ``fold_bn``, its batch norms) read from
    the file; nothing else is read. The result serves
    :func:`~kernelatlas.harvest.torch_module.read_module`.
    """
    import torch
    from torch import nn

    from .torch_module import is_depthwise

    with _MetaNoInit():
        model = builder()
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    with open_torch_file(path) as tf:
        roots = _roots(tf.obj)
        if not roots:
            raise KernelAtlasError(f"{name}: {path} holds no state dict")
        _, kind, root = roots[0]
        found = {e.name: e for e in _entries(tf, kind, root)}
        missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in found if k not in expected]
        wrong = [k for k in expected if k in found and found[k].shape != expected[k]]
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else
                      f"unexpected {unexpected[:3]}" if unexpected else
                      f"shape of {wrong[0]}: {list(found[wrong[0]].shape)} vs {list(expected[wrong[0]])}")  # fmt: skip
            raise KernelAtlasError(f"{name}: weights do not fit the architecture ({detail})")
        for mod_name, mod in model.named_modules():
            bn = fold_bn and isinstance(mod, nn.modules.batchnorm._BatchNorm)
            if not (is_depthwise(mod) or bn):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            for group in (mod._parameters, mod._buffers):
                for key, t in list(group.items()):
                    e = found.get(prefix + key)
                    if t is None or e is None:
                        continue
                    arr = torch.from_numpy(tf.array(e.ref, f"{path}: {e.name!r}"))
                    value = arr.to(t.dtype) if not t.dtype.is_floating_point else arr
                    group[key] = nn.Parameter(value, False) if key in mod._parameters else value
    return model.eval()
