"""The atlas: the pattern families (plugins), their generators and the calibrated classifier.

``functional`` holds the pure generators and metrics; the families are registered plugins
(:mod:`.registry`, :mod:`.family`, one module each in :mod:`.families`); :class:`Atlas` is
the thin scikit-learn-style classifier over them.
"""

from __future__ import annotations

from typing import Any

from . import functional

__all__ = [
    "Atlas",
    "functional",
    "PatternFamily",
    "register_family",
    "unregister_family",
    "get_family",
    "list_families",
]

_LAZY = {
    "Atlas": ".classifier",
    "PatternFamily": ".family",
    "register_family": ".registry",
    "unregister_family": ".registry",
    "get_family": ".registry",
    "list_families": ".registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'kernelatlas.atlas' has no attribute {name!r}")
