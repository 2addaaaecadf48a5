"""kernelatlas: name the trained depthwise kernels of DS-CNNs with a calibrated atlas.

The public API is imported lazily so that ``import kernelatlas`` stays fast and the
optional extras (ONNX, TFLite, Keras, timm, Dask) are only needed when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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
    "KernelAutoencoder": "kernelatlas.autoencoder",
    "discover_master_keys": "kernelatlas.autoencoder",
    "analyze": "kernelatlas.pipeline",
    "AnalysisConfig": "kernelatlas.pipeline",
    "init_depthwise_": "kernelatlas.train",
    "CoverageTracker": "kernelatlas.train",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kernelatlas' has no attribute {name!r}")
