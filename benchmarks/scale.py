"""Benchmark: millions of 7x7 kernels end to end (files to report), against the bare product.

One run measures, each figure beside the floor taken at the same time:

1. Input: ``--n`` synthetic 7x7 kernels in ``.npy`` files of ``--per-file`` kernels (the
   atlas families of ``kernelatlas.atlas.functional`` at random scales, orientations,
   polarities and sub-pixel offsets, times a random gain, plus Gaussian noise of a random
   level; 20% pure noise), written once into ``--work-dir`` and reused.
2. The floor: a float32 ``[8192, 49] @ [49, T]`` product plus a row max over the same
   number of kernels on every core (torch's threads), ``T`` the template columns of the
   7x7 atlas; measured right before and right after each analysis, and their mean used.
3. ``kernelatlas analyze FILES --no-fit --no-init-baseline`` with figures, in a fresh
   process (imports, harvest, calibration, classification, writing, summary and figures
   all counted: "fixed costs included"), on ``--small`` kernels twice (a fresh
   calibration cache, then the same settings again: the second run loads the
   calibration), on ``--n`` kernels with the local engine, and on ``--n`` kernels with a
   ``--workers`` Dask LocalCluster (single-threaded workers), whose kernels.parquet is
   compared with the local one part by part, row for row. Per run: wall, the stage table
   (seconds summed over threads), the CPU share of the machine's cores (CPU seconds of
   the process tree / wall / cores), the peak RSS of each process and of the tree.
4. What no files-to-report analysis can avoid (:func:`unavoidable`): interpreter start
   and imports, reading and hashing the inputs, copying them into a bank, the floor.
5. Single-thread cost of one 65,536-kernel partition (3x3 and 7x7) by stage, with the
   atlas's bare product apart from the rest of ``Atlas.predict``; and the projection of a
   CNN-Filter-DB-scale bank (1.4B 3x3 kernels) on N Dask workers from these costs and
   the driver's measured CPU per task.

``--baseline-src DIR`` also runs the small analysis with another source tree (e.g.
``git archive main | tar -x -C /tmp/ka-main``) for an old/new ratio in the same run.

Writes ``docs/benchmarks/scale.json`` (temp file, then rename). Timings on a shared
machine are noisy: the load average is recorded; the ratios within one run are the figures.

    nice -n 19 .venv/bin/python benchmarks/scale.py                      # 10M + 2M, local + Dask
    nice -n 19 .venv/bin/python benchmarks/scale.py --n 2000000 --small 500000 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

import kernelatlas
from kernelatlas.atlas import functional as F

ROOT = Path(__file__).resolve().parents[1]
CNN_FILTER_DB = 1_400_000_000
PARTITION = 65_536

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from kernelatlas.pipeline import AnalysisConfig, analyze
files, out, engine, workers = json.loads(sys.argv[1])
cfg = AnalysisConfig(fit=False, init_baseline=False, quiet=True, engine=engine,
                     n_workers=workers if engine == "dask" else None)
res = analyze(files, out, cfg)
self_ru = resource.getrusage(resource.RUSAGE_SELF)
kernels = sum(m["kernels"] for m in res.summary["models"])
print(json.dumps({
    "kernels": kernels,
    "classified_share": sum(m["classified"] for m in res.summary["models"]) / kernels,
    "timings": getattr(res, "timings", {}),
    "in_process_s": time.perf_counter() - t0,
    "driver_cpu_s": self_ru.ru_utime + self_ru.ru_stime,
    # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
    "driver_maxrss_mib": next(int(l.split()[1]) for l in open("/proc/self/status")
                              if l.startswith("VmHWM:")) / 1024,
}))
"""


# --------------------------------------------------------------------------- inputs
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


