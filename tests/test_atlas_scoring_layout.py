"""The scorers on the column-major product: the same answers, bit for bit, as on rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelatlas.atlas import family as fam_mod
from kernelatlas.atlas.family import row_argmax, take_rows
from kernelatlas.atlas.scoring import product_columns, score_unit_kernels
from kernelatlas.atlas.templates import build_bank
from kernelatlas.normalize import normalize


def _column_major(a: np.ndarray, pad: int = 5) -> np.ndarray:
    """``a`` [B, C] as an F-ordered view whose columns are ``pad`` floats apart."""
    buf = np.full((a.shape[1], a.shape[0] + pad), np.nan, dtype=a.dtype)
    buf[:, : a.shape[0]] = a.T
    return buf[:, : a.shape[0]].T


@pytest.mark.parametrize("c", [1, 2, 7, 72, 199, 200, 203, 216, 450])
def test_row_argmax_is_numpys_first_maximum(c):
    rng = np.random.default_rng(c)
    a = np.abs(rng.standard_normal((300, c))).astype(np.float32)
    a[:20] = 0.0  # zero kernels: every candidate ties
    a[20:40] = np.round(a[20:40] * 2) / 2  # many ties
    a[40:60, -1] = a[40:60].max(axis=1) + 1  # the last candidate wins
    a[60:80, c // 2 :] = a[60:80].max(axis=1, keepdims=True)  # ties across blocks
    cm = _column_major(a)
    assert cm.strides[0] == a.itemsize
    np.testing.assert_array_equal(row_argmax(cm), a.argmax(axis=1))
    np.testing.assert_array_equal(row_argmax(a), a.argmax(axis=1))
    a[80, min(3, c - 1)] = np.nan  # numpy's argmax: the first NaN
    np.testing.assert_array_equal(row_argmax(_column_major(a)), a.argmax(axis=1))


def test_row_argmax_blocked_and_direct_agree(monkeypatch):
    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_normal((500, 90))).astype(np.float32)
    a[::7] = 0.0
    a[1::7, 40:] = 2.0
    want = a.argmax(axis=1)
    for start in (10, 10_000):  # blocked from 10 candidates / never
        monkeypatch.setattr(fam_mod, "ARGMAX_BLOCKED_FROM", start)
        np.testing.assert_array_equal(row_argmax(_column_major(a)), want)


def test_take_rows_on_both_layouts():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 13)).astype(np.float32)
    idx = rng.integers(0, 13, 50)
    want = a[np.arange(50), idx]
    for view in (a, _column_major(a), np.ascontiguousarray(a[:, 2:9]), a[:, 2:9]):
        i = np.minimum(idx, view.shape[1] - 1)
        np.testing.assert_array_equal(take_rows(view, i), view[np.arange(50), i])
    np.testing.assert_array_equal(take_rows(_column_major(a), idx), want)


@pytest.mark.parametrize("size", [(7, 7), (3, 3), (4, 6), (1, 7)])
def test_scores_bitwise_equal_on_rows_and_columns(size):
    """Every family's FamilyScore from a block of the row-major product ``x @ W`` equals
    the one from the column-major product the Atlas uses, bit for bit (the product values
    too), with zero, delta and symmetric kernels (ties) in the batch."""
    kh, kw = size
    rng = np.random.default_rng(3)
    k = rng.standard_normal((700, kh, kw)).astype(np.float32)
    k[:30] = 0.0
    k[30:60] = 0.0
    k[30:60, kh // 2, kw // 2] = 1.0
    k[60:90] = k[60:90] + k[60:90, ::-1, ::-1]
    x = torch.from_numpy(normalize(k).unit.reshape(len(k), kh * kw))
    bank = build_bank(kh, kw)
    rows = x @ bank.weights
    cols = product_columns(x, bank.weights)
    assert cols.stride(0) == 1
    assert torch.equal(rows, cols)
    got = score_unit_kernels(bank, x)
    for fam, basis, sl in zip(bank.families, bank.bases, bank.slices, strict=True):
        ref, new = basis.score(rows[:, sl]), got[fam.name]
        for name in ("score", "orientation", "polarity", "scale", "offset", "shape"):
            a, b = getattr(ref, name), getattr(new, name)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (fam.name, name)
        for name, v in ref.extra.items():
            assert v.tobytes() == new.extra[name].tobytes(), (fam.name, name)
