"""Benchmark: classify a 10M-kernel 7x7 bank end to end, on one process and on Dask.

1. Writes a synthetic bank (``--n`` 7x7 kernels drawn from the atlas families -- centre,
   first and second derivative patterns of ``kernelatlas.atlas.functional`` at random
   scales, orientations, polarities and sub-pixel offsets -- times a random gain, plus
   Gaussian noise of a random level; a share of pure-noise kernels) with KernelBank: one
   file per 250,000-kernel "source", row groups of 65,536 (the engines' partitions).
2. Measures the floor on this machine: a float32 ``[B, 49] @ [49, T]`` product plus a row
   max over the same number of kernels, in the Atlas's batches, with ``T`` = the number of
   template columns of the calibrated 7x7 Atlas (``Atlas._weights``: what
   ``Atlas.predict`` multiplies every unit kernel by).
3. Runs ``kernelatlas.analyze`` on the bank (``fit=False``: the parametric fits are
   benchmarked in benchmarks/classify.py; ``figures=False``, no fresh-init baseline):
   once with ``engine="local"`` and once with ``engine="dask"`` on a ``--workers``
   LocalCluster, sampling the peak RSS of the process tree (driver and workers).
4. Times single-threaded per-partition costs (3x3 and 7x7) and the driver's serial cost
   per row, and projects the time of a CNN-Filter-DB-scale bank (1.4B 3x3 kernels) on N
   workers.

Writes the figures with the command to ``docs/benchmarks/scale.json`` (temp file, then
rename). Timings on a shared machine are noisy: the load average is recorded.

    .venv/bin/python benchmarks/scale.py                       # 10M, local + 2-worker Dask
    .venv/bin/python benchmarks/scale.py --n 1000000 --out /tmp/scale.json   # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import torch

import kernelatlas
from kernelatlas import pipeline as P
from kernelatlas.atlas import Atlas
from kernelatlas.atlas import functional as F
from kernelatlas.bank import KernelBank
from kernelatlas.harvest import HarvestResult, LayerKernels, source_key
from kernelatlas.report.summary import partial_counts

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_SOURCE = 250_000
LAYERS_PER_SOURCE = 50
CNN_FILTER_DB = 1_400_000_000


# --------------------------------------------------------------------------- synthetic bank
def pattern_pool(k: int, seed: int) -> np.ndarray:
    """Unit patterns of every atlas family at random parameters, [P, k, k]."""
    rng = np.random.default_rng(seed)
    m = 1000
    sig = rng.uniform(0.5, 2.0, m)
    off = (rng.uniform(-0.5, 0.5, m), rng.uniform(-0.5, 0.5, m))
    pol = rng.choice([-1, 1], m)
    theta = rng.uniform(0, 360, m)
    return np.concatenate(
        [
            F.center_pattern(k, k, sig, surround_weight=rng.uniform(0, 1, m), polarity=pol,
                             offset=off),
            F.first_derivative_pattern(k, k, sig, theta, offset=off),
            F.second_derivative_pattern(k, k, sig, theta, kind="bar", polarity=pol, offset=off),
            F.second_derivative_pattern(k, k, sig, theta, kind="cross", polarity=pol, offset=off),
        ]
    )  # fmt: skip


def synthetic_kernels(n: int, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` kernels: gain * pattern + noise (noise/signal ratio uniform in [0, 1.5]);
    20% pure noise."""
    k = pool.shape[1]
    idx = rng.integers(0, len(pool), n)
    gain = rng.lognormal(-2.0, 0.5, n).astype(np.float32)
    snr_inv = rng.uniform(0.0, 1.5, n).astype(np.float32)
    snr_inv[rng.random(n) < 0.2] = 1e3  # pure noise
    noise = rng.standard_normal((n, k, k), dtype=np.float32)
    out = pool[idx] * gain[:, None, None]
    out += noise * (gain * snr_inv / k)[:, None, None]
    return out


def write_bank(path: Path, n: int, k: int, seed: int = 0) -> list[str]:
    """The synthetic bank at ``path`` (reused when complete); returns the source names."""
    bank = KernelBank(path)
    pool = pattern_pool(k, seed)
    names = []
    for i in range(math.ceil(n / ROWS_PER_SOURCE)):
        rows = min(ROWS_PER_SOURCE, n - i * ROWS_PER_SOURCE)
        name = str(path.parent / f"synthetic_{k}x{k}_{i:05d}.npy")  # a key, not a file
        key = source_key(name)
        names.append(name)
        if bank.has_source(key):
            continue
        w = synthetic_kernels(rows, pool, np.random.default_rng([seed, i]))
        layers = [
            LayerKernels(f"stage{j // 10}.block{j % 10}.dw", j, chunk, 1 + (j % 3 == 0), 1)
            for j, chunk in enumerate(np.array_split(w, LAYERS_PER_SOURCE))
        ]
        bank.add(HarvestResult(key, f"synthetic{k}x{k}", "numpy", layers))
    return names


