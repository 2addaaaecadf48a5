"""``harvest`` (one source -> HarvestResult) and ``harvest_to_bank`` (many -> a KernelBank)."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Iterator
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
    "iter_harvest_to_bank",
    "detect_format",
    "source_key",
    "SkippedLayersWarning",
    "skipped_text",
    "source_paths",
    "source_fingerprint",
    "bank_status",
    "is_bank_dir",
    "link_bank",
    "HARVEST_STATUSES",
]

#: What harvesting into a bank did with each source (the ``status`` column of
#: :func:`harvest_to_bank`): read for the first time; taken from the bank because its
#: content is unchanged; read again because its content changed (or the bank entry
#: records no fingerprint, as in banks of kernelatlas 0.1.0).
HARVEST_STATUSES: tuple[str, ...] = ("harvested", "reused", "changed")

#: What each skip reason means, for messages (a reader may add others): what the
#: layers are, and why they are skipped.
SKIP_REASONS: dict[str, tuple[str, str]] = {
    "1x1": ("1x1", "nothing spatial to analyse"),
    "stem": ("stem", "the grayscale stem conv, which has the depthwise shape"),
    "expanded view": ("expanded-view", "stride-0 views, not trained weights"),
    "weights not constant": (
        "",
        "filters computed at run time, not stored in the file: export the model with its "
        "weights as constants",
    ),
    "nchwc": (
        "NCHWc",
        "onnxruntime's CPU-specific blocked weights: save the model optimised at "
        "ORT_ENABLE_EXTENDED or lower, or harvest the model it came from",
    ),
}


class SkippedLayersWarning(UserWarning):
    """Depthwise-shaped layers a reader did not keep, counted by reason (the CLI prints it)."""


def skipped_text(skipped: dict[str, int]) -> str:
    """``"13 1x1 layers skipped (nothing spatial to analyse); 1 stem layer skipped (...)"``
    for a ``skipped`` mapping: the layers left out, never the source."""
    parts = []
    for reason, n in sorted(skipped.items()):
        if n:
            what, why = SKIP_REASONS.get(reason, ("", reason))
            parts.append(f"{n} {what + ' ' if what else ''}layer{'s' * (n != 1)} skipped ({why})")
    return "; ".join(parts)


def source_key(source: Any, *, fold_bn: bool = False) -> str | None:
    """The bank key of a source (None for an nn.Module, known only after harvesting)."""
    if not isinstance(source, str | os.PathLike):
        return None
    s = str(source)
    if s.startswith("timm:") or _is_registry_name(s):
        key = s
    else:
        key = os.path.realpath(Path(s).expanduser())  # no RuntimeError on a symlink loop
    return key + "+fold_bn" if fold_bn else key


def source_paths(source: Any) -> list[Path]:
    """The local files or folders a source reads (for the output checks): a model file, a
    bank folder, a registered source's cached file, the file of ``timm:NAME?file=PATH``."""
    if not isinstance(source, str | os.PathLike):
        return []
    s = str(source)
    if s.startswith("timm:"):
        from .zoo import parse_timm

        try:
            file = parse_timm(s).file
        except KernelAtlasError:
            return []
        return [Path(file).expanduser()] if file else []
    if _is_registry_name(s):
        from .cache import cached_path

        return [cached_path(s)]
    return [Path(s).expanduser()]


def _file_fingerprint(path: Path) -> dict[str, Any]:
    from ..errors import FormatError
    from .cache import sha256_file
    from .formats import check_regular_file

    check_regular_file(path)  # never hash a FIFO or a device
    try:
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror}); check its permissions") from None


def reader_id() -> str:
    """``VERSION+DIGEST`` of the harvest readers' code (:mod:`kernelatlas.codehash`),
    recorded in every fingerprint: kernels that other reader code read (another release, a
    development install) are read again, never reused as if unchanged."""
    from .. import __version__
    from ..codehash import files_digest, package_files

    return f"{__version__}+{files_digest(package_files('harvest'))[:16]}"


def source_fingerprint(source: Any) -> dict[str, Any] | None:
    """What identifies the content of a source and the code that read it (``reader``:
    :func:`reader_id`), recorded in the bank beside its kernels; see :func:`_fingerprint`."""
    fp = _fingerprint(source)
    return None if fp is None else {**fp, "reader": reader_id()}


