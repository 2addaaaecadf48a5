"""Outputs never destroy: kernelatlas writes only where it may, never over a user's files or
its inputs, one run per output at a time, and never answers from stale data.

Every case runs the command line in a child process (``cli.run_cli``) and checks the exit
code, the one stderr line and that every file around is byte-for-byte as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelatlas.atomic import MARKER, lock_path, read_marker, staging_path
from kernelatlas.bank import KernelBank
from kernelatlas.errors import KernelAtlasError
from kernelatlas.outputs import check_out, mark_dir, output_lock, replacing
from kernelatlas.results import kernel_weights

from .cli import run_cli

#: A file name that matplotlib's math-text parser cannot parse (it raised ValueError).
MATH_NAME = "net_$a_$.npy"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (symlinks as their target, files as their sha256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def kernels(seed: int, n: int = 48, k: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k, k)).astype(np.float32)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> dict[str, Path]:
    """One real ``analyze`` run through a symlinked --out, beside a user's look-alike
    siblings, on a model whose file name is not valid math text."""
    work = tmp_path_factory.mktemp("outputs")
    models = work / "models"
    models.mkdir()
    model = models / MATH_NAME
    np.save(model, kernels(0))
    (work / "real").mkdir()
    (work / "report").symlink_to(work / "real")
    for name in (".real.old", ".real.staging", ".report.old"):  # a user's own folders
        (work / name).mkdir()
        (work / name / "keep.txt").write_text("mine")
    before = snapshot(work)
    run = run_cli(["analyze", model, "--out", work / "report", "--no-fit", "--quiet"], cwd=work)
    return {"work": work, "model": model, "before": before, "after": snapshot(work), "run": run}


def test_symlinked_out_is_resolved_and_user_siblings_survive(analysis) -> None:
    work, run = analysis["work"], analysis["run"]
    assert run.code == 0 and run.stderr == "", run.stderr
    assert os.readlink(work / "report") == str(work / "real")  # the link is kept
    real = work / "real"
    assert read_marker(real)["kind"] == "analysis"
    assert read_marker(real / "bank")["kind"] == "bank"
    assert read_marker(real / "figures")["kind"] == "figures"
    assert (real / "figures" / "coverage.png").stat().st_size > 1000  # the name was drawn
    after = analysis["after"]
    for rel, digest in analysis["before"].items():
        if not rel.startswith("real"):
            assert after[rel] == digest, rel
    # nothing else beside it: no staging, old or lock sibling of kernelatlas's own
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["models", "real", "report", ".real.old", ".real.staging", ".report.old"]
    )


def test_changed_model_is_harvested_again_and_said(analysis) -> None:
    work, model = analysis["work"], analysis["model"]
    new = kernels(1)  # retrained weights, same shape and file size
    np.save(model, new)
    run = run_cli(["analyze", model, "--out", work / "report", "--no-fit"], cwd=work)
    assert run.code == 0, run.stderr
    assert "changed since it was harvested" in run.stderr and "harvested again" in run.stderr
    table = pq.read_table(
        work / "real" / "kernels.parquet", columns=["kh", "kw", "bank_file", "bank_row"]
    )
    got = kernel_weights(work / "real", table)
    np.testing.assert_array_equal(got, new)  # the report describes the new weights
    doc = json.loads((work / "real" / "summary.json").read_text())
    assert doc["config"]["sources"] == [str(model)]


def test_harvest_reuses_unchanged_and_rereads_changed_files(tmp_path: Path) -> None:
    model = tmp_path / "m.npy"
    np.save(model, kernels(2))
    first = run_cli(["harvest", model, "--out", tmp_path / "bank", "--quiet"])
    assert first.code == 0 and "harvested" in first.stdout, first.stderr
    again = run_cli(["harvest", model, "--out", tmp_path / "bank", "--quiet"])
    assert again.code == 0 and "unchanged since it was harvested" in again.stderr
    os.utime(model, ns=(0, 0))  # same content, other mtime: still reused
    assert "unchanged" in run_cli(["harvest", model, "--out", tmp_path / "bank"]).stderr
    np.save(model, kernels(3))
    changed = run_cli(["harvest", model, "--out", tmp_path / "bank", "--quiet"])
    assert changed.code == 0 and "changed since it was harvested" in changed.stderr
    np.testing.assert_array_equal(KernelBank(tmp_path / "bank").kernels(3, 3), kernels(3))
    fp = KernelBank(tmp_path / "bank").fingerprint(str(model.resolve()))
    assert fp["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert fp["size"] == model.stat().st_size and "mtime_ns" in fp


def test_kernels_read_by_other_reader_code_are_read_again(tmp_path: Path, monkeypatch) -> None:
    """A bank (or an analysis's bank/) harvested by another kernelatlas's readers (a release
    before a reader fix, a development install) is not reused as if unchanged: the same
    file is harvested again; a bank given as input says its kernels may be stale."""
    import warnings

    from kernelatlas import __version__
    from kernelatlas.harvest import api

    model = tmp_path / "m.npy"
    np.save(model, kernels(2))
    real = api.reader_id()
    assert real.startswith(f"{__version__}+") and len(real.split("+")[1]) == 16
    monkeypatch.setattr(api, "reader_id", lambda: "0.1.0+0123456789abcdef")
    assert api.harvest_to_bank([str(model)], tmp_path / "bank")["status"].tolist() == ["harvested"]
    assert api.harvest_to_bank([str(model)], tmp_path / "bank")["status"].tolist() == ["reused"]
    monkeypatch.setattr(api, "reader_id", lambda: real)  # this version's readers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.link_bank(tmp_path / "bank", KernelBank(tmp_path / "linked"))
    said = [str(w.message) for w in caught]
    assert any("kernelatlas 0.1.0's readers read them, not this version's" in m for m in said), said
    assert api.harvest_to_bank([str(model)], tmp_path / "bank")["status"].tolist() == ["changed"]
    assert KernelBank(tmp_path / "bank").fingerprint(str(model.resolve()))["reader"] == real
    assert api.harvest_to_bank([str(model)], tmp_path / "bank")["status"].tolist() == ["reused"]


def _case_dirs(tmp_path: Path) -> dict[str, Path]:
    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "m.npy", kernels(4))
    user = tmp_path / "user"
    (user / "photos").mkdir(parents=True)
    (user / "thesis.tex").write_text("\\documentclass{article}")
    (user / "photos" / "cat.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "into_models").symlink_to(models)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    bank = KernelBank(tmp_path / "bank")
    from kernelatlas.harvest import harvest

    bank.add(harvest(models / "m.npy"))
    shutil.copytree(tmp_path / "bank", tmp_path / "otherbank")
    (tmp_path / "empty").mkdir()
    return {"models": models, "user": user, "bank": tmp_path / "bank"}


# (name, --out relative to the work folder, part of the message)
REFUSALS = [
    ("user folder", "user", "not a kernelatlas output"),
    ("input's folder", "models", "holds the input"),
    ("folder above an input", ".", "holds the input"),
    ("regular file", "notes.txt", "not a folder"),
    ("dangling symlink", "dangling", "dangling symlink"),
    ("symlink loop", "loop", "symlink loop"),
    ("symlink into the input's folder", "into_models", "holds the input"),
    ("inside an input bank", "bank/report", "inside the input folder"),
    ("an input bank", "bank", "is the input"),
    ("a bank is not an analysis", "otherbank", "is a kernelatlas bank folder"),
    ("current folder", "empty", "current folder"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The folders of :func:`_case_dirs`, shared by the refusals (which write nothing)."""
    root = tmp_path_factory.mktemp("refusals")
    _case_dirs(root)
    return root


@pytest.mark.parametrize("name,out,says", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_analyze_refuses_outs_that_are_not_its_own(tree: Path, name, out, says) -> None:
    cwd = tree / "empty" if name == "current folder" else tree
    out_arg = "." if name == "current folder" else out
    before = snapshot(tree)
    run = run_cli(["analyze", tree / "models" / "m.npy", tree / "bank", "--out", out_arg], cwd=cwd)
    assert says in run.one_line_error(), run.lines
    assert snapshot(tree) == before  # nothing written, moved or deleted
    assert run.grown_mb < 128, run.grown_mb


def test_force_writes_there_and_keeps_the_users_folder_aside(tmp_path: Path) -> None:
    dirs = _case_dirs(tmp_path)
    user = dirs["user"]
    before = snapshot(user)
    with pytest.raises(KernelAtlasError, match="--force to write there and keep it as"):
        with replacing(user, kind="analysis"):
            pass
    assert snapshot(user) == before and not staging_path(user).exists()
    with pytest.raises(KernelAtlasError, match="holds the input"):  # not even with force
        with replacing(dirs["models"], kind="analysis", inputs=[dirs["models"] / "m.npy"],
                       force=True):  # fmt: skip
            pass
    for top in ("/usr", "/tmp", str(Path.home())):  # never, whatever --force says
        with pytest.raises(KernelAtlasError, match="top folder|current folder"):
            check_out(top, kind="analysis", force=True)
    # a run that fails moves nothing
    with pytest.raises(RuntimeError):
        with replacing(user, kind="analysis", force=True):
            raise RuntimeError("boom")
    assert snapshot(user) == before
    (tmp_path / "user.previous").mkdir()  # the user's own: never written over
    (tmp_path / "user.previous" / "old.txt").write_text("mine too")
    with pytest.warns(UserWarning, match=r"kept, unchanged, at .*user\.previous-2"):
        with replacing(user, kind="analysis", force=True) as stage:
            (stage.path / "summary.json").write_text("{}")
            stage.publish()
    assert stage.kept == tmp_path / "user.previous-2"
    assert snapshot(stage.kept) == before  # the user's folder, every byte, nothing added
    assert read_marker(stage.kept) is None
    assert [p.name for p in (tmp_path / "user.previous").iterdir()] == ["old.txt"]
    assert sorted(p.name for p in user.iterdir()) == [MARKER, "summary.json"]
    assert not staging_path(user).exists() and not lock_path(user).exists()
    # now kernelatlas's own: the next run replaces it without --force and keeps nothing
    with replacing(user, kind="analysis") as stage:
        stage.publish()
    assert stage.kept is None and not (tmp_path / "user.previous-3").exists()


def test_force_keeps_a_users_file_inside_an_output_and_never_reuses_their_bank(
    tmp_path: Path,
) -> None:
    mine = mark_dir(tmp_path / "run", "analysis")
    (mine / "summary.json").write_text("{}")
    mark_dir(mine / "bank", "bank")
    stamped = pa.table({"a": [1]}).replace_schema_metadata({b"kernelatlas_version": b"0.2"})
    pq.write_table(stamped, mine / "bank" / "m.parquet")  # kernelatlas's: its footer says so
    (mine / "bank" / "notes.txt").write_text("mine")
    before = snapshot(mine)
    with pytest.warns(UserWarning, match="kept, unchanged"):
        with replacing(mine, kind="analysis", force=True, keep=("bank",)) as stage:
            reused = sorted(p.name for p in (stage.path / "bank").iterdir())
            stage.publish()
    assert reused == [MARKER, "m.parquet"]  # the user's notes.txt is not carried into ours
    assert snapshot(tmp_path / "run.previous") == before
    # a user's folder holding a bank/ of their own: nothing of it enters the new output
    user = tmp_path / "user"
    (user / "bank").mkdir(parents=True)
    (user / "bank" / "theirs.parquet").write_bytes(b"PAR1 theirs")
    with pytest.warns(UserWarning):
        with replacing(user, kind="analysis", force=True, keep=("bank",)) as stage:
            assert not (stage.path / "bank").exists()
            stage.publish()
    assert (tmp_path / "user.previous" / "bank" / "theirs.parquet").read_bytes() == b"PAR1 theirs"


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "plain rename"])
def test_move_aside_never_lands_on_an_existing_path(tmp_path: Path, monkeypatch, renameat2) -> None:
    from kernelatlas import atomic

    if not renameat2:  # no renameat2 (another OS, an old libc)
        monkeypatch.setattr(atomic, "_renameat2", lambda *a: None)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("d")
    (tmp_path / "d.previous").mkdir()  # an empty folder: a plain rename would replace it
    (tmp_path / "d.previous-2").write_text("a file")
    (tmp_path / "d.previous-3").symlink_to(tmp_path / "nowhere")
    assert atomic.move_aside(tmp_path / "d") == tmp_path / "d.previous-4"
    assert (tmp_path / "d.previous-4" / "f.txt").read_text() == "d"
    assert not any((tmp_path / "d.previous").iterdir())
    assert (tmp_path / "d.previous-2").read_text() == "a file"


