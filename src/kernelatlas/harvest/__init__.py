"""Stage: harvest every depthwise kernel of a model, with provenance, into a kernel bank.

One reader per format (``torch_module``, ``checkpoint``, ``safetensors_``, ``onnx_``,
``tflite_``, ``keras_h5``, ``arrays``), one registry of named sources (``zoo``) and its
cache (``cache``). :func:`harvest` picks the reader; :func:`harvest_to_bank` fills a
:class:`~kernelatlas.bank.KernelBank`.
"""

from __future__ import annotations

from .api import detect_format, harvest, harvest_to_bank, source_key
from .base import HarvestResult, LayerKernels
from .zoo import SourceInfo, get_source, list_sources, register_source

__all__ = [
    "harvest",
    "harvest_to_bank",
    "LayerKernels",
    "HarvestResult",
    "detect_format",
    "source_key",
    "SourceInfo",
    "register_source",
    "list_sources",
    "get_source",
]
