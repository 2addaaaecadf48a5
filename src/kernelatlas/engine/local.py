"""The single-process engine: one thread per core, each partition on one thread.

``map_partitions`` runs :func:`~kernelatlas.partitions.run_partition` on a thread pool
with torch set to one intra-op thread (a partition is a few large numpy/torch/Arrow calls
that release the GIL, so whole partitions side by side scale better than splitting every
small op). The ``(partition, job)`` pairs are drawn in a producer thread, at most
``2 * threads`` ahead of the results taken back: when the pairs come from a harvest (the
pipeline's streaming mode), reading and writing the next source overlaps with classifying
the last one. Results come back in the order of the pairs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..threads import torch_thread_pool

if TYPE_CHECKING:
    from ..bank import KernelBank
    from ..partitions import Partition, PartitionJob, PartResult

__all__ = ["LocalEngine", "available_cores"]

_DONE = object()


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class LocalEngine:
    """One process, ``threads`` partitions at a time (default: one per available core)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = int(threads) if threads else available_cores()
        self.tasks = 0  # partitions run by the last map_partitions

    @property
    def slots(self) -> int:
        return self.threads

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wait_closed(self) -> None:
        """Nothing to wait for: the thread pool of each map is shut down when it ends."""

    def harvest(
        self, sources: Sequence[Any], bank: KernelBank, *, fold_bn: bool, progress: bool
    ) -> Iterator[tuple[str, str]]:
        from ..harvest.api import iter_harvest_to_bank

        yield from iter_harvest_to_bank(list(sources), bank, fold_bn=fold_bn, progress=progress)

    def map_partitions(
        self, tasks: Iterable[tuple[Partition, PartitionJob]]
    ) -> Iterator[PartResult]:
        import torch

        from ..partitions import run_partition

        self.tasks = 0
        window = threading.Semaphore(2 * self.threads)
        futures: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        pool = torch_thread_pool(self.threads)

        def produce() -> None:
            try:
                for part, job in tasks:
                    while not window.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    futures.put(pool.submit(run_partition, part, job))
            except BaseException as exc:  # handed to the consumer, raised there
                futures.put(_Failed(exc))
            else:
                futures.put(_DONE)

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        producer = threading.Thread(target=produce, name="kernelatlas-tasks", daemon=True)
        producer.start()
        try:
            while True:
                item = futures.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    raise item.exc
                assert isinstance(item, Future)
                result = item.result()
                window.release()
                self.tasks += 1
                yield result
        finally:
            stop.set()
            producer.join()  # it may be harvesting a source into the staging folder
            while not futures.empty():
                item = futures.get_nowait()
                if isinstance(item, Future):
                    item.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(torch_threads)
