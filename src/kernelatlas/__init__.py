"""kernelatlas: name the trained depthwise kernels of DS-CNNs with a calibrated atlas.

The public API is imported lazily so that ``import kernelatlas`` stays fast and the
optional extras (ONNX, TFLite, Keras, timm, Dask) are only needed when used.

``kernelatlas.harvest`` and ``kernelatlas.normalize`` are the functions, also after their
modules (``kernelatlas/harvest/``, ``kernelatlas/normalize.py``) have been imported: reach
those modules with ``from kernelatlas.harvest import zoo`` or
``importlib.import_module("kernelatlas.harvest.zoo")`` (not ``import ... as``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.2.0.dev0"

# public name -> module that defines it
_API: dict[str, str] = {
    "KernelAtlasError": "kernelatlas.errors",
    "FAMILIES": "kernelatlas.taxonomy",
    "normalize": "kernelatlas.normalize",
    "KernelBank": "kernelatlas.bank",
    "harvest": "kernelatlas.harvest",
    "harvest_to_bank": "kernelatlas.harvest",
    "register_source": "kernelatlas.harvest.zoo",
    "list_sources": "kernelatlas.harvest.zoo",
    "get_source": "kernelatlas.harvest.zoo",
    "Atlas": "kernelatlas.atlas",
    "fit_kernels": "kernelatlas.fit",
    "KernelFitter": "kernelatlas.fit",
    "register_family": "kernelatlas.atlas.registry",
    "PatternFamily": "kernelatlas.atlas.family",
    "KernelAutoencoder": "kernelatlas.autoencoder",
    "discover_master_keys": "kernelatlas.autoencoder",
    "analyze": "kernelatlas.pipeline",
    "kernel_weights": "kernelatlas.results",
    "read_kernels": "kernelatlas.results",
    "AnalysisConfig": "kernelatlas.pipeline",
    "init_depthwise_": "kernelatlas.train",
    "bake_": "kernelatlas.train",
    "register_scheme": "kernelatlas.train",
    "list_schemes": "kernelatlas.train",
    "CoverageTracker": "kernelatlas.train",
}

# public subpackages reached as attributes (``kernelatlas.biology.compare(...)``)
_SUBPACKAGES: tuple[str, ...] = ("biology",)

__all__ = ["__version__", *_API, *_SUBPACKAGES]


# public functions that share their name with a module of this package
_SHADOWED = frozenset({"harvest", "normalize"})


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kernelatlas.{name}")
    raise AttributeError(f"module 'kernelatlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    """The package module: importing ``kernelatlas.harvest`` (or ``.normalize``) makes the
    import system bind that module as an attribute here; keep the function instead (the
    module stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
