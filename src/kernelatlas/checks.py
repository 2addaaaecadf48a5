"""Up-front checks of run options (device, Dask scheduler, worker count): each refuses a
value that cannot work with one :class:`~kernelatlas.errors.KernelAtlasError` line before
any work starts or any heavy library (Dask) is imported."""

from __future__ import annotations

import os
import re

from .errors import KernelAtlasError

__all__ = ["check_device", "check_scheduler", "check_workers", "max_workers", "SCHEDULER_SCHEMES"]

#: A local Dask cluster gets at most this many worker processes per core.
_WORKERS_PER_CORE = 4
# Dask's comm schemes (distributed.comm.registry); "host:port" means tcp.
SCHEDULER_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def max_workers() -> int:
    """The most worker processes ``--workers`` may start here (4 per available core)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return _WORKERS_PER_CORE * max(1, cores)


def check_scheduler(address: str) -> None:
    """Refuse a Dask scheduler address that is not ``[scheme://]host[:port]`` with a known
    scheme (one line), before Dask is imported."""
    m = re.fullmatch(r"(?:(?P<scheme>[A-Za-z][\w+.-]*)://)?(?P<rest>[^\s/]+)/?", str(address))
    scheme = (m.group("scheme") or "tcp").lower() if m else None
    if (
        m is None
        or scheme not in SCHEDULER_SCHEMES
        or not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+)(:\d{1,5})?", m.group("rest"))
    ):
        raise KernelAtlasError(
            f"--scheduler {address!r} is not a Dask scheduler address: use "
            f"[{'|'.join(SCHEDULER_SCHEMES)}://]HOST[:PORT], e.g. tcp://10.0.0.5:8786"
        )


def check_workers(n: int) -> None:
    """Refuse a local Dask cluster size below 1 or above :func:`max_workers`."""
    if n < 1:
        raise KernelAtlasError(f"--workers must be >= 1, got {n}")
    if n > max_workers():
        raise KernelAtlasError(
            f"--workers {n} is more than this machine can run "
            f"(at most {max_workers()}: {_WORKERS_PER_CORE} per core)"
        )


def check_device(device: str) -> None:
    """Refuse a torch device that does not exist here (one line), before any work."""
    import torch

    from .autoencoder.model import resolve_device

    try:
        asked = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise KernelAtlasError(
            f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N"
        ) from None
    if asked.type == "cuda" and not torch.cuda.is_available():  # the CLI's words, not the API's
        raise KernelAtlasError(
            f"--device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu "
            "(device='cpu' from Python), or leave it out to use a GPU when there is one"
        )
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        if dev.index >= torch.cuda.device_count():
            raise KernelAtlasError(
                f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                "(cuda:0...); pick one of them or cpu"
            )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise KernelAtlasError(f"device {device!r}: kernelatlas runs on cpu or cuda")
