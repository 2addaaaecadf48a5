"""The atlas: analytic DoG-family pattern generators and the null-calibrated classifier.

``functional`` holds the pure generators and metrics; :class:`Atlas` is the thin
scikit-learn-style classifier over them.
"""

from __future__ import annotations

from typing import Any

from . import functional

__all__ = ["Atlas", "functional"]


def __getattr__(name: str) -> Any:
    if name == "Atlas":
        from .classifier import Atlas

        return Atlas
    raise AttributeError(f"module 'kernelatlas.atlas' has no attribute {name!r}")