# --------------------------------------------------------------------------- measuring
class PeakRSS:
    """Samples the RSS of this process and its children every 20 ms in a thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.driver = self.children_max = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                d = self.proc.memory_info().rss
                kids = [c.memory_info().rss for c in self.proc.children(recursive=True)]
            except psutil.Error:
                continue
            self.driver = max(self.driver, d)
            self.children_max = max([self.children_max, *kids])
            self.total = max(self.total, d + sum(kids))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict[str, float]:
        return {
            "driver_peak_rss_mib": round(self.driver / 2**20, 1),
            "worker_peak_rss_mib": round(self.children_max / 2**20, 1),
            "tree_peak_rss_mib": round(self.total / 2**20, 1),
        }


def floor_seconds(n: int, t_cols: int, batch: int) -> float:
    """Time of the bare float32 [batch, 49] @ [49, T] + row max over ``n`` rows."""
    rng = np.random.default_rng(1)
    buf = torch.from_numpy(rng.standard_normal((min(n, 1_000_000), 49), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((49, t_cols), dtype=np.float32))
    t = time.perf_counter()
    done = 0
    while done < n:
        for s in range(0, min(len(buf), n - done), batch):
            (buf[s : s + batch] @ w).max(dim=1)
        done += min(len(buf), n - done)
    return time.perf_counter() - t


def run_analyze(bank_dir: Path, out: Path, names: list[str], **cfg: Any) -> dict[str, Any]:
    """``analyze`` on a copy (hard links) of the bank; wall, classify-stage time, peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "bank").mkdir(parents=True)
    for f in bank_dir.iterdir():
        os.link(f, out / "bank" / f.name)
    marks: dict[str, float] = {}
    orig_parts, orig_merge = P.bank_partitions, P.merge_counts

    def parts(bank: Any) -> Any:
        marks["classify_start"] = time.perf_counter()
        return orig_parts(bank)

    def merge(counts: Any) -> Any:
        marks["classify_end"] = time.perf_counter()
        return orig_merge(counts)

    P.bank_partitions, P.merge_counts = parts, merge
    config = P.AnalysisConfig(fit=False, figures=False, init_baseline=False, quiet=True, **cfg)
    try:
        with PeakRSS() as rss:
            t = time.perf_counter()
            res = P.analyze(names, out, config)
            wall = time.perf_counter() - t
    finally:
        P.bank_partitions, P.merge_counts = orig_parts, orig_merge
    kernels = sum(m["kernels"] for m in res.summary["models"])
    classify = marks["classify_end"] - marks["classify_start"]
    return {
        "kernels": kernels,
        "wall_s": round(wall, 1),
        "classify_stage_s": round(classify, 1),
        "kernels_per_s": round(kernels / wall),
        "classified_share": round(sum(m["classified"] for m in res.summary["models"]) / kernels, 4),
        **rss.mib(),
    }


