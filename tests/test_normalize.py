"""normalize: blocks of rows give the bits of one pass; a Normalized is indexed by rows."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from kernelatlas.normalize import Normalized, normalize

nmod = importlib.import_module("kernelatlas.normalize")  # the package exports the function


def _kernels(n: int, kh: int, kw: int) -> np.ndarray:
    k = np.random.default_rng(0).standard_normal((n, kh, kw)).astype(np.float32)
    k[3], k[4], k[5, 0, 0], k[6] = 0.0, 1.5, np.nan, k[6] * 1e-40  # degenerate rows
    return k


@pytest.mark.parametrize("shape", [(3, 3), (7, 7), (1, 5)])
def test_blocks_of_rows_give_the_bits_of_each_row_alone(monkeypatch, shape) -> None:
    k = _kernels(101, *shape)
    whole = normalize(k)  # one block
    monkeypatch.setattr(nmod, "BLOCK_BYTES", 8 * shape[0] * shape[1] * 7)  # 7 rows a block
    blocks = normalize(k)
    rows = [normalize(k[i : i + 1]) for i in range(len(k))]
    for name in ("unit", "norm", "degenerate"):
        one = np.concatenate([getattr(r, name) for r in rows])
        np.testing.assert_array_equal(getattr(blocks, name), one)
        np.testing.assert_array_equal(getattr(whole, name), one)
        assert getattr(blocks, name).dtype == getattr(whole, name).dtype
    assert whole.degenerate[3:7].all() and not whole.degenerate[7:].any()


def test_normalized_rows() -> None:
    nz = normalize(_kernels(20, 3, 3))
    assert len(nz) == 20 and len(nz[2:5]) == 3
    mask = ~nz.degenerate
    part = nz[mask]
    assert isinstance(part, Normalized) and len(part) == int(mask.sum())
    np.testing.assert_array_equal(part.unit, nz.unit[mask])
    np.testing.assert_array_equal(nz[np.array([7, 2])].norm, nz.norm[[7, 2]])
    with pytest.raises(TypeError, match="slice"):
        nz[0]
