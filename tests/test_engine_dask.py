"""The Dask engine gives the single-process results, row for row, on real shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelatlas.bank import KernelBank
from kernelatlas.engine import make_engine
from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import harvest_to_bank
from kernelatlas.partitions import PartitionJob, PartsMerger, bank_partitions
from kernelatlas.pipeline import AnalysisConfig, analyze

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from kernelatlas.engine.dask import DaskEngine, dask_client, harvest_dask  # noqa: E402

SOURCES = ["pp_lcnet_orientation", "efficientnet_lite0"]  # 2,480 + 8,960 kernels


@pytest.fixture(scope="module")
def scheduler():
    """A 2-worker LocalCluster (processes, one thread each) shared by the tests."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def _run(engine, parts, job, folder: Path) -> tuple[pa.Table, PartsMerger]:
    """Partitions through ``engine``, merged as the pipeline does; the parts read back."""
    folder.mkdir()
    merger = PartsMerger(folder)
    with engine as e:
        for res in e.map_partitions((p, job) for p in parts):
            merger.add(res)
    merger.finish()
    return pq.ParquetDataset(folder).read(), merger


def test_analyze_dask_matches_local_every_column(scheduler, tmp_path: Path) -> None:
    base = {"fit": False, "init_baseline": False, "quiet": True, "batch_size": 1000,
            "n_null": 5000, "with_weights": True,
            "baselines": ("gaussian", "phase", "covariance")}  # fmt: skip
    local = analyze(SOURCES, tmp_path / "local", AnalysisConfig(**base))
    dask = analyze(SOURCES, tmp_path / "dask", AnalysisConfig(**base, engine="dask",
                                                             scheduler=scheduler))  # fmt: skip
    a = pq.read_table(local.kernels_path)
    b = pq.read_table(dask.kernels_path)
    assert a.num_rows == 2480 + 8960 and a.column_names == b.column_names
    assert {"weights", "bank_file", "bank_row", "family"} <= set(a.column_names)
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name
    names = sorted(p.name for p in local.kernels_path.iterdir())
    assert names == sorted(p.name for p in dask.kernels_path.iterdir())  # the same part files
    # a non-trivial result: the shipped kernels are not all one family
    assert len(set(a.column("family").to_pylist())) >= 3
    sa = json.loads((local.out / "summary.json").read_text())
    sb = json.loads((dask.out / "summary.json").read_text())
    for key in ("models", "layers", "thresholds"):  # models: the baselines too
        assert sa[key] == sb[key], key
    # the references the partitions collected (on the workers) gave the same baselines
    assert {"phase", "covariance"} <= set(sa["models"][0]["baselines"])
    assert sb["config"]["engine"] == "dask" and sa["config"]["engine"] == "local"
    for key, table in local.tables.items():
        assert table.equals(dask.tables[key]), key
    for f in ("atlas.png",):  # the same panel statistic (the means beside the diagram)
        assert (local.out / "figures" / f).read_bytes() == (dask.out / "figures" / f).read_bytes()
    assert dask.timings["engine"] == "dask" and dask.timings["slots"] == 2


def test_analyze_on_a_local_cluster_it_starts_matches_local(tmp_path: Path) -> None:
    """A LocalCluster started by the analysis (the driver harvests the first sources itself
    while its processes start; workers harvest the rest): the same table as local."""
    base = {"fit": False, "init_baseline": False, "quiet": True, "figures": False,
            "n_null": 2000, "baselines": ("gaussian",)}  # fmt: skip
    local = analyze(SOURCES, tmp_path / "local", AnalysisConfig(**base))
    dask = analyze(SOURCES, tmp_path / "dask", AnalysisConfig(**base, engine="dask", n_workers=1))
    a, b = pq.read_table(local.kernels_path), pq.read_table(dask.kernels_path)
    assert a.num_rows == 2480 + 8960 and a.equals(b)
    sa = json.loads((local.out / "summary.json").read_text())
    sb = json.loads((dask.out / "summary.json").read_text())
    assert sa["models"] == sb["models"] and sa["layers"] == sb["layers"]


