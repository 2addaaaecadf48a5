"""k-means on unit kernels: the baseline the ICLR 2024 paper used for MobileNetV3."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import KernelAtlasError
from ..normalize import as_kernel_array, normalize
from .model import resolve_device

__all__ = ["KMeansResult", "kmeans_unit_kernels"]

_BATCH = 65_536


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans_unit_kernels`.

    Attributes
    ----------
    centers : float32 [k, kh, kw], the cluster means (not renormalised).
    labels : int64 [N], cluster of each kernel (-1 for degenerate kernels).
    cosine_distance : float32 [N], ``1 - cos`` to the kernel's centre (NaN if degenerate).
    inertia : float, sum of squared Euclidean distances of unit kernels to their centres.
    n_iter : int, Lloyd iterations run.
    """

    centers: np.ndarray
    labels: np.ndarray
    cosine_distance: np.ndarray
    inertia: float
    n_iter: int


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance for each row of ``x``, in batches."""
    c2 = (c * c).sum(1)
    labels, d2 = [], []
    for s in range(0, x.shape[0], _BATCH):
        xb = x[s : s + _BATCH]
        dist = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + c2[None]
        m, i = dist.min(1)
        labels.append(i)
        d2.append(m.clamp_min(0))
    return torch.cat(labels), torch.cat(d2)


def kmeans_unit_kernels(
    kernels: object,
    k: int = 8,
    *,
    n_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding on centred unit kernels.

    Parameters
    ----------
    kernels : [N, kh, kw], any scale (normalised here; degenerate kernels are left out).
    k : number of clusters.
    n_iter, tol : stop after ``n_iter`` iterations or when the inertia improves by less
        than ``tol`` relative.
    seed : seeds the k-means++ draws; the same seed gives the same clustering.
    device : ``None`` (CUDA if available), ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((500, 3, 3)).astype(np.float32)
    >>> kmeans_unit_kernels(x, k=4).centers.shape
    (4, 3, 3)
    """
    arr = as_kernel_array(kernels)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise KernelAtlasError(f"k must be a positive integer, got {k!r}")
    nz = normalize(arr)
    ok = ~nz.degenerate
    n = int(ok.sum())
    if n < k:
        raise KernelAtlasError(f"k-means with k={k} needs at least {k} usable kernels, got {n}")
    n_all, kh, kw = arr.shape
    dev = resolve_device(device)
    x = torch.from_numpy(nz.unit[ok].reshape(n, kh * kw)).to(dev, torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    # k-means++: each new centre drawn with probability proportional to D^2 (loop over k).
    first = int(torch.randint(n, (1,), generator=gen))
    centers = x[first : first + 1].clone()
    d2 = _assign(x, centers)[1]
    for _ in range(1, int(k)):
        p = d2.double().cpu()
        if float(p.sum()) <= 0:
            p = torch.ones(n, dtype=torch.float64)
        nxt = int(torch.multinomial(p / p.sum(), 1, generator=gen))
        centers = torch.cat([centers, x[nxt : nxt + 1]])
        d2 = torch.minimum(d2, _assign(x, x[nxt : nxt + 1])[1])
    prev = float("inf")
    n_done = 0
    for _ in range(int(n_iter)):
        n_done += 1
        labels, d2 = _assign(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=int(k)).to(x.dtype)
        empty = counts == 0
        new = sums / counts.clamp_min(1)[:, None]
        if bool(empty.any()):  # re-seed empty clusters at the farthest kernels
            far = torch.argsort(d2, descending=True)[: int(empty.sum())]
            new[empty] = x[far]
        centers = new
        inertia = float(d2.sum())
        if prev - inertia <= tol * max(prev, 1e-12):
            break
        prev = inertia
    labels, d2 = _assign(x, centers)
    cn = centers / centers.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (x * cn[labels]).sum(1)
    lab_all = np.full(n_all, -1, dtype=np.int64)
    lab_all[ok] = labels.cpu().numpy()
    dist_all = np.full(n_all, np.nan, dtype=np.float32)
    dist_all[ok] = (1.0 - cos).float().cpu().numpy()
    return KMeansResult(
        centers=centers.float().cpu().numpy().reshape(int(k), kh, kw),
        labels=lab_all,
        cosine_distance=dist_all,
        inertia=float(d2.sum()),
        n_iter=n_done,
    )