def _fingerprint(source: Any) -> dict[str, Any] | None:
    """What identifies the content of a source, recorded in the bank beside its kernels.

    A file: its ``size``, ``mtime_ns`` and ``sha256`` (streamed); a registered source: its
    registry ``sha256`` (the cache checks it on download); ``timm:NAME@init``: the timm
    and torch versions (the initialisation depends on them); ``timm:NAME?file=PATH``: that
    file's fingerprint; an ``nn.Module``: None (its key is a digest of its weights).
    """
    if not isinstance(source, str | os.PathLike):
        return None
    s = str(source)
    if s.startswith("timm:"):
        from .zoo import parse_timm

        spec = parse_timm(s)
        if spec.file:
            return _file_fingerprint(Path(spec.file).expanduser())
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions = {p: version(p) for p in ("timm", "torch")}
        except PackageNotFoundError:
            versions = {}
        return {"timm_spec": s, **versions}
    if _is_registry_name(s):
        from .zoo import get_source

        return {"registry": s, "sha256": get_source(s).sha256}
    path = Path(s).expanduser()
    return _folder_fingerprint(path) if path.is_dir() else _file_fingerprint(path)


def _folder_fingerprint(folder: Path) -> dict[str, Any]:
    """A multi-file model (a TF.js folder): every regular file in it, by name, size, sha256
    (never a file outside it: a symlink leading out is left out, as its reader refuses it)."""
    import hashlib

    h, size, n = hashlib.sha256(), 0, 0
    inside = Path(os.path.realpath(folder))
    for f in sorted(folder.iterdir()):  # realpath: no RuntimeError on a symlink loop
        if f.is_symlink() and inside not in Path(os.path.realpath(f)).parents:
            continue  # read in full to hash it: an 8 GB file out of the folder took 20 s
        if f.is_file() and not f.name.startswith("."):
            fp = _file_fingerprint(f)
            h.update(f"{f.name}\0{fp['size']}\0{fp['sha256']}\n".encode())
            size, n = size + fp["size"], n + 1
    st = os.stat(folder)
    return {"files": n, "size": size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def _same_content(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if old is None or new is None or old.get("reader") != new.get("reader"):
        return False  # unrecorded, or read by other reader code
    if "sha256" in new:  # files and registered sources: the content hash decides
        return old.get("sha256") == new["sha256"] and old.get("size") == new.get("size")
    return old == new


def bank_status(
    bank: KernelBank, source: Any, *, fold_bn: bool = False
) -> tuple[str | None, dict[str, Any] | None, str]:
    """``(key, fingerprint, status)`` of a source against ``bank``, before harvesting it.

    ``status`` is ``"reused"`` when the bank holds the source with the same content,
    ``"changed"`` when it holds it with other (or unrecorded) content, ``"harvested"``
    when it does not hold it (see :data:`HARVEST_STATUSES`).
    """
    key = source_key(source, fold_bn=fold_bn)
    if key is None or not bank.has_source(key):
        return key, None, "harvested"
    try:
        fp = source_fingerprint(source)
    except KernelAtlasError:  # unreadable now: harvesting it says why
        return key, None, "changed"
    return key, fp, "reused" if _same_content(bank.fingerprint(key), fp) else "changed"


def is_bank_dir(source: Any) -> bool:
    """Whether ``source`` is a kernel bank folder (``kernelatlas harvest --out``, or an
    analysis's ``bank/``)."""
    if not isinstance(source, str | os.PathLike) or str(source).startswith("timm:"):
        return False
    from ..outputs import is_kernelatlas_dir

    return is_kernelatlas_dir(Path(source).expanduser(), "bank")


def link_bank(src: Any, bank: KernelBank, *, fold_bn: bool = False) -> dict[str, str]:
    """Put the sources of bank folder ``src`` into (local) ``bank`` by hard links (a copy
    across file systems); returns {source key: ``"bank"``}.

    Refuses a bank harvested with the other ``fold_bn``; warns when a file the bank was
    harvested from has changed since (its kernels would describe the old weights).
    """
    import shutil

    given = KernelBank(Path(src).expanduser())
    keys: dict[str, str] = {}
    for f, key in zip(given.files(), given.sources(), strict=True):
        given.parquet_file(f)  # its declared sizes, before anything is read (check_row_groups)
        if key.endswith("+fold_bn") != fold_bn:
            done, need = ("with", "with") if not fold_bn else ("without", "without")
            raise KernelAtlasError(
                f"{src} holds {key}, harvested {done} --fold-bn: analyse it {need} --fold-bn "
                "too, or harvest it again"
            )
        path = key.removesuffix("+fold_bn")
        if os.path.isabs(path) and os.path.isfile(path):
            try:
                now = source_fingerprint(path)
            except KernelAtlasError:
                now = None
            old = given.fingerprint(key)
            if not _same_content(old, now):
                why = (
                    f"kernelatlas {str(old.get('reader') or '?').split('+')[0]}'s readers read "
                    "them, not this version's"
                    if old and now and _same_content({**old, "reader": now.get("reader")}, now)
                    else "the file changed since it was harvested, or the bank records no "
                    "content hash"
                )
                warnings.warn(
                    f"{src}: its kernels of {path} may be stale ({why}): analyse the file "
                    "itself to read its current weights with this version",
                    stacklevel=2,
                )
        bank.path.mkdir(parents=True, exist_ok=True)
        dst = bank.path / Path(f).name
        dst.unlink(missing_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            shutil.copy2(f, dst)
        keys[key] = "bank"
    return keys


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
    from dataclasses import replace

    try:  # before reading: a change during the read is seen next time
        fingerprint = source_fingerprint(source)
    except KernelAtlasError:
        fingerprint = None  # the reader says what is wrong; unfingerprinted = re-read next time
    res = replace(_harvest(source, fold_bn), fingerprint=fingerprint)
    if any(res.skipped.values()):
        warnings.warn(
            f"{res.source}: {skipped_text(dict(res.skipped))}",
            SkippedLayersWarning,
            stacklevel=2,
        )
    if not res.layers:
        if any(n for reason, n in res.skipped.items() if reason != "1x1"):
            what = "no depthwise kernels read: each depthwise layer was skipped (as said above)"
        else:
            what = f"no depthwise convolution found (skipped 1x1: {res.skipped_1x1})"
        warnings.warn(f"{res.source}: {what}; zero kernels", stacklevel=2)
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
            r = read_file(path, info.format, fold_bn=fold_bn, source=s)
        return _result(s + suffix, info.model, info.format, r)
    path = Path(s).expanduser()
    fmt = detect_format(path)
    r = read_file(path, fmt, fold_bn=fold_bn, source=s)
    return _result(os.path.realpath(path) + suffix, _model_name(path), fmt, r)


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
    """Harvest each source into ``bank``; a source already there with the same content
    (see :func:`source_fingerprint`) is reused, one whose file changed is harvested again.

    Returns
    -------
    DataFrame ``source, model, kh, kw, layers, kernels, status`` for the given sources
    (read back from the bank; ``status`` in :data:`HARVEST_STATUSES`). Warns for a source
    with no depthwise conv; raises :class:`KernelAtlasError` only when no source yielded
    any kernel.
    """
    sources, bank = harvest_arguments(sources, bank)
    status = dict(iter_harvest_to_bank(sources, bank, fold_bn=fold_bn, progress=progress))
    return harvested_counts(bank, status)


def iter_harvest_to_bank(
    sources: Iterable[Any] | Any,
    bank: KernelBank | str | os.PathLike[str],
    *,
    fold_bn: bool = False,
    progress: bool = True,
) -> Iterator[tuple[str, str]]:
    """:func:`harvest_to_bank` one source at a time: yields ``(source key, status)`` as soon
    as that source is in the bank (so its kernels can be analysed while the next source is
    read); a source given twice is yielded once."""
    from tqdm.auto import tqdm

    sources, bank = harvest_arguments(sources, bank)
    seen: set[str] = set()
    # disable=None: a bar only on a terminal (logs and pipes stay clean)
    with tqdm(
        sources, desc="harvest", unit="source", disable=None if progress else True, leave=False
    ) as bar:
        for source in bar:
            key, _, state = bank_status(bank, source, fold_bn=fold_bn)
            bar.set_postfix_str(str(key or type(source).__name__)[-40:])
            if key is not None and (state == "reused" or key in seen):
                if key not in seen:
                    seen.add(key)
                    yield key, state
                continue
            res = harvest(source, fold_bn=fold_bn)
            if key is None and bank.has_source(res.source):  # an nn.Module seen before
                state = "reused"
            bank.add(res, replace=state == "changed")
            if res.source not in seen:
                seen.add(res.source)
                yield res.source, state


def harvested_counts(bank: Any, keys: list[str] | dict[str, str]) -> pd.DataFrame:
    """The bank's counts for the sources ``keys`` (with a ``status`` column when ``keys``
    maps each key to its status); an error when none yielded a kernel."""
    counts = bank.counts()
    counts = counts[counts["source"].isin(list(keys))].reset_index(drop=True)
    if isinstance(keys, dict):
        counts["status"] = counts["source"].map(keys)
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