def test_move_aside_says_why_it_cannot_rename(tmp_path: Path, monkeypatch) -> None:
    import errno

    from kernelatlas import atomic

    monkeypatch.setattr(atomic, "_renameat2", lambda *a: errno.EACCES)
    (tmp_path / "d").mkdir()
    with pytest.raises(PermissionError):  # at once, not after trying 10,000 names
        atomic.move_aside(tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["analyze", "harvest"])
def test_an_out_that_cannot_be_written_is_named(tmp_path: Path, command: str) -> None:
    """A folder no one can create files in (/proc here; read-only or full filesystems
    alike): one line naming --out, not kernelatlas's hidden lock file."""
    np.save(tmp_path / "m.npy", kernels(0))
    run = run_cli([command, tmp_path / "m.npy", "--out", "/proc/kernelatlas-out"])
    line = run.one_line_error()
    assert "--out /proc/kernelatlas-out: kernelatlas cannot write in /proc" in line, line
    assert ".kernelatlas-lock" not in line


def test_force_on_the_cli_names_where_the_folder_is_kept(tmp_path: Path) -> None:
    dirs = _case_dirs(tmp_path)
    before = snapshot(dirs["user"])
    args = ["analyze", dirs["models"] / "m.npy", "--no-fit", "--no-init-baseline", "--quiet"]
    run = run_cli([*args, "--out", dirs["user"]])
    assert run.code == 2 and "keep it as user.previous" in run.one_line_error(), run.lines
    run = run_cli([*args, "--out", dirs["user"], "--force"])
    assert run.code == 0, run.lines
    kept = [ln for ln in run.stderr.splitlines() if "--force" in ln]
    assert kept == [
        f"kernelatlas: warning: --force: the folder that was at {dirs['user']} is kept, "
        f"unchanged, at {tmp_path / 'user.previous'} (kernelatlas deletes only what it wrote)"
    ]
    assert snapshot(tmp_path / "user.previous") == before
    assert (dirs["user"] / "index.html").is_file() and not (dirs["user"] / "thesis.tex").exists()