_WORKER_STATE = """
import json, os, sys
from kernelatlas.engine.dask import dask_client

def state():
    return {"torch": "torch" in sys.modules, "atlas": "kernelatlas.atlas" in sys.modules,
            "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "omp": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch_threads()}

def torch_threads():
    import torch

    return torch.get_num_threads()

if __name__ == "__main__":
    with dask_client(n_workers=1) as c:
        print(json.dumps(list(c.run(state).values())))
"""


def test_local_cluster_workers_start_from_the_preloaded_fork_server(tmp_path: Path) -> None:
    """The LocalCluster that ``dask_client`` starts (in a fresh process, as the CLI's)
    forks its workers from a fork server that imported torch and the atlas once (not each
    worker on its own), with the thread variables of Dask's ``pre-spawn-environ`` and
    without its ``MALLOC_TRIM_THRESHOLD_``."""
    import multiprocessing
    import os
    import subprocess
    import sys

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    script = tmp_path / "state.py"
    script.write_text(_WORKER_STATE)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        {"torch": True, "atlas": True, "trim": None, "omp": "1", "torch_threads": 1}
    ]


def test_dask_partitions_match_local_in_bank_order(scheduler, small_bank, models, tmp_path) -> None:
    job = PartitionJob(models, batch_size=128, parts_dir=str(tmp_path / "a"))
    parts = bank_partitions(small_bank)
    assert len(parts) == 9
    a, ma = _run(make_engine("local"), parts, job, tmp_path / "a")
    # one partition per task, 4 tasks in flight over 2 workers: results still come in order
    job_b = PartitionJob(models, batch_size=128, parts_dir=str(tmp_path / "b"))
    engine = DaskEngine(scheduler, partitions_per_task=1)
    b, mb = _run(engine, parts, job_b, tmp_path / "b")
    assert engine.tasks == 9
    assert a.num_rows == 2480 and a.equals(b)
    assert b.column("channel").to_pylist() == small_bank.read()["channel"].tolist()
    for key in ("models", "layers"):
        assert ma.counts()[key].equals(mb.counts()[key]), key
    assert len(list((tmp_path / "b").iterdir())) == 9  # no temporary file left


def test_dask_with_fits_and_grouped_tasks_matches_local(
    scheduler, small_bank, models, tmp_path
) -> None:
    parts = bank_partitions(small_bank)[4:8]  # 1,200 kernels, both sizes
    job = PartitionJob(models, fit=True, batch_size=256, seed=3, parts_dir=str(tmp_path / "a"))
    a, _ = _run(make_engine("local"), parts, job, tmp_path / "a")
    engine = DaskEngine(scheduler, partitions_per_task=3)
    job_b = PartitionJob(models, fit=True, batch_size=256, seed=3, parts_dir=str(tmp_path / "b"))
    b, _ = _run(engine, parts, job_b, tmp_path / "b")
    assert engine.tasks == 2  # 3 + 1 partitions
    assert "fit_r2" in a.column_names and a.num_rows == 1200
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


def test_harvest_dask_writes_an_fsspec_bank_on_workers(tmp_path: Path) -> None:
    local = KernelBank(tmp_path / "bank")
    harvest_to_bank(SOURCES, local, progress=False)
    url = f"memory://kernelatlas-test-{tmp_path.name}/bank"
    # threads share the process's memory:// filesystem: workers write, the driver only reads
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0"
    ) as client:
        counts = harvest_dask(SOURCES + SOURCES[:1], url, client=client, progress=False)
    remote = KernelBank(url)
    assert remote.is_remote and [str(f) for f in remote.files()][0].startswith("memory://")
    again = harvest_to_bank(SOURCES, local, progress=False)  # unchanged: reused, not re-read
    assert set(counts["status"]) == {"harvested"} and set(again["status"]) == {"reused"}
    assert counts.drop(columns="status").equals(again.drop(columns="status"))
    assert sorted(remote.sources()) == sorted(SOURCES)
    got, want = remote.read(), local.read()
    assert got.drop(columns="weights").equals(want.drop(columns="weights"))
    for kh, kw in local.shapes():
        np.testing.assert_array_equal(remote.kernels(kh, kw), local.kernels(kh, kw))
    # resumable: everything is there, so nothing runs (and no cluster is needed)
    rerun = harvest_dask(SOURCES, url, scheduler="tcp://127.0.0.1:9", progress=False)
    assert rerun.equals(again)


