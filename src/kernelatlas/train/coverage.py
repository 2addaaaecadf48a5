"""``CoverageTracker``: atlas coverage of every depthwise layer, recorded during training.

A plain hook: call ``tracker.step(step)`` from any training loop (every call is cheap; the
atlas only runs every ``every`` steps). One :class:`~kernelatlas.atlas.Atlas` is fitted per
kernel size on first use and reused, and all layers of one size are classified in one
batched call. ``tracker.history`` is a DataFrame with one row per (step, layer): the
emergence curves of the ICLR 2024 paper's families, as training goes.

A Lightning adapter is left out on purpose: Lightning only accepts subclasses of its own
``Callback``; a three-line subclass whose ``on_train_batch_end`` calls
``tracker.step(trainer.global_step)`` is all it takes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import KernelAtlasError
from ..taxonomy import FAMILIES, coverage
from .init import depthwise_convs

__all__ = ["CoverageTracker", "HISTORY_COLUMNS", "plot_coverage", "shared_atlas"]

HISTORY_COLUMNS: tuple[str, ...] = (
    "step",
    "layer",
    "layer_index",
    "kh",
    "kw",
    "n_kernels",
    "coverage",
    *(f"share_{f}" for f in FAMILIES),
)


@functools.lru_cache(maxsize=32)
def _cached_atlas(kh: int, kw: int, kwargs: tuple[tuple[str, Any], ...]):
    from ..atlas import Atlas

    return Atlas(kernel_size=(kh, kw), **dict(kwargs)).fit()


def shared_atlas(kh: int, kw: int, **atlas_kwargs: Any):
    """A fitted :class:`~kernelatlas.atlas.Atlas` for ``kh x kw``, shared within the process.

    Fitting calibrates the null once per size and keyword set; every tracker and benchmark
    run with the same arguments reuses it (the atlas is deterministic given its seed).
    """
    try:
        key = tuple(sorted(atlas_kwargs.items()))
        hash(key)
    except TypeError:  # unhashable arguments: no sharing
        from ..atlas import Atlas

        return Atlas(kernel_size=(kh, kw), **atlas_kwargs).fit()
    return _cached_atlas(int(kh), int(kw), key)


class CoverageTracker:
    """Record the atlas coverage of each depthwise layer of ``model`` every ``every`` steps.

    Parameters
    ----------
    model : the model being trained (its depthwise convolutions are found once, here).
    every : record when ``step % every == 0``.
    atlas_kwargs : keyword arguments of :class:`~kernelatlas.atlas.Atlas` (``null_fpr``,
        ``n_null``, ``seed``, ``device``...); ``kernel_size`` is set per layer.

    Attributes
    ----------
    layers : the tracked ``(name, conv)`` pairs.
    history : DataFrame with columns :data:`HISTORY_COLUMNS` (coverage = fraction of the
        layer's non-degenerate kernels the atlas classifies,
        :func:`kernelatlas.taxonomy.coverage`; ``share_<family>`` = fraction per family).

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(8, 8, 7, padding=3, groups=8))
    >>> tracker = CoverageTracker(net, every=10, atlas_kwargs={"n_null": 2000})
    >>> for step in range(20):
    ...     _ = tracker.step(step)  # after optimizer.step()
    >>> sorted(tracker.history["step"].unique().tolist())
    [0, 10]
    """

    def __init__(
        self, model: nn.Module, every: int = 100, atlas_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        if int(every) < 1:
            raise KernelAtlasError(f"every must be >= 1, got {every}")
        self.model = model
        self.every = int(every)
        self.atlas_kwargs = dict(atlas_kwargs or {})
        if "kernel_size" in self.atlas_kwargs:
            raise KernelAtlasError("atlas_kwargs must not set kernel_size: it is set per layer")
        self.layers = depthwise_convs(model)
        if not self.layers:
            raise KernelAtlasError("the model has no depthwise convolutions to track")
        self._atlases: dict[tuple[int, int], Any] = {}
        self._rows: list[dict[str, Any]] = []

    def _atlas(self, kh: int, kw: int):
        key = (kh, kw)
        if key not in self._atlases:
            self._atlases[key] = shared_atlas(kh, kw, **self.atlas_kwargs)
        return self._atlases[key]

    def step(self, step: int) -> bool:
        """Record if ``step`` is a multiple of ``every``; returns whether it recorded."""
        if int(step) % self.every:
            return False
        self.record(step)
        return True

    __call__ = step

    @torch.no_grad()
    def record(self, step: int) -> pd.DataFrame:
        """Classify every tracked layer now and append one row per layer; returns those rows."""
        by_size: dict[tuple[int, int], list[tuple[int, str, np.ndarray]]] = {}
        for i, (name, conv) in enumerate(self.layers):
            w = conv.weight.detach()  # the effective kernel, also under a parametrisation
            k = w.float().cpu().numpy().reshape(w.shape[0], w.shape[2], w.shape[3])
            by_size.setdefault((k.shape[1], k.shape[2]), []).append((i, name, k))
        rows = []
        for (kh, kw), group in by_size.items():
            pred = self._atlas(kh, kw).predict(np.concatenate([g[2] for g in group]))
            family = pred["family"].to_numpy()
            classified = pred["classified"].to_numpy(dtype=bool)
            bounds = np.cumsum([0] + [len(g[2]) for g in group])
            for (i, name, k), lo, hi in zip(group, bounds[:-1], bounds[1:], strict=True):
                fam = family[lo:hi]
                row: dict[str, Any] = {
                    "step": int(step),
                    "layer": name,
                    "layer_index": i,
                    "kh": kh,
                    "kw": kw,
                    "n_kernels": len(k),
                    "coverage": coverage(classified[lo:hi], fam),
                }
                row.update({f"share_{f}": float(np.mean(fam == f)) for f in FAMILIES})
                rows.append(row)
        rows.sort(key=lambda r: r["layer_index"])
        self._rows.extend(rows)
        return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))

    @property
    def history(self) -> pd.DataFrame:
        """All recorded rows, in recording order, with the columns of :data:`HISTORY_COLUMNS`."""
        df = pd.DataFrame(self._rows, columns=list(HISTORY_COLUMNS))
        return df.astype({"step": "int64", "layer_index": "int64", "kh": "int64", "kw": "int64"})


def plot_coverage(history: pd.DataFrame, ax, *, value: str = "coverage", cmap: str = "viridis"):
    """Plot ``value`` (coverage or a ``share_<family>`` column) per layer against the step.

    One line per layer, coloured by depth; the mean over layers (weighted by kernels) in
    black. Takes a matplotlib ``ax`` and returns it (never calls ``show``).
    """
    import matplotlib as mpl

    valid = {"coverage", *(f"share_{f}" for f in FAMILIES)}
    if value not in valid:
        raise KernelAtlasError(f"value must be one of {sorted(valid)}, got {value!r}")
    if history.empty:
        raise KernelAtlasError("the coverage history is empty: call tracker.step() while training")
    n = int(history["layer_index"].max()) + 1
    colors = mpl.colormaps[cmap](np.linspace(0, 0.9, max(n, 1)))
    for idx, g in history.groupby("layer_index", sort=True):
        g = g.sort_values("step")
        ax.plot(g["step"], g[value], color=colors[int(idx)], lw=1, alpha=0.8)
    w = history.assign(_w=history[value] * history["n_kernels"])
    mean = w.groupby("step")["_w"].sum() / w.groupby("step")["n_kernels"].sum()
    ax.plot(mean.index, mean.to_numpy(), color="black", lw=2, label="all layers")
    ax.set_xlabel("training step")
    label = value if value == "coverage" else value.removeprefix("share_") + " share"
    ax.set_ylabel(label)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    return ax