def test_a_second_run_on_the_same_out_refuses(tmp_path: Path) -> None:
    dirs = _case_dirs(tmp_path)
    out = mark_dir(tmp_path / "report", "analysis")
    (out / "summary.json").write_text('{"kernelatlas_version": "0.1.0"}')
    with output_lock(out.resolve()):  # this process is the first run
        before = snapshot(tmp_path)
        run = run_cli(["analyze", dirs["models"] / "m.npy", "--out", out])
        assert f"pid {os.getpid()}" in run.one_line_error()
        assert snapshot(tmp_path) == before
    assert not lock_path(out).exists()  # the lock file goes with the run


def test_compare_never_writes_over_its_runs(analysis, tmp_path: Path) -> None:
    a = analysis["work"] / "real"
    b = tmp_path / "runs" / "b"
    shutil.copytree(a, b, symlinks=True)
    (tmp_path / "file.html").write_text("mine")
    before = snapshot(tmp_path), snapshot(a)
    for out, says in (
        (b, "is the input"),
        (tmp_path / "runs", "holds the input"),
        (tmp_path / "file.html", "not a folder"),
        (b / "cmp", "inside the input folder"),
    ):
        run = run_cli(["compare", a, b, "--out", out])
        assert says in run.one_line_error(), (out, run.lines)
    assert (snapshot(tmp_path), snapshot(a)) == before


