"""The reference autoencoders: one per kernel size, trained once on every real model.

The paper trained one autoencoder per kernel size on kernels pooled from many models, and
read every model against it. Training one on whatever a run was given makes a model's
figures depend on its company, so kernelatlas ships one *reference* autoencoder per kernel
size as package data (``kernelatlas/data/autoencoders/ae_KHxKW/``: ``model.safetensors``,
``config.json`` as written by :meth:`KernelAutoencoder.save`, and ``provenance.json``),
trained on the pooled kernels of every source in the registry
(:func:`kernelatlas.harvest.list_sources`) by ``benchmarks/train_reference_ae.py``, which
reproduces them bit for bit (CPU, one torch thread, same torch build).

A size gets a reference only when the pooled bank holds at least
:data:`MIN_REFERENCE_KERNELS` non-degenerate kernels from at least
:data:`MIN_REFERENCE_MODELS` models: a one-dimensional curve fitted to a few hundred kernels
of one model threads through them (on PP-OCRv6's 384 real 7x7 kernels: 53% classified in
sample, 25% on the held-out half) and is no reference for anything else. ``index.json``
lists the sizes shipped and those left out, with their counts.

Examples
--------
>>> from kernelatlas.autoencoder.reference import load_reference, reference_sizes
>>> (3, 3) in reference_sizes()
True
>>> ae = load_reference(3, device="cpu")
>>> ae.threshold_rule_
'null'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError

__all__ = [
    "MIN_REFERENCE_KERNELS",
    "MIN_REFERENCE_MODELS",
    "REFERENCE_RECIPE",
    "PooledBank",
    "reference_dir",
    "reference_index",
    "reference_sizes",
    "has_reference",
    "reference_provenance",
    "load_reference",
    "why_no_reference",
    "pool_sources",
    "eligibility",
    "train_reference",
    "write_references",
]

FORMAT = "kernelatlas.reference_autoencoder/1"
INDEX_FILE = "index.json"
PROVENANCE_FILE = "provenance.json"
#: A size needs this many non-degenerate kernels in the pooled bank to get a reference ...
MIN_REFERENCE_KERNELS = 10_000
#: ... from at least this many models (registry sources).
MIN_REFERENCE_MODELS = 3
#: The training recipe of every reference (KernelAutoencoder parameters); device is CPU.
#: 300 epochs at batch 256 (~55k optimiser steps on ~50k kernels) instead of the class
#: defaults (20 epochs at 4096): the short default leaves the 3x3/5x5 curves with few
#: derivative segments (docs/autoencoder.md). ``search=True`` is the project's projection
#: search (a principal-curve step), not the paper's plain gradient training.
REFERENCE_RECIPE: dict[str, Any] = {
    "hidden": 128,
    "epochs": 300,
    "batch_size": 256,
    "lr": 1e-2,
    "seed": 0,
    "n_grid": 512,
    "min_segment": 3,
    "latent_noise": 0.0,
    "search": True,
}


def _key(kernel_size: object) -> tuple[int, int]:
    from .model import parse_kernel_size

    return parse_kernel_size(kernel_size)


def _name(kh: int, kw: int) -> str:
    return f"ae_{kh}x{kw}"


def reference_dir() -> Path:
    """The folder of the shipped references (``kernelatlas/data/autoencoders``)."""
    return Path(str(resources.files("kernelatlas").joinpath("data", "autoencoders")))


def reference_index() -> dict[str, Any]:
    """``index.json``: sizes shipped, sizes left out (with counts), sources, command."""
    path = reference_dir() / INDEX_FILE
    if not path.is_file():
        return {"format": FORMAT, "references": {}, "not_shipped": {}, "sources": []}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise FormatError(f"{path} is corrupt ({exc}): reinstall kernelatlas") from None
    if doc.get("format") != FORMAT:
        raise FormatError(f"{path} has format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc


def reference_sizes() -> list[tuple[int, int]]:
    """Kernel sizes ``(kh, kw)`` with a shipped reference autoencoder."""
    refs = reference_index()["references"]
    return sorted(tuple(int(v) for v in key.split("x")) for key in refs)  # type: ignore[misc]


def has_reference(kernel_size: object) -> bool:
    """Whether a reference autoencoder ships for this kernel size."""
    return _key(kernel_size) in reference_sizes()


def _ref_path(kernel_size: object) -> Path:
    kh, kw = _key(kernel_size)
    if (kh, kw) not in reference_sizes():
        raise KernelAtlasError(
            f"no reference autoencoder for {kh}x{kw} ({why_no_reference((kh, kw))}):"
            " train one on your kernels with KernelAutoencoder or `--ae train`"
        )
    return reference_dir() / _name(kh, kw)


def reference_provenance(kernel_size: object) -> dict[str, Any]:
    """``provenance.json`` of a reference: its training bank (sources with sha256 and
    kernel counts, the pooled bank's sha256), recipe, seed, command and versions."""
    path = _ref_path(kernel_size) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path} is unreadable ({exc}): reinstall kernelatlas") from None


