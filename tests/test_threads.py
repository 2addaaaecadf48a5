"""Worker threads run torch on one thread: the same scores, bit for bit, whichever thread."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kernelatlas.atlas import Atlas
from kernelatlas.atlas.evaluation import synthetic_kernels
from kernelatlas.threads import torch_thread_pool

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="one core: every thread runs torch on one thread"
)


def _one_thread(fn):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)


def test_a_pool_thread_multiplies_as_one_thread_does() -> None:
    """A few rows (where the BLAS splits the sum over threads) give one thread's bits in a
    pool thread, although threads started after ``torch.set_num_threads(1)`` default to
    every core."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((7, 49), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((49, 624), dtype=np.float32))
    want = _one_thread(lambda: x @ w)
    with torch_thread_pool(2) as pool:
        got = list(pool.map(lambda _: x @ w, range(4)))
    assert all(torch.equal(g, want) for g in got)


def test_predict_in_batches_on_threads_is_predict_on_one_thread() -> None:
    """Atlas.predict's batches side by side on worker threads score as on one thread,
    every time (they differed in the last bit from call to call)."""
    k, _ = synthetic_kernels(7, 7, 40, noise=0.3, seed=2)
    atlas = Atlas(kernel_size=7).fit().set_params(batch_size=7)
    want = _one_thread(lambda: atlas.predict(k.astype(np.float32), details=True))
    for _ in range(5):
        got = atlas.predict(k.astype(np.float32), details=True)
        assert got.equals(want)


def test_the_baselines_thread_multiplies_as_its_caller() -> None:
    """The analysis measures its baselines in a thread of its own (beside the page): it runs
    torch on the caller's number of threads, not OpenMP's default, so a product of a few
    rows has the caller's bits (the baselines are what the caller would have computed)."""
    from kernelatlas.threads import in_thread

    def background(fn):
        return in_thread(fn, name="test", torch_threads=torch.get_num_threads())

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((7, 49), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((49, 624), dtype=np.float32))
    want = _one_thread(lambda: x @ w)
    got = [_one_thread(lambda: background(lambda: x @ w).result()) for _ in range(4)]
    assert all(torch.equal(g, want) for g in got)
