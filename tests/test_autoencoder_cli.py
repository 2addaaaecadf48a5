"""``kernelatlas autoencoder train``: one autoencoder per kernel size of a real bank."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.autoencoder import KernelAutoencoder
from kernelatlas.cli import main
from kernelatlas.harvest import harvest_to_bank

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    d = tmp_path_factory.mktemp("aecli")
    rng = np.random.default_rng(0)
    np.save(d / "k7.npy", rng.standard_normal((300, 7, 7)).astype(np.float32))
    np.save(d / "k3.npy", rng.standard_normal((200, 3, 3)).astype(np.float32))
    harvest_to_bank([d / "k7.npy", d / "k3.npy"], d / "bank", progress=False)
    return d


ARGS = ["--epochs", "2", "--batch-size", "64", "--hidden", "16", "--device", "cpu", "--quiet"]


def test_train_one_per_size_and_reload(bank, capsys):
    out = bank / "models"
    assert main(["autoencoder", "train", str(bank / "bank"), "--out", str(out), *ARGS]) == 0
    table = capsys.readouterr().out
    assert "7x7" in table and "3x3" in table and "(paper)" in table and "(null)" in table
    ae7 = KernelAutoencoder.load(out / "ae_7x7", device="cpu")
    ae3 = KernelAutoencoder.load(out / "ae_3x3", device="cpu")
    assert ae7.threshold_rule_ == "paper" and ae3.threshold_rule_ == "null"
    assert ae7.n_train_ == 300 and ae3.n_train_ == 200
    assert ae7.segments_ is not None and len(ae7.segments_) >= 1


def test_train_one_size_from_npy(bank, tmp_path):
    out = tmp_path / "m"
    rc = main(["autoencoder", "train", str(bank / "k3.npy"), "--out", str(out), *ARGS])
    assert rc == 0 and (out / "ae_3x3" / "model.safetensors").is_file()
    rc = main(
        ["autoencoder", "train", str(bank / "bank"), "--kernel-size", "7", "--out", str(out)] + ARGS
    )
    assert rc == 0 and (out / "ae_7x7" / "config.json").is_file()


def test_bad_bank_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["autoencoder", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "kernel bank" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["autoencoder", "train", str(empty), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no kernels" in capsys.readouterr().err


def test_progress_off_a_terminal_is_plain_lines(bank, tmp_path, capsys):
    """Off a terminal (a log, CI) training progress is plain lines, never tqdm's carriage
    returns (it drew a tqdm bar into logs)."""
    args = [a for a in ARGS if a != "--quiet"]
    rc = main(["autoencoder", "train", str(bank / "k3.npy"), "--out", str(tmp_path / "m"), *args])
    err = capsys.readouterr().err
    assert rc == 0 and "\r" not in err
    assert "kernelatlas: autoencoder 3x3" in err and ": done (" in err


def test_a_flat_npy_is_refused_not_read_as_one_kernel(tmp_path, capsys):
    """A 2-D ``.npy`` [N, k*k] is not one N x k*k kernel (it was, then skipped as '1 kernels')."""
    np.save(tmp_path / "flat.npy", np.zeros((200, 25), np.float32))
    rc = main(["autoencoder", "train", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "reshape it" in err and "[200, 25]" in err
    assert not (tmp_path / "o").exists()


def test_too_few_steps_is_one_warning(bank, tmp_path, capsys, monkeypatch):
    """The defaults (20 epochs at batch 4096) give 20 steps on 300 kernels: said, in one line."""
    from kernelatlas.cli import autoencoder_cmd

    rc = main(["autoencoder", "train", str(bank / "k3.npy"), "--out", str(tmp_path / "m"),
               "--epochs", "1", "--hidden", "4", "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0 and err.count("kernelatlas: warning:") == 1 and "only 1 optimiser steps" in err
    monkeypatch.setattr(autoencoder_cmd, "FEW_STEPS", 13)
    rc = main(["autoencoder", "train", str(bank / "k3.npy"), "--out", str(tmp_path / "n"),
               "--epochs", "1", "--batch-size", "16", "--hidden", "4", "--device", "cpu",
               "--quiet"])  # fmt: skip
    assert rc == 0 and "warning" not in capsys.readouterr().err  # 200 / 16 -> 13 steps


def test_a_npy_bank_is_read_as_safely_as_harvest_reads_it(tmp_path, capsys):
    """``autoencoder train X.npy`` used ``np.load``: a FIFO hung it, a header declaring
    10^9 kernels was allocated; now the harvester's checks come first, in one line."""
    import os

    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 5, 5)}
        )
        f.write(b"\0" * 100)
    for path, words in ((fifo, "FIFO"), (huge, "over the")):
        rc = main(["autoencoder", "train", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and words in err