def write_inputs(folder: Path, n: int, per_file: int, k: int = 7, seed: int = 0) -> list[Path]:
    """``n`` kernels in .npy files of ``per_file`` (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = pattern_pool(k, seed)
    files = []
    for i in range(math.ceil(n / per_file)):
        rows = min(per_file, n - i * per_file)
        path = folder / f"synthetic_{k}x{k}_{i:05d}_{rows}.npy"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, synthetic_kernels(rows, pool, np.random.default_rng([seed, i])))
            os.replace(tmp, path)
        files.append(path)
    return files


# --------------------------------------------------------------------------- measuring
def template_columns(k: int) -> int:
    from kernelatlas.atlas.templates import build_bank

    return int(build_bank(k, k).weights.shape[1])


def floor_seconds(n: int, t_cols: int, batch: int = 8192, k: int = 7) -> tuple[float, float]:
    """Wall and CPU seconds of the bare float32 [batch, k*k] @ [k*k, T] + row max over
    ``n`` rows (torch's threads)."""
    rng = np.random.default_rng(1)
    buf = torch.from_numpy(rng.standard_normal((min(n, 1_000_000), k * k), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((k * k, t_cols), dtype=np.float32))
    t, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < n:
        for s in range(0, min(len(buf), n - done), batch):
            (buf[s : s + batch] @ w).max(dim=1)
        done += min(len(buf), n - done)
    return time.perf_counter() - t, time.process_time() - cpu


_START = (
    "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot, numpy, pandas, "
    "pyarrow.parquet, torch"
)


def unavoidable(files: list[Path], t_cols: int) -> dict[str, Any]:
    """A lower bound of any files-to-report analysis that keeps kernelatlas's rules, by
    piece: a fresh interpreter importing what a report needs (numpy, pandas, Arrow, torch,
    matplotlib; median of 3), reading and hashing every input (the bank is keyed by
    content), copying the kernels into a bank (one uncompressed binary column, as a bank
    file stores them), and the floor product; the reading, hashing and copying on every
    core (threads: these release the GIL). ``serial_s`` adds the pieces; ``overlapped_s`` is the start plus
    the CPU seconds of the rest spread perfectly over the cores."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from kernelatlas.bank import stored_weights

    starts = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _START], check=True)
        starts.append(time.perf_counter() - t)
    cores = len(os.sched_getaffinity(0))

    def read_hash(f: Path) -> np.ndarray:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        return np.load(f)

    def copy(i_arr: tuple[int, np.ndarray]) -> None:
        i, arr = i_arr
        flat = pa.array(arr.reshape(-1))
        offsets = pa.array(np.arange(0, len(flat) + 1, arr[0].size, dtype=np.int32))
        col = stored_weights(pa.ListArray.from_arrays(offsets, flat))  # as a bank stores it
        out = files[0].parent.parent / f"unavoidable-{i}.parquet"
        pq.write_table(pa.table({"weights": col}), out, compression="none",
                       row_group_size=PARTITION)  # fmt: skip
        out.unlink()

    with ThreadPoolExecutor(cores) as pool:
        t, cpu = time.perf_counter(), time.process_time()
        arrays = list(pool.map(read_hash, files))
        read_s, read_cpu = time.perf_counter() - t, time.process_time() - cpu
        t, cpu = time.perf_counter(), time.process_time()
        list(pool.map(copy, enumerate(arrays)))
        copy_s, copy_cpu = time.perf_counter() - t, time.process_time() - cpu
    del arrays
    n = sum(int(f.stem.rsplit("_", 1)[1]) for f in files)
    floor, floor_cpu = floor_seconds(n, t_cols)
    start = float(np.median(starts))
    serial = start + read_s + copy_s + floor
    overlapped = start + (read_cpu + copy_cpu + floor_cpu) / cores
    return {
        "kernels": n,
        "start_s": round(start, 2),
        "read_and_hash_s": round(read_s, 2),
        "bank_copy_s": round(copy_s, 2),
        "floor_s": round(floor, 2),
        "serial_s": round(serial, 2),
        "overlapped_s": round(overlapped, 2),
        "serial_x_floor": round(serial / floor, 2),
        "overlapped_x_floor": round(overlapped / floor, 2),
    }


class PeakRSS:
    """Samples the RSS and CPU seconds of a process tree every 20 ms in a thread.

    ``cpu`` adds each process's last CPU seconds seen: Dask's workers are forked by a fork
    server that outlives the driver, so their CPU never reaches this process's
    ``RUSAGE_CHILDREN``."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.root = self.children = self.total = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu(self) -> float:
        return sum(self._cpu.values())

    def _sample(self, p: psutil.Process) -> int:
        with p.oneshot():
            t = p.cpu_times()
            self._cpu[p.pid] = t.user + t.system
            return p.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                d = self._sample(self.proc)
                kids = []
                for c in self.proc.children(recursive=True):
                    try:
                        kids.append(self._sample(c))
                    except psutil.Error:
                        pass
            except psutil.Error:
                kids, d = [], 0
            self.root = max(self.root, d)
            self.children = max([self.children, *kids])
            self.total = max(self.total, d + sum(kids))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_analysis(
    files: list[Path], out: Path, *, engine: str, workers: int, env: dict[str, str], t_cols: int
) -> dict[str, Any]:
    """One ``analyze`` in a fresh process, between two floor measurements."""
    n = sum(int(f.stem.rsplit("_", 1)[1]) for f in files)
    shutil.rmtree(out, ignore_errors=True)
    floor_before = floor_seconds(n, t_cols)
    load = [round(x, 2) for x in os.getloadavg()]
    cpu0 = _children_cpu()
    arg = json.dumps([[str(f) for f in files], str(out), engine, workers])
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, arg], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    with PeakRSS(proc.pid) as rss:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    # what this process reaped, or the sampled tree where more (the Dask workers)
    cpu = max(_children_cpu() - cpu0, rss.cpu)
    if proc.returncode:
        raise RuntimeError(f"analyze failed ({proc.returncode}): {stderr[-3000:]}")
    child = json.loads(stdout.strip().splitlines()[-1])
    floor_after = floor_seconds(n, t_cols)
    floor = (floor_before[0] + floor_after[0]) / 2
    floor_cpu = (floor_before[1] + floor_after[1]) / 2
    cores = len(os.sched_getaffinity(0))
    timings = child.pop("timings")
    row = {
        "kernels": child["kernels"],
        "engine": engine,
        "workers": workers if engine == "dask" else None,
        "load_average": load,
        "floor_s": round(floor, 2),
        "floor_before_after_s": [round(floor_before[0], 2), round(floor_after[0], 2)],
        "wall_s": round(wall, 2),
        "ratio_to_floor": round(wall / floor, 2),
        "floor_cpu_s": round(floor_cpu, 2),
        "cpu_ratio_to_floor": round(cpu / floor_cpu, 2),
        "kernels_per_s": round(child["kernels"] / wall),
        "cpu_s": round(cpu, 1),
        "cpu_share": round(cpu / (wall * cores), 3),
        "classified_share": round(child["classified_share"], 4),
        "peak_rss_mib": {
            "driver": round(rss.root / 2**20, 1),
            "largest_worker": round(rss.children / 2**20, 1),
            "tree": round(rss.total / 2**20, 1),
            "driver_maxrss": round(child["driver_maxrss_mib"], 1),
        },
        "driver_cpu_s": round(child["driver_cpu_s"], 2),
        "timings": timings,
    }
    return row


def dask_pairs(
    files: list[Path],
    work: Path,
    first: float,
    pairs: int,
    workers: int,
    env: dict[str, str],
    t_cols: int,
) -> dict[str, Any]:
    """Dask's wall time over the local engine's, pair by pair: ``first`` (the main runs'
    ratio), then ``pairs`` more, each a Dask run right after a local one (the order
    alternating, so a drift in the machine's load falls on both engines alike); the
    verdict is the median ratio."""
    ratios, walls = [round(first, 3)], []
    for i in range(pairs):
        order = ("dask", "local") if i % 2 == 0 else ("local", "dask")
        wall = {}
        for engine in order:
            out = work / f"out-pair-{engine}"
            row = run_analysis(files, out, engine=engine, workers=workers, env=env, t_cols=t_cols)
            wall[engine] = row["wall_s"]
            shutil.rmtree(out, ignore_errors=True)
        walls.append(wall)
        ratios.append(round(wall["dask"] / wall["local"], 3))
        print("pair", i + 1, wall, flush=True)
    median = float(np.median(ratios))
    return {
        "ratios_dask_over_local": ratios,
        "pair_walls_s": walls,
        "median": round(median, 3),
        "dask_no_slower": bool(median <= 1.0),
    }


def same_rows(a: Path, b: Path) -> dict[str, Any]:
    """kernels.parquet of two analyses: the same part files, equal column for column."""
    pa_, pb = sorted(a.iterdir()), sorted(b.iterdir())
    names = [p.name for p in pa_] == [p.name for p in pb]
    rows = 0
    equal = names
    for x, y in zip(pa_, pb, strict=False):
        ta, tb = pq.read_table(x), pq.read_table(y)
        rows += ta.num_rows
        equal = equal and ta.column_names == tb.column_names
        equal = equal and all(ta.column(c).equals(tb.column(c)) for c in ta.column_names)
    return {"identical": bool(equal), "rows": rows, "parts": len(pa_)}


def partition_costs(k: int, work: Path) -> dict[str, Any]:
    """Single-thread seconds to analyse one 65,536-kernel partition of k x k kernels, by
    stage (``run_partition``'s), and the atlas's bare product apart from the rest of
    ``Atlas.predict``; the partition's bank bytes and part bytes."""
    from kernelatlas.bank import KernelBank
    from kernelatlas.calibration import calibrate
    from kernelatlas.harvest import HarvestResult, LayerKernels
    from kernelatlas.normalize import normalize
    from kernelatlas.partitions import PartitionJob, SizeModels, bank_partitions, run_partition

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = work / f"costs-{k}x{k}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "parts").mkdir(parents=True)
    try:
        w = synthetic_kernels(PARTITION, pattern_pool(k, 5), np.random.default_rng(5))
        bank = KernelBank(folder / "bank")
        layers = [LayerKernels(f"l{j}.dw", j, c, 1, 1) for j, c in enumerate(np.array_split(w, 50))]
        t = time.perf_counter()
        bank.add(HarvestResult(f"synthetic{k}", f"synthetic{k}", "numpy", layers))
        t_bank = time.perf_counter() - t
        atlas = calibrate(k, k, null_fpr=0.01, n_null=20_000).atlas
        from kernelatlas.report.diagram import diagram_columns

        panels = tuple(tuple(c) for c in diagram_columns())  # as an analysis with figures
        from kernelatlas.pipeline import AnalysisConfig

        cfg = AnalysisConfig(fit=False, init_baseline=False)  # what the analyses run
        job = PartitionJob(
            {(k, k): SizeModels(atlas)}, parts_dir=str(folder / "parts"), panels=panels,
            references=cfg.baseline_kinds(), reference_sample=2 * cfg.n_null,
        )  # fmt: skip
        [part] = bank_partitions(bank)
        run_partition(part, job)  # warm up
        best: dict[str, float] | None = None
        for _ in range(3):
            t = time.perf_counter()
            res = run_partition(part, job)
            wall = time.perf_counter() - t
            if best is None or wall < best["wall"]:
                best = {"wall": wall, **res.seconds}
        x = torch.from_numpy(normalize(w).unit.reshape(len(w), -1))
        product = []
        for _ in range(3):
            t = time.perf_counter()
            for s in range(0, len(x), 8192):
                (x[s : s + 8192] @ atlas._weights).max(dim=1)
            product.append(time.perf_counter() - t)
        assert best is not None and res.tmp_path is not None
        return {
            "rows": PARTITION,
            "template_columns": int(atlas._weights.shape[1]),
            "partition_s": round(best["wall"], 4),
            "partition_cpu_s": round(best["cpu"], 4),
            "stages_s": {s: round(best[s], 4) for s in best if s not in ("wall", "cpu")},
            "bare_product_s": round(min(product), 4),
            "predict_beyond_product_s": round(best["classify"] - min(product), 4),
            "bank_write_s": round(t_bank, 4),
            "bank_bytes": int(sum(f.stat().st_size for f in bank.files())),
            "part_bytes": int(Path(res.tmp_path).stat().st_size),
        }
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(folder, ignore_errors=True)


def task_costs(workers: int, work: Path, n_parts: int = 240, rows: int = 64) -> dict[str, Any]:
    """Marginal cost of one Dask task on the driver (with the scheduler, which a
    LocalCluster runs in the driver's process) and on a worker beyond the partition's own
    CPU, from runs of tiny 3x3 partitions with 1 and 4 partitions per task after a warm-up;
    and the driver's merge+rename cost per part."""
    from kernelatlas.bank import KernelBank
    from kernelatlas.calibration import calibrate
    from kernelatlas.engine.dask import DaskEngine
    from kernelatlas.harvest import HarvestResult, LayerKernels
    from kernelatlas.partitions import PartitionJob, PartsMerger, SizeModels, bank_partitions

    folder = work / "task-costs"
    shutil.rmtree(folder, ignore_errors=True)
    w = synthetic_kernels(n_parts * rows, pattern_pool(3, 6), np.random.default_rng(6))
    bank = KernelBank(folder / "bank", row_group_size=rows)
    bank.add(HarvestResult("tiny3", "tiny3", "numpy", [LayerKernels("l.dw", 0, w, 1, 1)]))
    parts = bank_partitions(bank)
    atlas = calibrate(3, 3, null_fpr=0.01, n_null=20_000).atlas
    out: dict[str, Any] = {"partition_rows": rows}
    with DaskEngine(n_workers=workers) as engine:
        c = engine._client()
        pids = list(c.run(os.getpid).values())

        def run(ps: list[Any], per: int, tag: str) -> dict[str, float]:
            d = folder / tag
            d.mkdir(parents=True)
            job = PartitionJob({(3, 3): SizeModels(atlas)}, parts_dir=str(d))
            engine.partitions_per_task = per
            merger = PartsMerger(d)
            wcpu = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
            t0, cpu0, merge = time.perf_counter(), time.process_time(), 0.0
            part_cpu = 0.0
            for res in engine.map_partitions([(p, job) for p in ps]):
                m = time.perf_counter()
                merger.add(res)
                merge += time.perf_counter() - m
                part_cpu += res.seconds["cpu"]
            m = time.perf_counter()
            merger.finish()
            merge += time.perf_counter() - m
            cpu = time.process_time() - cpu0
            wcpu = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids) - wcpu
            return {"tasks": engine.tasks, "parts": len(ps), "wall": time.perf_counter() - t0,
                    "driver_cpu": cpu, "worker_cpu": wcpu, "partition_cpu": part_cpu,
                    "merge": merge}  # fmt: skip

        run(parts[:24], 1, "warm")
        one = run(parts, 1, "one")
        four = run(parts, 4, "four")
    shutil.rmtree(folder, ignore_errors=True)
    # driver CPU = tasks * d_task + parts * d_part (two runs, two unknowns)
    d_task = max(0.0, (one["driver_cpu"] - four["driver_cpu"]) / (one["tasks"] - four["tasks"]))
    d_part = max(0.0, (four["driver_cpu"] - four["tasks"] * d_task) / four["parts"])
    o_task = max(0.0, (one["worker_cpu"] - one["partition_cpu"]) / one["tasks"])
    out.update(
        {
            "one_per_task": {k: round(v, 4) for k, v in one.items()},
            "four_per_task": {k: round(v, 4) for k, v in four.items()},
            "driver_cpu_per_task_s": round(d_task, 6),
            "driver_cpu_per_partition_s": round(d_part, 6),
            "worker_overhead_per_task_s": round(o_task, 6),
            "driver_merge_per_part_s": round(one["merge"] / one["parts"], 6),
        }
    )
    return out