def load_reference(kernel_size: object, *, device: str | None = None):  # -> KernelAutoencoder
    """The shipped reference autoencoder for ``kernel_size`` (``device=None``: CUDA if any).

    Its decoded line is named again by the atlas in force
    (:meth:`KernelAutoencoder.rename_spectrum`); the network and ``threshold_`` are as
    shipped. ``provenance_`` holds :func:`reference_provenance`. Raises
    :class:`~kernelatlas.errors.KernelAtlasError` for a size without a reference.
    """
    from .model import KernelAutoencoder

    path = _ref_path(kernel_size)
    ae = KernelAutoencoder.load(path, device=device)
    ae.provenance_ = reference_provenance(kernel_size)
    return ae.rename_spectrum()


def why_no_reference(kernel_size: object) -> str:
    """One phrase: why a size has no reference (the pooled bank's counts at training time)."""
    kh, kw = _key(kernel_size)
    key = f"{kh}x{kw}"
    idx = reference_index()
    if key in idx["references"]:
        return f"{key} has a reference"
    left = idx.get("not_shipped", {}).get(key)
    if left is None:
        return f"the real models the references were trained on hold no {key} kernels"
    return str(left["reason"])


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class PooledBank:
    """The kernels of one size pooled over sources, in a fixed order, with provenance.

    ``sources``: one dict per contributing source (registry provenance plus ``layers``
    and ``kernels`` of this size), in pooling order.
    """

    kh: int
    kw: int
    kernels: np.ndarray
    sources: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def sha256(self) -> str:
        """sha256 of the pooled float32 kernels (C order): names the training bank."""
        return hashlib.sha256(np.ascontiguousarray(self.kernels, np.float32).tobytes()).hexdigest()

    @property
    def n_models(self) -> int:
        return len(self.sources)


def pool_sources(names: Sequence[str]) -> dict[tuple[int, int], PooledBank]:
    """Harvest registry sources (in sorted order, raw weights, no BN folding) and pool
    their kernels per size (1x1 left out). Sources not yet cached are fetched."""
    from ..harvest import harvest
    from ..harvest.zoo import get_source

    parts: dict[tuple[int, int], list[np.ndarray]] = {}
    prov: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for name in sorted(dict.fromkeys(str(n) for n in names)):
        info = get_source(name)
        res = harvest(name, fold_bn=False)
        by_size: dict[tuple[int, int], list[np.ndarray]] = {}
        for layer in res.layers:
            by_size.setdefault(tuple(layer.weights.shape[1:]), []).append(layer.weights)
        for size, arrays in by_size.items():
            if size[0] * size[1] < 2:
                continue
            k = np.concatenate(arrays).astype(np.float32)
            parts.setdefault(size, []).append(k)
            prov.setdefault(size, []).append(
                {
                    "name": info.name,
                    "model": info.model,
                    "package": info.package,
                    "member": info.member,
                    "sha256": info.sha256,
                    "format": info.format,
                    "licence": info.licence,
                    "layers": len(arrays),
                    "kernels": int(k.shape[0]),
                }
            )
    return {
        s: PooledBank(s[0], s[1], np.concatenate(parts[s]), tuple(prov[s])) for s in sorted(parts)
    }


