"""Reader: Keras weights (h5py; TensorFlow/Keras itself is not needed).

Depthwise kernels are ``[kh, kw, C, mult]``; channel ``c*mult + m`` holds ``[:, :, c, m]``
(the PyTorch order). Two layouts:

- Keras 2 (and Keras 3 legacy ``model.save('m.h5')``): layer groups listed by the
  ``layer_names`` attribute (at the root, or under ``model_weights``), each with
  ``weight_names``; the depthwise kernel is the weight named ``depthwise_kernel`` (of a
  ``DepthwiseConv2D`` or ``SeparableConv2D``). Strides come from ``model_config`` when saved.
- Keras 3 ``.keras`` archive: a zip with ``config.json`` (says which layers are
  ``DepthwiseConv2D`` / ``SeparableConv2D``) and ``model.weights.h5`` whose
  ``layers/<name>/vars/0`` is the depthwise kernel. A bare Keras 3 ``.weights.h5`` holds no
  layer types, so it is refused with a pointer to the ``.keras`` archive.

Safety: libhdf5 is C and can crash on a corrupt file, so on POSIX the file is read in a
forked child process that hands back plain arrays (no pickle); a crash there, or a read
that does not finish in 60 s (+1 s per 10 MB), becomes a
:class:`~kernelatlas.errors.FormatError`. Each dataset's declared shape is checked against
:mod:`kernelatlas.limits` before it is read.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError, UnsafeFileError
from ..limits import TensorTooLargeError, check_tensor, max_tensor_bytes
from .base import LayerKernels
from .formats import ReadResult, register_format

__all__ = ["read_keras", "DEPTHWISE_CLASSES"]

#: Keras layer classes whose first variable is a depthwise kernel.
DEPTHWISE_CLASSES = ("DepthwiseConv2D", "SeparableConv2D")


def _as_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _config_layers(config: Any) -> list[dict]:
    """Depthwise layer configs in config order (recursing into nested models)."""
    out: list[dict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") in DEPTHWISE_CLASSES and isinstance(node.get("config"), dict):
                out.append(node["config"])
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return out


def _max2(v: Any, default: int = 1) -> int:
    if v is None:
        return default
    return int(max(v)) if isinstance(v, list | tuple) else int(v)


def _to_layer(name: str, idx: int, w: np.ndarray, cfg: dict | None) -> LayerKernels:
    kh, kw, c, mult = w.shape
    k = np.moveaxis(w.astype(np.float32).reshape(kh, kw, c * mult), -1, 0)
    return LayerKernels(
        layer=name,
        layer_index=idx,
        weights=np.ascontiguousarray(k),
        stride=_max2(cfg.get("strides")) if cfg else 0,
        dilation=_max2(cfg.get("dilation_rate")) if cfg else 0,
        bn_folded=False,
        dtype=str(w.dtype),
    )


def _keras2(f: Any) -> tuple[list[LayerKernels], int]:
    root = f["model_weights"] if "model_weights" in f else f
    configs: dict[str, dict] = {}
    if "model_config" in f.attrs:
        for cfg in _config_layers(json.loads(_as_str(f.attrs["model_config"]))):
            configs[cfg.get("name", "")] = cfg
    layers: list[LayerKernels] = []
    skipped = 0
    for lname in (_as_str(n) for n in root.attrs["layer_names"]):
        group = root[lname]
        for wname in (_as_str(n) for n in group.attrs.get("weight_names", [])):
            if wname.rsplit("/", 1)[-1].split(":")[0] != "depthwise_kernel":
                continue
            w = _dataset(group[wname], f"{lname + '/' + wname!r}")
            if w.ndim != 4:
                raise FormatError(f"{lname + '/' + wname!r}: depthwise kernel of shape {w.shape}")
            if w.shape[:2] == (1, 1):
                skipped += 1
                continue
            layers.append(_to_layer(lname, len(layers), w, configs.get(lname)))
    return layers, skipped


def _keras3(config: dict, weights: Any) -> tuple[list[LayerKernels], int]:
    groups: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if name.endswith("/vars") and "0" in obj:
            groups.setdefault(name[: -len("/vars")].rsplit("/", 1)[-1], obj)

    weights.visititems(visit)
    layers: list[LayerKernels] = []
    skipped = 0
    for cfg in _config_layers(config):
        name = cfg.get("name", "")
        if name not in groups:
            raise FormatError(f"layer {name!r} of config.json has no weights in model.weights.h5")
        w = _dataset(groups[name]["0"], f"{name + '/vars/0'!r}")
        if w.ndim != 4:
            raise FormatError(f"{name!r}: depthwise kernel of shape {w.shape}")
        if w.shape[:2] == (1, 1):
            skipped += 1
            continue
        layers.append(_to_layer(name, len(layers), w, cfg))
    return layers, skipped


def _dataset(obj: Any, what: str) -> np.ndarray:
    """A numeric HDF5 dataset as an array, its declared size checked first."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise FormatError(f"{what} is a {type(obj).__name__}, not a dataset; the file is corrupt")
    if obj.dtype.kind not in "fiu":
        raise FormatError(f"{what}: dtype {obj.dtype} is not numeric; the file is corrupt")
    check_tensor(what, obj.shape, obj.dtype.itemsize)
    return np.asarray(obj[()])


