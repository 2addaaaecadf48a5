"""Stage: the paper's method (Babaiee et al., ICLR 2024 and NeurIPS 2025), automated.

- :class:`KernelAutoencoder`: one 1-D cosine autoencoder per kernel size, its spectrum
  named by the atlas and cut into segments, the paper's "classified" rule.
- :func:`load_reference`: the shipped reference autoencoder of a kernel size, trained once
  on every registered real model (what ``analyze`` uses by default).
- :func:`discover_master_keys`: the follow-up's greedy master-key filter selection.
- :func:`kmeans_unit_kernels`: the k-means baseline the paper used for MobileNetV3.

See docs/autoencoder.md.
"""

from __future__ import annotations

from .agreement import agreement
from .kmeans import KMeansResult, kmeans_unit_kernels
from .master_keys import MasterKeys, discover_master_keys, explained_by, match_filters
from .model import PREDICT_COLUMNS, KernelAutoencoder
from .reference import load_reference, reference_provenance, reference_sizes
from .spectrum import SEGMENT_COLUMNS, SPECTRUM_COLUMNS, name_patterns, segment_spectrum

__all__ = [
    "KernelAutoencoder",
    "load_reference",
    "reference_sizes",
    "reference_provenance",
    "agreement",
    "PREDICT_COLUMNS",
    "SPECTRUM_COLUMNS",
    "SEGMENT_COLUMNS",
    "discover_master_keys",
    "MasterKeys",
    "explained_by",
    "match_filters",
    "kmeans_unit_kernels",
    "KMeansResult",
    "name_patterns",
    "segment_spectrum",
]
