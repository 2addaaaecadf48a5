"""Display names of a run's sources, kept apart when model names collide.

Three files of one model (``ds.pt``, ``ds.safetensors``, ``ds.onnx``) all carry the model
name ``ds``; every table and figure of the report names a source by :func:`source_labels`
(the model name where it is unique, ``model (file or registry name)`` where it is not), and
groups by ``source``, never by ``model`` alone.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["source_labels", "size_label", "percent"]


def _tail(source: str) -> str:
    return os.path.basename(source.rstrip("/\\")) or source


def source_labels(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``source -> label`` for rows holding ``source`` and ``model`` (summary rows, frames).

    The label is the model name when no other source of the run has that name; otherwise
    ``model (tail)`` with the source's file name (or registry name), and the whole source
    where even those collide.
    """
    pairs = dict.fromkeys((str(r["source"]), str(r["model"])) for r in rows)
    model_of: dict[str, str] = {}
    for src, model in pairs:
        model_of.setdefault(src, model)
    per_model = Counter(model_of.values())
    tails = Counter(_tail(s) for s in model_of)
    out = {}
    for src, model in model_of.items():
        if per_model[model] == 1:
            out[src] = model
        elif tails[_tail(src)] == 1 and _tail(src) != model:
            out[src] = f"{model} ({_tail(src)})"
        else:
            out[src] = f"{model} ({src})"
    return out


def size_label(kh: int, kw: int) -> str:
    return f"{int(kh)}x{int(kw)}"


def percent(rate: float) -> str:
    """A rate as a percentage in plain digits, to 3 significant ones (``0.01`` -> ``1%``,
    ``1e-9`` -> ``0.0000001%``; ``:g`` wrote ``1e-07%``)."""
    import numpy as np

    return (
        np.format_float_positional(100 * float(rate), precision=3, fractional=False, trim="-") + "%"
    )