def projection(c3: dict[str, Any], tc: dict[str, Any] | None) -> dict[str, Any]:
    """Hours for a 1.4B-kernel 3x3 bank on N single-threaded Dask workers.

    Workers: P partitions x (single-thread CPU of one 3x3 partition) + tasks x the worker's
    marginal overhead per task, over N, plus a tail of one task. Driver (with the
    scheduler): tasks x its marginal CPU per task + P x (its CPU per partition in a task,
    and its merge+rename per part). Tasks: the engine's grouping (``TASKS_PER_THREAD``
    tasks per worker thread).
    """
    from kernelatlas.engine.dask import TASKS_PER_THREAD

    p = math.ceil(CNN_FILTER_DB / c3["rows"])
    c = c3["partition_cpu_s"]
    d = o = dp = e = 0.0
    if tc is not None:
        d, dp = tc["driver_cpu_per_task_s"], tc["driver_cpu_per_partition_s"]
        o, e = tc["worker_overhead_per_task_s"], tc["driver_merge_per_part_s"]
    rows = []
    crossing = None
    for n in (1, 2, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        g = max(1, math.ceil(p / (TASKS_PER_THREAD * n)))
        t = math.ceil(p / g)
        workers = (p * c + t * o) / n + (g * c if n > 1 else 0.0)  # + the last task
        driver = t * d + p * (dp + e)
        bound = "workers" if workers >= driver else "driver"
        if bound == "driver" and crossing is None:
            crossing = n
        rows.append({"workers": n, "partitions_per_task": g, "tasks": t,
                     "workers_h": round(workers / 3600, 4), "driver_h": round(driver / 3600, 4),
                     "hours": round(max(workers, driver) / 3600, 4), "bound": bound})  # fmt: skip
    moved = p * (c3["bank_bytes"] + c3["part_bytes"])
    return {
        "kernels": CNN_FILTER_DB,
        "kernel_size": "3x3",
        "partitions": p,
        "partition_cpu_s": c,
        "tasks_per_worker_thread": TASKS_PER_THREAD,
        "first_driver_bound_workers": crossing,
        "bytes_read_and_written": moved,
        "storage_hours_at_1_GBps": round(moved / 1e9 / 3600, 3),
        "assumes": "one dedicated core per worker; CPU seconds measured here; the bank and "
        "the parts on shared storage that is not the bottleneck (bytes_read_and_written is "
        "what it must move)",
        "by_workers": rows,
    }


def stage_table(runs: dict[str, dict[str, Any]]) -> str:
    """A markdown table of the stage seconds of every run."""
    names: list[str] = []
    for r in runs.values():
        names += [s for s in r["timings"].get("stages_s", {}) if s not in names]
    names = [
        s
        for s in names
        if any(r["timings"].get("stages_s", {}).get(s, 0) >= 0.05 for r in runs.values())
    ]
    head = ["run", "wall s", "x floor", "CPU s / floor CPU s", "CPU share", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in runs.items():
        st = r["timings"].get("stages_s", {})
        if not st:
            st = dict.fromkeys(names, float("nan"))
        cells = [name, f"{r['wall_s']:.1f}", f"{r['ratio_to_floor']:.2f}",
                 f"{r['cpu_ratio_to_floor']:.2f}", f"{r['cpu_share']:.2f}"]  # fmt: skip
        cells += [f"{st.get(s, 0.0):.1f}" for s in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="7x7 kernels of the large run")
    ap.add_argument("--small", type=int, default=2_000_000, help="kernels of the small runs")
    ap.add_argument("--per-file", type=int, default=500_000, help="kernels per .npy file")
    ap.add_argument("--workers", type=int, default=2, help="Dask LocalCluster workers")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/kernelatlas-scale"))
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--pairs", type=int, default=2,
                    help="more alternating Dask/local runs of --n after the first pair (the "
                         "parity verdict is the median of every pair's ratio)")  # fmt: skip
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="another source tree (its src/) for an old/new ratio on --small")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the inputs and outputs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "scale.json")
    args = ap.parse_args(argv)
    if args.small > args.n or args.small % args.per_file or args.n % args.per_file:
        ap.error("--small <= --n, both multiples of --per-file")

    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {
        "kernelatlas_version": kernelatlas.__version__,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{platform.machine()} {cores} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "config": "kernelatlas analyze FILES --no-fit --no-init-baseline (figures on), a fresh "
        "process per run; Dask: a LocalCluster of single-threaded workers",
        "note": "shared machine: each wall time is compared with the floor measured right "
        "before and after it (x floor); see the load averages",
    }
    t = time.perf_counter()
    files = write_inputs(args.work_dir / "inputs", args.n, args.per_file)
    small = files[: args.small // args.per_file]
    result["inputs"] = {"files": len(files), "per_file": args.per_file,
                        "bytes": sum(f.stat().st_size for f in files),
                        "write_s": round(time.perf_counter() - t, 1)}  # fmt: skip
    print("inputs", result["inputs"], flush=True)
    t_cols = template_columns(7)
    result["floor"] = f"float32 [8192, 49] @ [49, {t_cols}] + row max, {cores} threads"

    cal = args.work_dir / "calibrations"
    shutil.rmtree(cal, ignore_errors=True)
    env = {**os.environ, "KERNELATLAS_CALIBRATIONS": str(cal),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    work = args.work_dir

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.out)

    def record(name: str, row: dict[str, Any]) -> None:
        runs[name] = row
        result["runs"] = runs
        save()
        keys = ("wall_s", "floor_s", "ratio_to_floor", "cpu_ratio_to_floor", "cpu_share")
        print(name, {k: row[k] for k in keys},
              row["timings"].get("calibration"), flush=True)  # fmt: skip

    s = f"{args.small / 1e6:g}M"
    big = f"{args.n / 1e6:g}M"
    result["unavoidable"] = {s: unavoidable(small, t_cols), big: unavoidable(files, t_cols)}
    print("unavoidable", json.dumps(result["unavoidable"]), flush=True)
    save()
    record(f"{s} local (first: calibrates)",
           run_analysis(small, work / "out-small", engine="local", workers=1, env=env, t_cols=t_cols))  # fmt: skip
    record(f"{s} local (second: calibration cached)",
           run_analysis(small, work / "out-small", engine="local", workers=1, env=env, t_cols=t_cols))  # fmt: skip
    if args.baseline_src is not None:
        old_env = {**env, "PYTHONPATH": str(args.baseline_src / "src")}
        record(f"{s} local, baseline {args.baseline_src}",
               run_analysis(small, work / "out-baseline", engine="local", workers=1, env=old_env,
                            t_cols=t_cols))  # fmt: skip
        shutil.rmtree(work / "out-baseline", ignore_errors=True)
    shutil.rmtree(work / "out-small", ignore_errors=True)
    record(f"{big} local", run_analysis(files, work / "out-local", engine="local", workers=1,
                                        env=env, t_cols=t_cols))  # fmt: skip
    if not args.skip_dask:
        row = run_analysis(files, work / "out-dask", engine="dask", workers=args.workers, env=env,
                           t_cols=t_cols)  # fmt: skip
        row["same_as_local"] = same_rows(
            work / "out-local" / "kernels.parquet", work / "out-dask" / "kernels.parquet"
        )
        local = runs[f"{big} local"]
        row["speedup_vs_local"] = round(local["wall_s"] / row["wall_s"], 3)
        row["ratio_vs_local_x_floor"] = round(row["ratio_to_floor"] / local["ratio_to_floor"], 3)
        record(f"{big} dask, {args.workers} workers", row)
        shutil.rmtree(work / "out-dask", ignore_errors=True)
        result["dask_vs_local_pairs"] = dask_pairs(
            files, work, row["wall_s"] / local["wall_s"], args.pairs, args.workers, env, t_cols
        )
        print("pairs", json.dumps(result["dask_vs_local_pairs"]), flush=True)
        save()
    shutil.rmtree(work / "out-local", ignore_errors=True)
    result["runs"] = runs
    result["stage_table"] = stage_table(runs)
    print(result["stage_table"], flush=True)

    costs = {f"{k}x{k}": partition_costs(k, work) for k in (3, 7)}
    result["partition_costs_1_thread"] = costs
    print("costs", json.dumps(costs), flush=True)
    tc = None if args.skip_dask else task_costs(args.workers, work)
    result["dask_task_costs"] = tc
    print("task costs", json.dumps(tc), flush=True)
    result["projection_cnn_filter_db"] = projection(costs["3x3"], tc)
    print("projection", json.dumps(result["projection_cnn_filter_db"]), flush=True)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save()
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
