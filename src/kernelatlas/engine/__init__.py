"""Analysis engines: where harvesting and the bank's partitions run.

Every engine implements :class:`Engine`: it harvests sources into a bank and maps
:func:`kernelatlas.partitions.run_partition` over ``(partition, job)`` pairs, giving the
results back in the order of the pairs. The pipeline never imports an engine's internals
(it calls :func:`make_engine`) and no engine imports the pipeline: the work itself lives
in :mod:`kernelatlas.partitions`.

- ``local`` (:class:`~kernelatlas.engine.local.LocalEngine`): one process, one thread
  per core, each partition on one thread with one torch thread; the pairs are drawn in a
  producer thread, so harvesting the next source overlaps with classifying the last.
- ``dask`` (:class:`~kernelatlas.engine.dask.DaskEngine`, ``pip install
  'kernelatlas[dask]'``, imported only when used): a ``dask.distributed`` cluster; workers
  harvest in parallel, write their own part files and send back only counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..bank import KernelBank
    from ..partitions import Partition, PartitionJob, PartResult

__all__ = ["Engine", "ENGINES", "make_engine", "run_dask", "harvest_dask", "dask_client"]

#: Engine names (``AnalysisConfig.engine``, ``--engine``).
ENGINES: tuple[str, ...] = ("local", "dask")


@runtime_checkable
class Engine(Protocol):
    """What an analysis engine does (a context manager: ``with make_engine(...) as e``).

    Attributes
    ----------
    name : ``"local"`` or ``"dask"``.
    slots : partitions it runs at once (threads, or worker threads of the cluster).
    """

    name: str

    @property
    def slots(self) -> int: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def harvest(
        self, sources: Sequence[Any], bank: KernelBank, *, fold_bn: bool, progress: bool
    ) -> Iterator[tuple[str, str]]:
        """Harvest ``sources`` into ``bank``; yield ``(source key, status)`` per source as
        soon as it is in the bank (``harvest.api.HARVEST_STATUSES``)."""
        ...

    def map_partitions(
        self, tasks: Iterable[tuple[Partition, PartitionJob]]
    ) -> Iterator[PartResult]:
        """``run_partition(part, job)`` for every pair, results in the order of ``tasks``;
        ``tasks`` is consumed lazily (it may harvest and calibrate as it goes)."""
        ...

    def wait_closed(self) -> None:
        """Wait until what ``__exit__`` released (e.g. a cluster shutting down in the
        background) is gone."""
        ...


def make_engine(
    name: str = "local",
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads: int | None = None,
) -> Engine:
    """The engine ``name``: ``local`` (``threads``, default one per core) or ``dask``
    (``scheduler`` address, or a LocalCluster of ``n_workers``)."""
    from ..errors import KernelAtlasError

    if name == "local":
        from .local import LocalEngine

        return LocalEngine(threads=threads)
    if name == "dask":
        return _dask().DaskEngine(scheduler=scheduler, n_workers=n_workers)
    raise KernelAtlasError(f"engine must be one of {ENGINES}, got {name!r}")


def _dask() -> Any:
    from ..errors import KernelAtlasError

    try:
        from . import dask as _dask_mod
    except ImportError as exc:
        raise KernelAtlasError(
            f"the dask engine needs {exc.name}: pip install 'kernelatlas[dask]'"
        ) from None
    return _dask_mod


def __getattr__(name: str) -> Any:
    if name in ("run_dask", "harvest_dask", "dask_client", "DaskEngine"):
        return getattr(_dask(), name)
    if name == "LocalEngine":
        from .local import LocalEngine

        return LocalEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