def _read_keras(path: Path) -> tuple[list[LayerKernels], int]:
    import h5py

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise FormatError(
                        f"{path}: a zip without config.json/model.weights.h5 is not a .keras archive"
                    )
                caps = {"config.json": 256 * 2**20,
                        "model.weights.h5": max(16 * 2**30, 8 * max_tensor_bytes())}  # fmt: skip
                for member, cap in caps.items():
                    size = zf.getinfo(member).file_size
                    if size > cap:
                        raise FormatError(
                            f"{path}: {member} declares {size:,} bytes; corrupt or not a model"
                        )
                config = json.loads(zf.read("config.json"))
                data = zf.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as f:
                return _keras3(config, f)
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                return _keras2(f)
            if "layers" in f:
                raise FormatError(
                    f"{path}: a Keras 3 .weights.h5 does not say which layers are depthwise; "
                    "pass the .keras archive (model.save('m.keras')) instead"
                )
            raise FormatError(f"{path}: an HDF5 file without Keras weights (no layer_names)")
    except KernelAtlasError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (MemoryError, RecursionError) as exc:
        raise FormatError(f"{path}: corrupt Keras file ({type(exc).__name__})") from None
    except Exception as exc:  # libhdf5/h5py, zip and JSON errors of every kind
        raise FormatError(
            f"{path}: truncated or corrupt Keras file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); save it again"
        ) from None


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


def _wait(pid: int, limit: float) -> int | None:
    """The child's wait status, or None after killing it at ``limit`` seconds."""
    import time

    deadline, pause = time.monotonic() + limit, 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _run_forked(path: Path) -> tuple[list[LayerKernels], int]:
    """:func:`_read_keras` in a forked child; arrays come back in an .npz (no pickle)."""
    fd, tmp = tempfile.mkstemp(prefix=".kernelatlas-h5-", suffix=".npz")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                import faulthandler

                faulthandler.disable()  # a libhdf5 crash is reported by the parent
                try:
                    layers, skipped = _read_keras(path)
                    meta = {"skipped": skipped, "layers": [
                        {"layer": lk.layer, "layer_index": lk.layer_index, "stride": lk.stride,
                         "dilation": lk.dilation, "bn_folded": lk.bn_folded, "dtype": lk.dtype}
                        for lk in layers]}  # fmt: skip
                    arrays = {f"w{i}": lk.weights for i, lk in enumerate(layers)}
                except KernelAtlasError as exc:
                    meta = {"error": type(exc).__name__, "message": str(exc)}
                    arrays = {}
                blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
                with open(tmp, "wb") as f:
                    np.savez(f, meta=blob, **arrays)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        status = _wait(pid, _time_limit(path))
        if status is None:
            raise FormatError(
                f"{path}: the HDF5 library did not finish reading it in {_time_limit(path):.0f} s "
                "(a corrupt file can make it loop); save it again"
            )
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            raise FormatError(
                f"{path}: the HDF5 library crashed reading it ({sig}); the file is corrupt, "
                "save it again"
            )
        if os.WEXITSTATUS(status) != 0:
            raise FormatError(f"{path}: could not be read as a Keras file; save it again")
        with np.load(tmp, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if "error" in meta:
                raise _ERRORS.get(meta["error"], KernelAtlasError)(meta["message"])
            layers = [LayerKernels(weights=z[f"w{i}"], **m) for i, m in enumerate(meta["layers"])]
        return layers, int(meta["skipped"])
    finally:
        os.unlink(tmp)


@register_format(
    "keras",
    extensions=(".h5", ".hdf5", ".keras"),
    sniff=lambda head, ext: (
        head[:8] == b"\x89HDF\r\n\x1a\n" or (head[:2] == b"PK" and ext == ".keras")
    ),
    extra="keras",
    description="Keras 2/3 model or weights (.h5 HDF5, .keras zip), read in a forked child",
)
def read_keras(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a Keras .h5 / .keras file (batch norms stay separate layers)."""
    path = Path(path)
    layers, skipped = _run_forked(path) if hasattr(os, "fork") else _read_keras(path)
    return ReadResult(layers, {"1x1": skipped} if skipped else {})