def partition_costs(k: int, rows: int = 65_536) -> dict[str, float]:
    """Single-thread seconds to analyse one ``rows``-row partition of k x k kernels, split
    into the Atlas and the rest of ``analyse_record_batch``; and the driver's cost for it
    (partial counts + writing kernels.parquet)."""
    import tempfile

    import pyarrow.parquet as pq

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            names = write_bank(Path(tmp) / "bank", rows, k, seed=5)
            bank = KernelBank(Path(tmp) / "bank")
            atlas = Atlas(kernel_size=k).fit()
            models = {(k, k): {"atlas": atlas}}
            cfg = P.AnalysisConfig(fit=False)
            [part] = P.bank_partitions(bank)
            t = time.perf_counter()
            table = pa.concat_tables(list(P.analyse_partition(part, models, cfg)))
            t_part = time.perf_counter() - t
            x = bank.kernels(k, k)
            t = time.perf_counter()
            atlas.predict(x)
            t_atlas = time.perf_counter() - t
            t = time.perf_counter()
            partial_counts(table.select(P._COUNTED).to_pandas())
            with pq.ParquetWriter(Path(tmp) / "k.parquet", table.schema) as w:
                w.write_table(table)
            t_driver = time.perf_counter() - t
            assert len(names) == 1 and table.num_rows == rows
    finally:
        torch.set_num_threads(threads)
    return {
        "rows": rows,
        "partition_s": round(t_part, 3),
        "atlas_predict_s": round(t_atlas, 3),
        "driver_s": round(t_driver, 3),
        "template_columns": int(atlas._weights.shape[1]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="7x7 kernels in the bank")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/kernelatlas-scale"))
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the bank and outputs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "scale.json")
    args = ap.parse_args(argv)

    result: dict[str, Any] = {
        "kernelatlas_version": kernelatlas.__version__,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "n": args.n,
        "config": "analyze(fit=False, figures=False, init_baseline=False), batch_size 65536",
        "note": "one run each on a shared 2-core machine: timings are noisy (see load averages)",
    }
    bank_dir = args.work_dir / "bank"
    t = time.perf_counter()
    names = write_bank(bank_dir, args.n, 7)
    bank = KernelBank(bank_dir)
    result["bank"] = {
        "files": len(bank.files()),
        "partitions": len(P.bank_partitions(bank)),
        "bytes": sum(f.stat().st_size for f in bank.files()),
        "write_s": round(time.perf_counter() - t, 1),
    }
    print("bank", result["bank"], flush=True)

    atlas = Atlas(kernel_size=7).fit()
    t_cols, batch = int(atlas._weights.shape[1]), int(atlas.batch_size)
    t_floor = floor_seconds(args.n, t_cols, batch)
    result["floor"] = {
        "what": f"float32 [{batch}, 49] @ [49, {t_cols}] + row max, {args.n} rows",
        "template_columns": t_cols,
        "seconds": round(t_floor, 1),
        "kernels_per_s": round(args.n / t_floor),
    }
    print("floor", result["floor"], flush=True)

    if not args.skip_local:
        r = run_analyze(bank_dir, args.work_dir / "out-local", names, engine="local")
        r["ratio_to_floor_wall"] = round(r["wall_s"] / t_floor, 2)
        r["ratio_to_floor_classify"] = round(r["classify_stage_s"] / t_floor, 2)
        result["local"] = r
        print("local", r, flush=True)
    if not args.skip_dask:
        result["load_average_before_dask"] = [round(x, 2) for x in os.getloadavg()]
        from kernelatlas.engine import dask_client

        t = time.perf_counter()
        with dask_client(None, args.workers):
            pass
        startup = time.perf_counter() - t
        r = run_analyze(
            bank_dir, args.work_dir / "out-dask", names, engine="dask", n_workers=args.workers
        )
        r["workers"] = args.workers
        r["cluster_start_and_close_s"] = round(startup, 1)
        r["ratio_to_floor_wall"] = round(r["wall_s"] / t_floor, 2)
        if "local" in result:
            r["speedup_vs_local_wall"] = round(result["local"]["wall_s"] / r["wall_s"], 2)
            r["speedup_vs_local_classify"] = round(
                result["local"]["classify_stage_s"] / r["classify_stage_s"], 2
            )
        result["dask"] = r
        print("dask", r, flush=True)

    costs = {f"{k}x{k}": partition_costs(k) for k in (3, 7)}
    result["partition_costs_1_thread"] = costs
    print("costs", costs, flush=True)
    c3 = costs["3x3"]
    n_parts = math.ceil(CNN_FILTER_DB / c3["rows"])
    # Dask's per-partition overhead: what the classify stage took beyond the pure compute
    overhead = None
    if "dask" in result:
        w = result["dask"]["workers"]
        n7 = result["bank"]["partitions"]
        compute = n7 * costs["7x7"]["partition_s"] * (args.n / (n7 * costs["7x7"]["rows"]))
        busy = result["dask"]["classify_stage_s"] - result["dask"]["cluster_start_and_close_s"]
        overhead = max(0.0, (busy * w - compute) / n7)
    driver_bound = n_parts * c3["driver_s"]
    projection = []
    for n_workers in (1, 2, 8, 32, 128, 512):
        compute = n_parts * (c3["partition_s"] + (overhead or 0.0)) / n_workers
        projection.append(
            {
                "workers": n_workers,
                "hours": round(max(compute, driver_bound) / 3600, 2),
                "bound": "workers"
                if compute >= driver_bound
                else "driver (writes kernels.parquet)",
            }
        )
    result["projection_cnn_filter_db"] = {
        "kernels": CNN_FILTER_DB,
        "kernel_size": "3x3",
        "partitions": n_parts,
        "per_partition_s": c3["partition_s"],
        "dask_overhead_per_partition_s": None if overhead is None else round(overhead, 3),
        "driver_serial_s": round(driver_bound),
        "assumes": "one core per worker like this machine's; storage not the bottleneck; "
        "the driver writes kernels.parquet and adds counts serially (its measured cost)",
        "by_workers": projection,
    }
    print("projection", result["projection_cnn_filter_db"], flush=True)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