def test_failed_run_keeps_only_a_marked_resumable_staging(tmp_path: Path) -> None:
    from kernelatlas.pipeline import analyze

    good, bad = tmp_path / "good.npy", tmp_path / "bad.pt"
    np.save(good, kernels(5))
    bad.write_bytes(b"\x80\x04 not a pickle")
    out = tmp_path / "out"
    run = run_cli(["analyze", good, bad, "--out", out, "--quiet"])
    assert "bad.pt" in run.one_line_error()
    staging = staging_path(out)
    assert not out.exists()
    # what the failed run harvested stays for the next one, marked as kernelatlas's
    assert read_marker(staging)["kind"] == "analysis"
    assert sorted(p.name for p in staging.iterdir()) == [MARKER, "bank"]
    res = analyze([good], out, fit=False, figures=False, init_baseline=False, quiet=True)
    assert list(res.harvest["status"].unique()) == ["reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "good.npy", "out"]
    # a run that fails before harvesting anything leaves nothing at all (no parents made)
    run = run_cli(["analyze", bad, "--out", tmp_path / "new" / "deep" / "other", "--quiet"])
    run.one_line_error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "good.npy", "out"]


def test_harvest_and_autoencoder_outs_follow_the_rules(tmp_path: Path) -> None:
    dirs = _case_dirs(tmp_path)
    before = snapshot(tmp_path)
    model = dirs["models"] / "m.npy"
    assert (
        "not a kernelatlas output"
        in run_cli(["harvest", model, "--out", dirs["user"]]).one_line_error()
    )
    assert (
        "holds the input" in run_cli(["harvest", model, "--out", dirs["models"]]).one_line_error()
    )
    assert (
        "not a kernelatlas output"
        in run_cli(["autoencoder", "train", model, "--out", dirs["user"]]).one_line_error()
    )
    assert (
        "is the input"
        in run_cli(["autoencoder", "train", dirs["bank"], "--out", dirs["bank"]]).one_line_error()
    )
    assert snapshot(tmp_path) == before


