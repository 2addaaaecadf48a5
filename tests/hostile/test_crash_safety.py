"""SIGKILL a running ``kernelatlas harvest`` / ``kernelatlas analyze`` at random (seeded)
moments: what is visible afterwards is always a complete state (the previous one or the new
one), never a partial Parquet file, and a re-run finishes with no duplicate rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kernelatlas.atomic import MARKER
from kernelatlas.bank import KernelBank

pytestmark = pytest.mark.slow

SOURCES = ["pp_lcnet_orientation", "efficientnet_lite0"]
CLI = [sys.executable, "-m", "kernelatlas"]


@pytest.fixture(scope="module", autouse=True)
def _cached(shipped):
    for name in SOURCES:
        shipped(name)  # fetched once, so runs only read the cache


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args, "--quiet"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _run(args: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = _start(args, cwd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - t


def _kill_after(args: list[str], cwd: Path, delay: float) -> bool:
    """Start, SIGKILL after ``delay`` s; True if it was still running when killed."""
    proc = _start(args, cwd)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _bank_state(bank_dir: Path) -> dict[str, int]:
    """Rows per visible bank file; every visible file must be a complete Parquet file."""
    out = {}
    for f in KernelBank(bank_dir).files():
        out[f.name] = pq.ParquetFile(f).metadata.num_rows  # raises on a partial file
        assert pq.read_table(f).num_rows == out[f.name]
    return out


def test_killed_harvest_leaves_complete_files_and_resumes(tmp_path):
    rng = np.random.default_rng(7)
    args = ["harvest", *SOURCES, "--out", "bank"]
    t_first = _run(["harvest", SOURCES[0], "--out", "bank"], tmp_path)  # the previous state
    snapshots, killed = [_bank_state(tmp_path / "bank")], 0
    for delay in sorted(rng.uniform(0.2 * t_first, 0.8 * t_first, size=2)):
        killed += _kill_after(args, tmp_path, float(delay))
        snapshots.append(_bank_state(tmp_path / "bank"))
    _run(args, tmp_path)  # resumes
    final = _bank_state(tmp_path / "bank")
    assert len(final) == len(SOURCES)
    for snap in snapshots:  # each file seen after a kill was already complete
        assert all(final[name] == rows for name, rows in snap.items())
    df = KernelBank(tmp_path / "bank").read(columns=["source", "layer", "channel"])
    assert not df.duplicated().any() and len(df) == sum(final.values())
    _run(args, tmp_path)  # a re-run over a complete bank adds nothing
    assert _bank_state(tmp_path / "bank") == final
    assert killed >= 1  # at least one kill landed mid-run (else the test proved nothing)


def _analyze_state(out: Path) -> tuple[str, ...]:
    """Check ``out`` is a complete analysis; return the sources it covers."""
    summary = json.loads((out / "summary.json").read_text())
    sources = tuple(summary["config"]["sources"])
    kernels = pq.read_table(out / "kernels.parquet")
    bank = _bank_state(out / "bank")
    assert kernels.num_rows == sum(bank.values())
    assert set(kernels.column("source").to_pylist()) == set(sources)
    assert (out / "index.html").stat().st_size > 0
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [MARKER]
    return sources


def test_killed_analyze_shows_old_or_new_state_and_resumes(tmp_path):
    rng = np.random.default_rng(11)
    common = ["--out", "out", "--no-fit", "--no-init-baseline", "--baselines", "gaussian"]
    t_first = _run(["analyze", SOURCES[0], *common], tmp_path)
    assert _analyze_state(tmp_path / "out") == (SOURCES[0],)
    seen, killed = set(), 0
    for delay in sorted(rng.uniform(0.3 * t_first, 1.0 * t_first, size=2)):
        killed += _kill_after(["analyze", *SOURCES, *common], tmp_path, float(delay))
        assert (tmp_path / "out").is_dir(), "output directory missing after a kill"
        seen.add(_analyze_state(tmp_path / "out"))
    assert seen <= {(SOURCES[0],), tuple(SOURCES)}
    _run(["analyze", *SOURCES, *common], tmp_path)
    assert _analyze_state(tmp_path / "out") == tuple(SOURCES)
    kernels = pq.read_table(
        tmp_path / "out" / "kernels.parquet", columns=["source", "layer", "channel"]
    )
    assert not kernels.to_pandas().duplicated().any()
    assert killed >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging, old or lock sibling


def test_interrupted_swap_is_recovered(tmp_path, monkeypatch):
    """Fallback path (no atomic exchange): a crash between the two renames of publish_dir,
    then recovery brings the previous state back."""
    from kernelatlas import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    staging = atomic.staging_path(out)
    staging.mkdir()
    (staging / "summary.json").write_text("new")
    real = os.replace
    calls = []

    def crash_on_second(src, dst):  # the second of the two renames (the marker's is none)
        calls.append(dst)
        if Path(src) == staging:
            raise KeyboardInterrupt  # the process dies here
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic.publish_dir(staging, out)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not out.exists()  # the window: neither state at `out` until recovery runs
    atomic.recover_dir(out)
    assert (out / "summary.json").read_text() == "old"


def _analyze_small(tmp_path):
    """``analyze`` of 40 random 3x3 kernels into an empty ``tmp_path/out`` (in this process:
    a monkeypatched step runs)."""
    from .cli import run_cli

    np.save(tmp_path / "m.npy", np.random.default_rng(0).standard_normal((40, 3, 3), np.float32))
    (tmp_path / "out").mkdir()
    return run_cli(["analyze", tmp_path / "m.npy", "--out", tmp_path / "out", "--no-fit",
                    "--no-init-baseline", "--quiet"])  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_publish_swaps_in_one_step_on_linux(tmp_path, monkeypatch):
    """With RENAME_EXCHANGE there is no window: no rename that could leave `out` missing."""
    from kernelatlas import atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    staging = atomic.staging_path(out)
    staging.mkdir()
    (staging / "summary.json").write_text("new")

    def no_rename(src, dst):
        raise AssertionError("publish_dir used a two-step rename")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    atomic.publish_dir(staging, out)
    assert (out / "summary.json").read_text() == "new"
    assert not staging.exists()


def test_a_ctrl_c_python_drops_still_stops_the_run(tmp_path, monkeypatch):
    """A SIGINT that lands in a ``__del__`` (matplotlib's garbage collection) raises there,
    and Python drops that KeyboardInterrupt ("Exception ignored in ..."): the run went on,
    published its output and exited 0. Now nothing is published, the previous output stays,
    and the command exits 130 with its one line."""
    import kernelatlas.report as report

    class _DiesInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside __del__
                pass

    real = report.write_report

    def interrupted_write(*args, **kwargs):
        _DiesInDel()  # collected at once: the SIGINT is raised, and dropped, in its __del__
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "write_report", interrupted_write)
    run = _analyze_small(tmp_path)
    assert run.code == 130, run.stderr
    assert run.lines[-1] == "kernelatlas: interrupted" and "Traceback" not in run.stderr
    assert "Exception ignored" not in run.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # never published


def test_a_ctrl_c_a_library_turns_into_its_own_error_still_exits_130(tmp_path, monkeypatch):
    """A SIGINT inside matplotlib's C image resampling came out as ``ValueError: Invalid
    affine transformation matrix``, so a ^C while the figures were drawn ended in "unexpected
    ValueError ... (a kernelatlas bug)", exit 3. Now: "kernelatlas: interrupted", exit 130,
    nothing published."""
    import kernelatlas.report as report

    def interrupted_write(*args, **kwargs):
        try:  # what the C extension does: the handler's KeyboardInterrupt becomes its error
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            raise ValueError("Invalid affine transformation matrix") from None
        raise AssertionError("the SIGINT did not arrive")

    monkeypatch.setattr(report, "write_report", interrupted_write)
    run = _analyze_small(tmp_path)
    assert run.code == 130, run.stderr
    assert run.lines == ["kernelatlas: interrupted"], run.lines
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # never published


def test_sigterm_stops_a_run_as_a_ctrl_c_does(tmp_path):
    """SIGTERM (``timeout``, ``kill``, a batch scheduler) killed the run on the spot: no
    line, exit -15. Now it is taken like a ^C: one line, exit 143, nothing published; beside
    the output at most the staging folder's resumable bank (as after a failed run; that the
    next run resumes from it: test_killed_analyze_shows_old_or_new_state_and_resumes)."""
    from kernelatlas.atomic import staging_path

    out = tmp_path / "out"
    proc = _start(["analyze", *SOURCES, "--out", "out", "--no-init-baseline", "--no-fit"], tmp_path)
    staging = staging_path(out)
    deadline = time.monotonic() + 120
    while not staging.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be terminated"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 143, err.decode()[-2000:]
    assert lines[-1] == "kernelatlas: terminated (SIGTERM)" and "Traceback" not in err.decode()
    assert not out.exists()  # never published
    left = [p.name for p in tmp_path.iterdir()]
    assert left in ([], [staging.name]), left
    if left:
        assert {p.name for p in staging.iterdir()} <= {"bank", MARKER}
