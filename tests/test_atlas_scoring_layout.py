"""The scorers on the column-major product: the same answers, bit for bit, as on rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelatlas.atlas import family as fam_mod
from kernelatlas.atlas import scoring
from kernelatlas.atlas.family import Basis, FamilyScore, PatternFamily, row_argmax, take_rows
from kernelatlas.atlas.registry import get_family
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


class _ViewBasis(Basis):
    """A plugin's scorer that returns views of its block (legal: the block is its input)."""

    def __init__(self, kh: int, kw: int) -> None:
        col = torch.zeros((kh * kw, 2), dtype=torch.float64)
        col[0, 0], col[1, 0], col[0, 1], col[2, 1] = 1.0, -1.0, 1.0, -1.0
        self.columns = col

    def score(self, y: torch.Tensor) -> FamilyScore:
        yv = y.numpy()
        n = yv.shape[0]
        return FamilyScore(score=yv[:, 0], orientation=np.full(n, np.nan),
                           polarity=np.ones(n, np.int8), scale=np.full(n, np.nan),
                           offset=np.zeros((n, 2)), shape=np.zeros(n, np.int16),
                           extra={"second": yv[:, 1]})  # fmt: skip


class _ViewFamily(PatternFamily):
    name = "view_test"
    description = formula = "test"

    def basis(self, kh: int, kw: int) -> Basis:
        return _ViewBasis(kh, kw)


def _unit(n: int, kh: int, kw: int, seed: int) -> torch.Tensor:
    k = np.random.default_rng(seed).standard_normal((n, kh, kw)).astype(np.float32)
    return torch.from_numpy(normalize(k).unit.reshape(n, kh * kw))


def test_product_buffer_is_reused_and_no_score_points_into_it():
    """Each thread's product buffer is reused batch after batch; what a scorer returned for
    one batch (views of its block included) is not changed by the next."""
    w = build_bank(5, 5).weights
    x1, x2 = _unit(300, 5, 5, 4), _unit(300, 5, 5, 5)
    a = product_columns(x1, w, reuse=True)
    assert product_columns(x2, w, reuse=True).data_ptr() == a.data_ptr()  # the same buffer
    assert product_columns(x1, w).data_ptr() != a.data_ptr()  # without reuse: its own

    bank = build_bank(5, 5, families=(get_family("center"), _ViewFamily()))
    first = score_unit_kernels(bank, x1)
    want = {n: {k: getattr(v, k).tobytes() for k in ("score", "orientation", "scale")}
            for n, v in first.items()}  # fmt: skip
    score_unit_kernels(bank, x2)  # overwrites the buffer
    rows = x1 @ bank.weights
    view = first["view_test"]
    assert view.score.tobytes() == rows[:, bank.slices[1].start].numpy().tobytes()
    assert view.extra["second"].tobytes() == rows[:, bank.slices[1].start + 1].numpy().tobytes()
    for n, v in first.items():
        assert {k: getattr(v, k).tobytes() for k in want[n]} == want[n], n


def test_products_above_the_kept_size_are_not_kept(monkeypatch):
    w = build_bank(3, 3).weights
    x = _unit(100, 3, 3, 6)
    monkeypatch.setattr(scoring, "_local", type(scoring._local)())  # this test's own buffer
    monkeypatch.setattr(scoring, "SCRATCH_MAX_FLOATS", w.shape[1] * 50)
    small = product_columns(x[:30], w, reuse=True)
    assert product_columns(x[:20], w, reuse=True).data_ptr() == small.data_ptr()
    big = product_columns(x, w, reuse=True)  # above the limit: allocated for itself
    assert product_columns(x[:20], w, reuse=True).data_ptr() == small.data_ptr()
    assert torch.equal(big, (x @ w)) and big.data_ptr() != small.data_ptr()


def test_threads_score_into_their_own_buffers():
    """Batches scored side by side on threads (as Atlas.predict does) give the serial
    answers bit for bit: each thread writes its products into its own buffer."""
    from kernelatlas.threads import torch_thread_pool

    bank = build_bank(7, 7)
    batches = [_unit(1024, 7, 7, 10 + i) for i in range(12)]

    def flat(x):
        return {n: s.score.tobytes() + s.orientation.tobytes() for n, s in
                score_unit_kernels(bank, x).items()}  # fmt: skip

    want = [flat(x) for x in batches]
    with torch_thread_pool(3) as pool:
        assert list(pool.map(flat, batches)) == want
