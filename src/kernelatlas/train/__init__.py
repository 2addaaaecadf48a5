"""Feed the atlas back into training: depthwise initialisers, coverage tracking, benchmark.

- :func:`init_depthwise_`: DoG, atlas-sampled, master-key and covariance initialisers for
  every depthwise convolution of a model (optionally frozen, with a per-channel shift).
- :class:`CoverageTracker`: atlas coverage per layer every N steps of any training loop.
- :mod:`.data`, :mod:`.models`, :mod:`.bench`: the real datasets, the small DS-CNNs and the
  ``kernelatlas bench-init`` benchmark.
"""

from __future__ import annotations

from .coverage import CoverageTracker, plot_coverage
from .init import SCHEMES, DoGConfig, depthwise_convs, init_depthwise_

__all__ = [
    "init_depthwise_",
    "CoverageTracker",
    "DoGConfig",
    "SCHEMES",
    "depthwise_convs",
    "plot_coverage",
]