def test_only_marked_siblings_are_recovered_and_only_own_files_replaced(tmp_path: Path) -> None:
    from kernelatlas.atomic import old_path, recover_dir

    out = tmp_path / "report"
    user_old = old_path(out)  # a look-alike of kernelatlas's name, but not marked
    user_old.mkdir()
    (user_old / "keep.txt").write_text("mine")
    recover_dir(out)  # out missing, an unmarked "old" beside it: not taken for ours
    assert not out.exists() and (user_old / "keep.txt").read_text() == "mine"
    staging = staging_path(out)
    staging.mkdir()
    with pytest.raises(KernelAtlasError, match="is not kernelatlas's"):
        with replacing(out, kind="analysis"):
            pass
    assert staging.is_dir() and user_old.is_dir()
    # a kernelatlas 0.1.0 output (no marker) is recognised by its files
    legacy = tmp_path / "legacy"
    (legacy / "figures").mkdir(parents=True)
    (legacy / "summary.json").write_text('{"kernelatlas_version": "0.1.0"}')
    (legacy / "figures" / "coverage.png").write_bytes(b"png")
    assert check_out(legacy, kind="analysis") == legacy
    (legacy / "summary.json").write_text('{"title": "my summary"}')
    with pytest.raises(KernelAtlasError, match="not a kernelatlas output"):
        check_out(legacy, kind="analysis")
    # a user's file added inside a kernelatlas output is not deleted by the next run
    mine = mark_dir(tmp_path / "mine", "analysis")
    (mine / "figures").mkdir()
    (mine / "figures" / "notes.txt").write_text("mine")
    with pytest.raises(KernelAtlasError, match="holds figures/notes.txt"):
        check_out(mine, kind="analysis")
    assert check_out(mine, kind="analysis", force=True) == mine
