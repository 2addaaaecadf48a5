"""The folder-writing training commands (``bench-train``, ``bench-init``, ``autoencoder
train``) follow the rules of every ``--out``: absent, empty or their own output (marker);
anything else refused in one line naming ``--force`` before any training, with every file
around byte-for-byte as before; never a dataset's folder; ``--force`` writes beside a
user's files, never over them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kernelatlas.atomic import MARKER, read_marker
from kernelatlas.outputs import mark_dir
from kernelatlas.train.data import FASHION_MNIST_DIR

from .cli import run_cli
from .test_outputs import kernels, snapshot

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make system installs it)",
)
#: The smallest bench configuration (one default run of two steps).
TINY = [
    "--smoke",
    "--arch",
    "convnext",
    "--schemes",
    "default",
    "--seeds",
    "1",
    "--steps",
    "2",
    "--regime",
    "1k",
    "--n-test",
    "50",
    "--no-coverage",
]


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Import the training stack and read Fashion-MNIST once here: the forked children
    inherit both (each would take seconds on its own)."""
    import matplotlib.pyplot  # noqa: F401

    import kernelatlas.cli.train_cmd  # noqa: F401
    import kernelatlas.train.report  # noqa: F401
    from kernelatlas.train.bench import _applicable
    from kernelatlas.train.config import preset
    from kernelatlas.train.data import load_dataset

    _applicable(preset("smoke"), "convnext")
    if FASHION_MNIST_DIR.is_dir():
        load_dataset("fashion_mnist", n_train=1000, n_test=50)


def _user_folder(root: Path) -> Path:
    """A folder of a user's own files."""
    user = root / "mine2"
    (user / "photos").mkdir(parents=True)
    (user / "thesis.tex").write_text("\\documentclass{article}")
    (user / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return user


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A user's folder, a data folder, a bench-init output and a model, shared by refusals."""
    root = tmp_path_factory.mktemp("train-refusals")
    _user_folder(root)
    (root / "data").mkdir()
    (root / "data" / "train-images-idx3-ubyte.gz").write_bytes(b"mine")
    init = mark_dir(root / "init", "bench-init")
    (init / "bench-init.json").write_text("{}")
    np.save(root / "m.npy", kernels(0))
    return root


# (name, command, --out, part of the message)
REFUSALS = [
    ("bench-train, user folder", ["bench-train", *TINY], "mine2", "pass --force"),
    ("bench-init, user folder", ["bench-init", "--smoke"], "mine2", "pass --force"),
    ("bench-train, bench-init output", ["bench-train"], "init", "kernelatlas bench-init folder"),
    ("bench-train, a file", ["bench-train"], "mine2/thesis.tex", "not a folder"),
    ("bench-train, the data folder", ["bench-train", "--data-dir", "data"], "data", "the input"),
    (
        "bench-train, inside the data folder",
        ["bench-train", "--data-dir", "data", "--force"],
        "data/out",
        "inside the input folder",
    ),
    ("autoencoder, user folder", ["autoencoder", "train", "m.npy"], "mine2", "pass --force"),
]


@pytest.mark.parametrize("name,cmd,out,says", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_train_commands_refuse_outs_that_are_not_their_own(tree, name, cmd, out, says) -> None:
    before = snapshot(tree)
    run = run_cli([*cmd, "--out", out], cwd=tree)
    assert run.code == 2 and says in run.one_line_error(), run.lines
    assert run.stdout == ""  # refused before any training started
    assert snapshot(tree) == before  # nothing written, moved or deleted


@needs_fashion
def test_bench_train_marks_its_folder_reruns_in_it_and_forces_beside(tmp_path: Path) -> None:
    run = run_cli(["bench-train", *TINY, "--out", "bench/"], cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "results: bench/bench-train.json," in run.stdout and "//" not in run.stdout
    bench = tmp_path / "bench"
    assert read_marker(bench)["kind"] == "bench-train"
    assert {p.name for p in bench.iterdir()} == {
        MARKER,
        "bench-train.json",
        "bench-train.md",
        "bench-train.png",
    }
    # its own output: a rerun needs --resume (nothing is lost), and then works
    assert "pass --resume" in run_cli(["bench-train", *TINY, "--out", bench]).one_line_error()
    assert run_cli(["bench-train", *TINY, "--resume", "--quiet", "--out", bench]).code == 0
    # an output of an earlier kernelatlas (no marker) is recognised by its files and marked
    legacy = tmp_path / "legacy"
    shutil.copytree(bench, legacy)
    (legacy / MARKER).unlink()
    run = run_cli(["bench-train", *TINY, "--resume", "--quiet", "--out", legacy])
    assert run.code == 0, run.stderr
    assert read_marker(legacy)["kind"] == "bench-train"
    # --force: written beside the user's files, which stay as they were; no marker
    user = _user_folder(tmp_path / "u")
    before = snapshot(user)
    run = run_cli(["bench-train", *TINY, "--force", "--quiet", "--out", user])
    assert run.code == 0, run.stderr
    after = snapshot(user)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {
        "bench-train.json",
        "bench-train.md",
        "bench-train.png",
    }
    assert read_marker(user) is None  # still the user's folder: the next run needs --force
    assert "pass --force" in run_cli(["bench-train", *TINY, "--out", user]).one_line_error()


def test_force_never_writes_over_a_users_files(tmp_path: Path) -> None:
    user = _user_folder(tmp_path)
    (user / "bench-train.png").write_bytes(b"my own figure")
    before = snapshot(tmp_path)
    run = run_cli(["bench-train", *TINY, "--force", "--out", user])
    assert "kernelatlas did not write it" in run.one_line_error()
    (user / "bench-train.png").unlink()
    (user / "bench-train.json").write_text('{"runs": []}')
    del before["mine2/bench-train.png"]
    before["mine2/bench-train.json"] = snapshot(tmp_path)["mine2/bench-train.json"]
    run = run_cli(["bench-train", *TINY, "--force", "--out", user])
    assert "not a kernelatlas.bench-train/1 document" in run.one_line_error()
    assert snapshot(tmp_path) == before
    # autoencoder train: a user's own ae_3x3/ in an autoencoders folder is never overwritten
    np.save(tmp_path / "m.npy", kernels(1))
    aes = mark_dir(tmp_path / "aes", "autoencoders")
    (aes / "ae_3x3").mkdir()
    (aes / "ae_3x3" / "config.json").write_text('{"mine": true}')
    before = snapshot(tmp_path)
    run = run_cli(["autoencoder", "train", tmp_path / "m.npy", "--min-kernels", "1", "--out", aes])
    assert "holds ae_3x3, which kernelatlas did not write" in run.one_line_error()
    assert snapshot(tmp_path) == before