def eligibility(bank: PooledBank) -> str | None:
    """None when ``bank`` may train a reference, else the reason (one phrase)."""
    from ..normalize import normalize

    n = int((~normalize(bank.kernels).degenerate).sum())
    if n >= MIN_REFERENCE_KERNELS and bank.n_models >= MIN_REFERENCE_MODELS:
        return None
    return (
        f"the real models the references were trained on hold {n:,} non-degenerate"
        f" {bank.kh}x{bank.kw}"
        f" kernels from {bank.n_models} model{'s' if bank.n_models != 1 else ''}, fewer than"
        f" the {MIN_REFERENCE_KERNELS:,} from {MIN_REFERENCE_MODELS} models a reference needs"
    )


def train_reference(
    bank: PooledBank,
    *,
    recipe: dict[str, Any] | None = None,
    command: str = "",
    progress: bool = False,
):  # -> tuple[KernelAutoencoder, dict]
    """Train one reference autoencoder on CPU; returns it and its provenance document."""
    import platform

    import torch

    from .. import __version__
    from .model import KernelAutoencoder

    params = dict(REFERENCE_RECIPE if recipe is None else recipe)
    ae = KernelAutoencoder((bank.kh, bank.kw), device="cpu", progress=progress, **params)
    ae.fit(bank.kernels)
    prov = {
        "format": FORMAT,
        "kernel_size": [bank.kh, bank.kw],
        "kernelatlas_version": __version__,
        "command": command,
        "seed": int(params.get("seed", 0)),
        "recipe": params,
        "device": "cpu",
        "torch_threads": int(torch.get_num_threads()),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "fold_bn": False,
        "bank": {
            "sha256": bank.sha256,
            "kernels": int(bank.kernels.shape[0]),
            "trained_on": int(ae.n_train_),
            "degenerate": int(ae.n_degenerate_),
            "models": bank.n_models,
        },
        "sources": list(bank.sources),
        "threshold": float(ae.threshold_),
        "threshold_rule": str(ae.threshold_rule_),
        "null_coverage": float(ae.null_coverage_),
        "final_loss": float(ae.loss_history_[-1]),
    }
    return ae, prov


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_references(
    trained: dict[tuple[int, int], tuple[Any, dict[str, Any]]],
    left_out: dict[tuple[int, int], dict[str, Any]],
    out: str | os.PathLike[str],
    *,
    sources: Sequence[str],
    command: str,
) -> Path:
    """Write ``out/ae_KHxKW/`` for each trained reference and ``out/index.json``.

    Everything is written into a temporary sibling folder first and moved in only once
    complete; only what this function writes (``ae_*`` folders with a provenance file,
    ``index.json``) is replaced.
    """
    from .. import __version__

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        refs = {}
        for (kh, kw), (ae, prov) in sorted(trained.items()):
            d = ae.save(tmp / _name(kh, kw))
            prov = dict(prov)
            prov["files"] = {
                "model.safetensors": _sha256(d / "model.safetensors"),
                "config.json": _sha256(d / "config.json"),
            }
            (d / PROVENANCE_FILE).write_text(json.dumps(prov, indent=1) + "\n")
            refs[f"{kh}x{kw}"] = _name(kh, kw)
        index = {
            "format": FORMAT,
            "kernelatlas_version": __version__,
            "command": command,
            "sources": sorted(str(s) for s in sources),
            "min_kernels": MIN_REFERENCE_KERNELS,
            "min_models": MIN_REFERENCE_MODELS,
            "references": refs,
            "not_shipped": {f"{kh}x{kw}": v for (kh, kw), v in sorted(left_out.items())},
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        out.mkdir(exist_ok=True)
        for old in out.glob("ae_*"):
            if (old / PROVENANCE_FILE).is_file():
                shutil.rmtree(old)
        for new in sorted(tmp.iterdir()):
            os.replace(new, out / new.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