def test_config_and_cli_refuse_bad_engine_options(tmp_path: Path, capsys) -> None:
    from kernelatlas.cli import main

    for bad in ({"engine": "spark"}, {"scheduler": "tcp://x:8786"}, {"n_workers": 2},
                {"engine": "dask", "n_workers": 0},
                {"engine": "dask", "n_workers": 2, "scheduler": "tcp://x:8786"}):  # fmt: skip
        with pytest.raises(KernelAtlasError):
            AnalysisConfig(**bad).validate()
    rc = main(["analyze", "pp_lcnet_orientation", "--out", str(tmp_path / "o"), "--workers", "2"])
    assert rc == 2 and "--engine dask" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler_is_a_clear_error() -> None:
    with pytest.raises(KernelAtlasError, match="cannot reach the Dask scheduler"):
        with dask_client("tcp://127.0.0.1:9", timeout=2):
            pass


def test_a_source_failing_on_a_worker_is_one_line_on_the_cli(tmp_path: Path) -> None:
    """The worker's own error log (with its traceback) stays silent: the CLI prints the
    reader's one-line error, exits 2 and leaves no output folder."""
    import subprocess
    import sys

    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).standard_normal((64, 3, 3)).astype(np.float32))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "kernelatlas", "analyze", str(good), str(bad), "--out",
           str(out), "--engine", "dask", "--workers", "1", "--no-fit", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelatlas: error: "), proc.stderr
    assert "bad.npy" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_ctrl_c_on_a_local_cluster_is_one_line_and_stops_its_workers(tmp_path: Path) -> None:
    """A terminal's ^C reaches the whole process group, the workers included: only the
    driver answers it ("kernelatlas: interrupted", exit 130); each worker had printed a
    KeyboardInterrupt traceback. No worker outlives the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    kernels = np.random.default_rng(0).standard_normal((1_000_000, 3, 3), np.float32)
    np.save(tmp_path / "big.npy", kernels)
    cmd = [sys.executable, "-m", "kernelatlas", "analyze", str(tmp_path / "big.npy"), "--out",
           str(tmp_path / "o"), "--engine", "dask", "--workers", "2", "--no-fit", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    driver, seen = psutil.Process(proc.pid), set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        seen |= {c.pid for c in driver.children(recursive=True)}
        if len(seen) >= 3:  # the fork server and its two workers
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the analysis ended before its workers were seen"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what ^C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "kernelatlas: interrupted"
    time.sleep(1.0)
    assert not [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_dask_tasks_left_by_a_closed_cluster_print_no_traceback(monkeypatch) -> None:
    """asyncio's "Task exception was never retrieved" for Dask's own tasks (a cluster closed
    with work in flight: seen after ^C) is dropped; any other task's is kept, and
    KERNELATLAS_DEBUG=1 keeps them all."""
    import logging
    import os

    from kernelatlas.engine.dask import _ClusterShutdownNoise

    def record(where: str) -> logging.LogRecord:
        code = compile("def f():\n    raise KeyError('tcp://127.0.0.1:1')\nf()", where, "exec")
        try:
            exec(code, {})
        except KeyError as exc:
            info = (KeyError, exc, exc.__traceback__)
        return logging.LogRecord("asyncio", logging.ERROR, where, 1,
                                 "Task exception was never retrieved", None, info)  # fmt: skip

    dask_file = os.sep.join(["", "venv", "site-packages", "distributed", "scheduler.py"])
    noise = _ClusterShutdownNoise()
    assert not noise.filter(record(dask_file))
    assert noise.filter(record(os.sep.join(["", "home", "me", "my_tasks.py"])))
    monkeypatch.setenv("KERNELATLAS_DEBUG", "1")
    assert noise.filter(record(dask_file))


def test_a_script_without_a_main_guard_gets_told_how_to_start_workers(tmp_path: Path) -> None:
    """Worker processes import the main module first: a script that starts a LocalCluster
    at its top level cannot start one, and is told what to write instead of a traceback
    that ends in "Nanny failed to start"."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from kernelatlas.engine.dask import dask_client\n"
        "with dask_client(n_workers=1) as c:\n"
        "    print(c)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.returncode != 0
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("kernelatlas.errors.")]
    assert errors and all("if __name__ == '__main__':" in ln for ln in errors), out.stderr
