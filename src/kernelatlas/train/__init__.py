"""Feed the atlas back into training: schemes, the training loop, coverage, benchmarks.

- :func:`init_depthwise_` applies a registered scheme (:func:`list_schemes`) to every
  depthwise convolution of any model: initialisers (DoG, atlas-sampled, master-key,
  covariance), structured kernels on the atlas basis, frozen master keys with per-channel
  terms, the atlas prior, layer-scale variants. :func:`bake_` turns the model back into a
  plain one; :func:`register_scheme` adds a scheme.
- :func:`train_model` / :class:`LoopConfig` / :func:`param_groups`: the one training loop.
- :class:`CoverageTracker`: atlas coverage per layer every N steps of any training loop.
- :mod:`.data`, :mod:`.models`, :mod:`.config`, :mod:`.bench`, :mod:`.stats`, :mod:`.report`:
  the real datasets, the small DS-CNNs and the ``kernelatlas bench-train`` benchmark.
"""

from __future__ import annotations

from typing import Any

from .coverage import CoverageTracker, plot_coverage
from .init import DoGConfig, depthwise_convs
from .loop import LoopConfig, TrainResult, param_groups, train_model
from .schemes import (
    SchemeInfo,
    bake_,
    get_scheme,
    init_depthwise_,
    is_plain,
    list_schemes,
    register_scheme,
)
from .structured import atlas_basis

__all__ = [
    "init_depthwise_",
    "bake_",
    "is_plain",
    "register_scheme",
    "get_scheme",
    "list_schemes",
    "SchemeInfo",
    "CoverageTracker",
    "DoGConfig",
    "SCHEMES",
    "depthwise_convs",
    "plot_coverage",
    "train_model",
    "LoopConfig",
    "TrainResult",
    "param_groups",
    "atlas_basis",
]


def __getattr__(name: str) -> Any:
    if name == "SCHEMES":  # the registry's names when asked (plugins included)
        return tuple(list_schemes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
