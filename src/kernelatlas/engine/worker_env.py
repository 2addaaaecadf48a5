"""Imported first by a LocalCluster's fork server, before numpy and torch: the variables
Dask's nanny sets before it starts a worker (``distributed.nanny.pre-spawn-environ``:
OpenMP, MKL and OpenBLAS on one thread), without ``MALLOC_TRIM_THRESHOLD_`` (see
:func:`kernelatlas.engine.dask._worker_environ`). The fork server starts before any nanny
(beside the driver's own start), so it does not take them from the driver's environment;
its workers, forked from it, inherit them and the libraries it imported.
"""

from __future__ import annotations

import os
import signal

import dask.config

for _name, _value in (dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}).items():
    if _name != "MALLOC_TRIM_THRESHOLD_" and _value is not None:
        os.environ[_name] = str(_value)

# A worker never takes Ctrl-C itself: a terminal's ^C reaches the whole process group, and
# each worker printed a KeyboardInterrupt traceback. The driver's KeyboardInterrupt closes
# the cluster, which stops its workers. (The fork server restores this disposition, the
# one at its preload, in every worker it forks.)
signal.signal(signal.SIGINT, signal.SIG_IGN)
