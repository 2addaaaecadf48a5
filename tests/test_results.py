"""``kernelatlas.results``: only an analysis's kernels table is read as one."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import harvest_to_bank
from kernelatlas.results import kernel_weights, read_kernels


def test_a_bank_or_other_files_are_refused_in_one_line(tmp_path) -> None:
    """A bank folder was read as if it were the kernels table (its rows, its weights, no atlas
    names); any other folder or file raised pyarrow's ArrowInvalid."""
    np.save(tmp_path / "k.npy", np.random.default_rng(0).standard_normal((4, 3, 3)))
    harvest_to_bank([tmp_path / "k.npy"], tmp_path / "bank", progress=False)
    for call in (lambda p: read_kernels(p), lambda p: kernel_weights(p, [0])):
        with pytest.raises(KernelAtlasError, match="holds a kernel bank, not an analysis"):
            call(tmp_path / "bank")
        for other in (tmp_path, tmp_path / "k.npy"):
            with pytest.raises(KernelAtlasError, match="not an analysis's kernels table"):
                call(other)
