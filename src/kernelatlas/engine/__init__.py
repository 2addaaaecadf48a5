"""Analysis engines beyond the single process (the local one is ``pipeline.run_local``).

The Dask engine lives in :mod:`kernelatlas.engine.dask`; it is imported only when used, so
``dask[distributed]`` stays an optional extra (``pip install 'kernelatlas[dask]'``).

- :func:`run_dask` maps ``pipeline.analyse_partition`` over the bank's partitions on a
  ``dask.distributed`` cluster and yields one table per partition, in partition order.
- :func:`harvest_dask` harvests sources in parallel on the workers into a
  :class:`~kernelatlas.bank.KernelBank`.
- :func:`dask_client` opens a client (on ``scheduler``, or on a new ``LocalCluster``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_dask", "harvest_dask", "dask_client"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ..errors import KernelAtlasError

        try:
            from . import dask as _dask
        except ImportError as exc:
            raise KernelAtlasError(
                f"the dask engine needs {exc.name}: pip install 'kernelatlas[dask]'"
            ) from None
        return getattr(_dask, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
