"""CoverageTracker: per-layer atlas coverage recorded from a plain training loop."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from kernelatlas.errors import KernelAtlasError
from kernelatlas.taxonomy import FAMILIES
from kernelatlas.train import CoverageTracker, init_depthwise_, plot_coverage
from kernelatlas.train.coverage import HISTORY_COLUMNS

ATLAS = {"n_null": 3000}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 24, 3, padding=1),
        nn.Conv2d(24, 24, 7, padding=3, groups=24),
        nn.GELU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 4),
    )


def test_records_every_n_steps_from_a_plain_loop():
    model = _net()
    tracker = CoverageTracker(model, every=3, atlas_kwargs=ATLAS)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 4
    recorded = []
    for step in range(7):
        recorded.append(tracker.step(step))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert recorded == [True, False, False, True, False, False, True]
    h = tracker.history
    assert list(h.columns) == list(HISTORY_COLUMNS)
    assert h["step"].tolist() == [0, 0, 3, 3, 6, 6]
    assert h["layer"].tolist()[:2] == ["1", "3"]
    assert h[["kh", "kw"]].drop_duplicates().values.tolist() == [[7, 7], [3, 3]]
    shares = h[[f"share_{f}" for f in FAMILIES]].sum(axis=1)
    assert np.allclose(shares, 1.0)
    # a freshly initialised network is mostly noise to the atlas
    assert (h["coverage"] < 0.3).all()


def test_coverage_follows_the_kernels():
    model = _net()
    tracker = CoverageTracker(model, every=1, atlas_kwargs=ATLAS)
    tracker.record(0)
    init_depthwise_(model, "dog", seed=0)
    tracker.record(1)
    init_depthwise_(model, "master_key", seed=0, freeze=True)  # a parametrised weight
    tracker.record(2)
    h = tracker.history.set_index(["step", "layer"])
    assert h.loc[(1, "1"), "coverage"] == 1.0
    assert h.loc[(1, "1"), "share_center"] == 0.5
    assert h.loc[(1, "1"), "share_first_derivative"] == 0.5
    # master keys 2, 3, 5, 6 are first derivatives; 1 and 4 are mostly one neighbouring tap
    assert h.loc[(2, "1"), "share_first_derivative"] == pytest.approx(0.5)
    assert h.loc[(2, "1"), "share_shift"] == pytest.approx(0.25)
    assert h.loc[(0, "1"), "coverage"] < h.loc[(1, "1"), "coverage"]


def test_plot_and_errors():
    model = _net()
    tracker = CoverageTracker(model, every=1, atlas_kwargs=ATLAS)
    with pytest.raises(KernelAtlasError, match="empty"):
        plot_coverage(tracker.history, plt.figure().gca())
    tracker.step(0)
    fig, ax = plt.subplots()
    assert plot_coverage(tracker.history, ax, value="share_center") is ax
    assert len(ax.lines) == 3  # two layers + the mean
    plt.close("all")
    with pytest.raises(KernelAtlasError, match="every"):
        CoverageTracker(model, every=0)
    with pytest.raises(KernelAtlasError, match="no depthwise"):
        CoverageTracker(nn.Linear(3, 3))
    with pytest.raises(KernelAtlasError, match="kernel_size"):
        CoverageTracker(model, atlas_kwargs={"kernel_size": 7})
