"""Worker threads that run torch on one intra-op thread each.

``torch.set_num_threads`` called in one thread does not reach threads started later: their
OpenMP default is every core, so each worker thread of a pool would run its matrix products
on all cores (oversubscribed: measured here, a product in such a thread took 2x its CPU
time) and, for a batch of a few rows, sum them in another order than one thread does, so
the same kernels could score differently in the last bit from call to call. Every pool
that runs torch work side by side is made here.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["one_torch_thread", "torch_thread_pool", "in_thread"]


def one_torch_thread(n: int = 1) -> None:
    """Run torch (and the BLAS under it) on ``n`` threads in the calling thread."""
    import torch

    torch.set_num_threads(int(n))


def torch_thread_pool(
    workers: int, name: str = "kernelatlas", *, torch_threads: int = 1
) -> ThreadPoolExecutor:
    """A thread pool whose threads each run torch on ``torch_threads`` threads (one: the
    pools that run torch side by side; more: a single thread that works for its caller)."""
    return ThreadPoolExecutor(
        max_workers=max(1, int(workers)), thread_name_prefix=name,
        initializer=one_torch_thread, initargs=(int(torch_threads),),
    )  # fmt: skip


def in_thread(
    fn: Callable[..., Any],
    *args: Any,
    name: str = "kernelatlas",
    torch_threads: int | None = None,
    **kwargs: Any,
) -> Future[Any]:
    """``fn(*args, **kwargs)`` in a thread of its own; its future (the thread ends with it).

    With ``torch_threads`` the thread runs torch on that many threads, so what it computes
    is what its caller, on that many, would (a thread started later gets OpenMP's default,
    every core); None leaves torch alone (e.g. a thread that imports it).
    """
    pool = (
        ThreadPoolExecutor(1, thread_name_prefix=name)
        if torch_threads is None
        else torch_thread_pool(1, name, torch_threads=torch_threads)
    )
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future
