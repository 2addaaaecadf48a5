"""Stage: "like in monkeys and cats", quantified: the kernels beside published receptive fields.

- :func:`reference`: the shipped table of published receptive-field statistics, one row per
  value or finding, each with its citation and how it was verified.
- :func:`compare`: per model, kernel size and dimensionless statistic, the kernels' value
  beside the null's (iid Gaussian kernels through the same atlas and fits), the fresh
  initialisation's and the published one, with the number of kernels behind each.
- :func:`kernel_statistics`: the per-kernel values behind it; figures in
  :mod:`kernelatlas.biology.figures` (functions that draw on an ``ax``).

Examples
--------
>>> from kernelatlas import biology
>>> biology.reference()["ref_id"].nunique() >= 8
True
"""

from __future__ import annotations

import importlib
from typing import Any

_API: dict[str, str] = {
    "reference": "kernelatlas.biology.literature",
    "sources": "kernelatlas.biology.literature",
    "REFERENCE_COLUMNS": "kernelatlas.biology.literature",
    "compare": "kernelatlas.biology.comparison",
    "kernel_statistics": "kernelatlas.biology.comparison",
    "label_kernels": "kernelatlas.biology.comparison",
    "null_statistics": "kernelatlas.biology.comparison",
    "null_table": "kernelatlas.biology.comparison",
    "group_statistics": "kernelatlas.biology.comparison",
    "NULL_SOURCE": "kernelatlas.biology.comparison",
    "init_kernels": "kernelatlas.biology.report",
    "COMPARE_COLUMNS": "kernelatlas.biology.comparison",
    "STAT_COLUMNS": "kernelatlas.biology.comparison",
    "FIT_COLUMNS_USED": "kernelatlas.biology.comparison",
    "STATISTICS": "kernelatlas.biology.statistics",
    "Statistic": "kernelatlas.biology.statistics",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kernelatlas.biology' has no attribute {name!r}")
