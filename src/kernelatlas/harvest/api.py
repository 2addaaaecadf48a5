"""``harvest`` (one source -> HarvestResult) and ``harvest_to_bank`` (many -> a KernelBank)."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..bank import KernelBank
from ..errors import KernelAtlasError
from .base import HarvestResult, LayerKernels
from .formats import ReadResult, detect_format, list_formats, read_file

__all__ = [
    "harvest",
    "harvest_to_bank",
    "detect_format",
    "source_key",
    "SkippedLayersWarning",
    "skipped_text",
]

#: What each skip reason means, for messages (a reader may add others).
SKIP_REASONS: dict[str, str] = {
    "1x1": "1x1 kernels, nothing spatial to analyse",
    "stem": "the grayscale stem conv, which has the depthwise shape",
    "expanded view": "expanded views (stride 0), not trained weights",
}


class SkippedLayersWarning(UserWarning):
    """Depthwise-shaped layers a reader did not keep, counted by reason (the CLI prints it)."""


def skipped_text(skipped: dict[str, int]) -> str:
    """``"1 layer (1x1 kernels, ...); 2 layers (...)"`` for a ``skipped`` mapping."""
    return "; ".join(
        f"{n} layer{'s' if n != 1 else ''} ({SKIP_REASONS.get(reason, reason)})"
        for reason, n in sorted(skipped.items())
        if n
    )


def source_key(source: Any, *, fold_bn: bool = False) -> str | None:
    """The bank key of a source (None for an nn.Module, known only after harvesting)."""
    if not isinstance(source, str | os.PathLike):
        return None
    s = str(source)
    if s.startswith("timm:") or _is_registry_name(s):
        key = s
    else:
        key = str(Path(s).expanduser().resolve())
    return key + "+fold_bn" if fold_bn else key


def _is_registry_name(s: str) -> bool:
    from .zoo import is_registered

    return is_registered(s) and not Path(s).exists()


def harvest(source: Any, *, fold_bn: bool = False) -> HarvestResult:
    """Harvest every depthwise kernel of one source.

    Parameters
    ----------
    source : a registry name (``efficientnet_lite0``, ``mediapipe/iris_landmark``...),
        ``timm:NAME`` / ``timm:NAME?file=PATH`` / ``timm:NAME@init[:SEED]``, a path to a
        weight file (.pt/.pth/.bin state dicts, pickled models and TorchScript archives,
        .safetensors, .onnx, .tflite, .h5/.keras, .npy/.npz; `kernelatlas formats`),
        or an ``nn.Module``.
    fold_bn : multiply each kernel by its following batch norm's scale (needs the
        architecture: modules, timm, ``mobilenet_v2``, pickled models, TorchScript, ONNX).

    Returns
    -------
    HarvestResult ; warns (and holds zero layers) when the model has no depthwise conv.

    Examples
    --------
    >>> res = harvest("pp_lcnet_orientation")          # doctest: +SKIP
    >>> res.counts()                                   # doctest: +SKIP
    {(3, 3): (6, 432), (5, 5): (7, 2048)}
    """
    res = _harvest(source, fold_bn)
    if any(res.skipped.values()):
        warnings.warn(
            f"{res.source}: not harvested: {skipped_text(dict(res.skipped))}",
            SkippedLayersWarning,
            stacklevel=2,
        )
    if not res.layers:
        warnings.warn(
            f"{res.source}: no depthwise convolution found (skipped 1x1: {res.skipped_1x1}); "
            "zero kernels",
            stacklevel=2,
        )
    return res


def _harvest(source: Any, fold_bn: bool) -> HarvestResult:
    import torch

    from . import zoo
    from .torch_module import read_module

    suffix = "+fold_bn" if fold_bn else ""
    if isinstance(source, torch.nn.Module):
        r = read_module(source, fold_bn=fold_bn)
        key = f"module:{type(source).__name__}@{_digest(r.layers)}{suffix}"
        return _result(key, type(source).__name__, "module", r)
    if not isinstance(source, str | os.PathLike):
        raise KernelAtlasError(
            f"cannot harvest a {type(source).__name__}: pass a source name, a path or an nn.Module"
        )
    s = str(source)
    if s.startswith("timm:"):
        spec = zoo.parse_timm(s)
        r = read_module(zoo.create_timm_model(spec), fold_bn=fold_bn)
        return _result(s + suffix, spec.name, "module", r)
    if _is_registry_name(s):
        from .cache import fetch

        info = zoo.get_source(s)
        path = fetch(info)
        if info.arch:
            r = read_module(_build_arch(info, path, fold_bn), fold_bn=fold_bn)
        else:
            r = read_file(path, info.format, fold_bn=fold_bn)
        return _result(s + suffix, info.model, info.format, r)
    path = Path(s).expanduser()
    fmt = detect_format(path)
    r = read_file(path, fmt, fold_bn=fold_bn)
    return _result(str(path.resolve()) + suffix, _model_name(path), fmt, r)


def _result(key: str, model: str, fmt: str, r: ReadResult) -> HarvestResult:
    return HarvestResult(key, model, fmt, r.layers, dict(r.skipped), tuple(r.notes))


def _model_name(path: Path) -> str:
    name = path.name
    exts = {e for spec in list_formats() for e in spec.extensions}
    for ext in (".weights.h5", *sorted(exts, key=len, reverse=True)):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return name


def _digest(layers: list[LayerKernels]) -> str:
    import hashlib

    h = hashlib.sha1()
    for lk in layers:
        h.update(lk.layer.encode())
        h.update(lk.weights.tobytes())
    return h.hexdigest()[:12]


def _build_arch(info: Any, path: Path, fold_bn: bool = False) -> Any:
    from .checkpoint import module_from_checkpoint

    mod_name, _, fn_name = info.arch.partition(":")
    try:
        builder = getattr(importlib.import_module(mod_name), fn_name)
    except ImportError as exc:
        raise KernelAtlasError(
            f"{info.name} needs {exc.name} for its architecture: pip install 'kernelatlas[timm]'"
        ) from None
    # built on the meta device without initialisers; only the depthwise and batch-norm
    # tensors are read from the checkpoint (names and shapes of all checked, as strict)
    return module_from_checkpoint(builder, path, name=info.name, fold_bn=fold_bn)


def harvest_to_bank(
    sources: Iterable[Any] | Any,
    bank: KernelBank | str | os.PathLike[str],
    *,
    fold_bn: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Harvest each source into ``bank``, skipping sources already there (resumable).

    Returns
    -------
    DataFrame ``source, model, kh, kw, layers, kernels`` for the given sources (read back
    from the bank). Warns for a source with no depthwise conv; raises
    :class:`KernelAtlasError` only when no source yielded any kernel.
    """
    from tqdm.auto import tqdm

    sources, bank = harvest_arguments(sources, bank)
    keys: list[str] = []
    # disable=None: a bar only on a terminal (logs and pipes stay clean)
    with tqdm(
        sources, desc="harvest", unit="source", disable=None if progress else True, leave=False
    ) as bar:
        for source in bar:
            key = source_key(source, fold_bn=fold_bn)
            bar.set_postfix_str(str(key or type(source).__name__)[-40:])
            if key is not None and bank.has_source(key):
                keys.append(key)
                continue
            res = harvest(source, fold_bn=fold_bn)
            bank.add(res)
            keys.append(res.source)
    return harvested_counts(bank, keys)


def harvested_counts(bank: Any, keys: list[str]) -> pd.DataFrame:
    """The bank's counts for the sources ``keys``; an error when none yielded a kernel."""
    counts = bank.counts()
    counts = counts[counts["source"].isin(keys)].reset_index(drop=True)
    if counts.empty:
        raise KernelAtlasError(
            "no depthwise kernels in any source: check the models hold depthwise convolutions "
            "(groups == in_channels)"
        )
    return counts


def harvest_arguments(sources: Iterable[Any] | Any, bank: Any) -> tuple[list[Any], KernelBank]:
    """Validate the arguments of a harvest into a bank: a list of sources and a KernelBank."""
    if isinstance(sources, str | os.PathLike) or not isinstance(sources, Iterable):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise KernelAtlasError("no sources given: name at least one (see `kernelatlas sources`)")
    return sources, bank if isinstance(bank, KernelBank) else KernelBank(bank)
