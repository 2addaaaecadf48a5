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
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from .base import LayerKernels

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
            w = np.asarray(group[wname])
            if w.ndim != 4:
                raise FormatError(f"{lname}/{wname}: depthwise kernel of shape {w.shape}")
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
        w = np.asarray(groups[name]["0"])
        if w.ndim != 4:
            raise FormatError(f"{name}: depthwise kernel of shape {w.shape}")
        if w.shape[:2] == (1, 1):
            skipped += 1
            continue
        layers.append(_to_layer(name, len(layers), w, cfg))
    return layers, skipped


def read_keras(path: Path, *, fold_bn: bool = False) -> tuple[list[LayerKernels], int]:
    """Depthwise layers of a Keras .h5 / .keras file (batch norms stay separate layers)."""
    import h5py

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise FormatError(
                        f"{path}: a zip without config.json/model.weights.h5 is not a .keras archive"
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
    except FormatError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise FormatError(
            f"{path}: truncated or corrupt Keras file ({type(exc).__name__}: "
            f"{str(exc)[:100]}); save it again"
        ) from None
