"""Benchmark: classify 1M 7x7 kernels with the calibrated Atlas, and fit 100k 7x7 kernels.

Prints the times and the ratio to the floor (a bare float32 1M x 49 @ 49 x 1024 product
followed by a row max, streamed in the same batches), and writes them with the command to
``docs/benchmarks/classify.json`` (written to a temp file, then renamed).

Per partition (what the engine runs: ``Atlas.predict(kernels, details=True)`` on 65,536
kernels, torch at one intra-op thread) for 3x3, 5x5 and 7x7: the predict time, the bare
product of the same bank (``[65536, k] @ [k, C]`` at once, and in the Atlas's batches), and
two partitions side by side on two threads (as the local engine runs them).

``--baseline SRC`` times another kernelatlas source tree (e.g. the release before a change,
``git archive <commit> src | tar -x -C /tmp/base``) in the same run: this tree and the
baseline run in alternating child processes, one round after the other, and the figures are
the medians of the per-round ratios, so a busy machine's drift cancels out.

    .venv/bin/python benchmarks/classify.py                          # classify 1M + fit 100k
    .venv/bin/python benchmarks/classify.py --n-fit 0                # classify only
    .venv/bin/python benchmarks/classify.py --baseline /tmp/base/src --rounds 3
    .venv/bin/python benchmarks/classify.py --n 0 --n-fit 0 --baseline /tmp/base/src  # partitions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _partition(kh: int, kw: int, n: int, repeats: int) -> dict:
    """One size: predict(details=True) on n kernels on one thread, the bare product, and two
    partitions on two threads (best of ``repeats`` interleaved rounds, wall seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from kernelatlas.atlas import Atlas

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, kh, kw), dtype=np.float32)
    x2 = rng.standard_normal((n, kh, kw), dtype=np.float32)
    atlas = Atlas(kernel_size=(kh, kw)).fit()
    w, bs = atlas._weights, atlas._rows_per_batch(1)
    u = torch.from_numpy(x.reshape(n, kh * kw))
    with ThreadPoolExecutor(2) as pool:
        fns = {
            "product_s": lambda: u @ w,
            "product_batched_s": lambda: [u[s : s + bs] @ w for s in range(0, n, bs)],
            "predict_s": lambda: atlas.predict(x, details=True),
            "two_threads_s": lambda: list(
                pool.map(lambda k: atlas.predict(k, details=True), (x, x2))
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):  # interleaved: a busy spell slows every figure alike
            for key, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
    row: dict = {k: round(min(v), 4) for k, v in times.items()}
    row.update(
        bank_columns=int(w.shape[1]),
        batch_size=bs,
        predict_to_product=round(row["predict_s"] / row["product_s"], 2),
        predict_to_product_batched=round(row["predict_s"] / row["product_batched_s"], 2),
        two_thread_speedup=round(2 * row["predict_s"] / row["two_threads_s"], 2),
    )
    return row


def measure_partitions(sizes: list[tuple[int, int]], n: int, repeats: int) -> dict:
    """Per size, one partition as the engine runs it (torch at one intra-op thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"{kh}x{kw}": _partition(kh, kw, n, repeats) for kh, kw in sizes}
    finally:
        torch.set_num_threads(threads)


def measure(n: int, n_fit: int, repeats: int, partition_sizes: list[tuple[int, int]]) -> dict:
    """Time the floor, Atlas.predict on n 7x7 kernels and fit_kernels on n_fit of them, and
    one partition per size in ``partition_sizes``."""
    import numpy as np
    import torch

    import kernelatlas
    from kernelatlas.atlas import Atlas

    out = {
        "kernelatlas_version": kernelatlas.__version__,
        "source": str(Path(kernelatlas.__file__).resolve().parents[1]),
    }
    if partition_sizes:
        out["partition"] = measure_partitions(partition_sizes, 65_536, max(repeats, 5))
    if not n:
        return out
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 7, 7), dtype=np.float32)
    atlas = Atlas(kernel_size=7).fit()
    bs = atlas.batch_size
    xt = torch.from_numpy(x.reshape(n, 49))
    w = torch.randn(49, 1024)

    def floor() -> None:
        for s in range(0, n, bs):
            (xt[s : s + bs] @ w).max(dim=1)

    out |= {
        "n_classify": n,
        "bank_columns": int(atlas._weights.shape[1]),
        "floor_1024_s": round(_best_of(floor, repeats), 3),
        "classify_s": round(_best_of(lambda: atlas.predict(x), repeats), 3),
    }
    out["ratio_to_floor"] = round(out["classify_s"] / out["floor_1024_s"], 2)
    out["null_rate_on_gaussian_input"] = round(float(atlas.predict(x)["classified"].mean()), 5)
    if n_fit:
        from kernelatlas.fit import fit_kernels

        fit_kernels(x[:64], device="cpu")  # the default atlas, built once
        t = time.perf_counter()
        fit_kernels(x[:n_fit], device="cpu")
        out.update(n_fit=n_fit, fit_s=round(time.perf_counter() - t, 2))
    return out


def _child(src: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--n-fit", str(args.n_fit),
           "--repeats", str(args.repeats), "--partition-sizes", args.partition_sizes]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(r: dict) -> str:
    parts = []
    if "classify_s" in r:
        parts.append(f"classify {r['n_classify']} 7x7: {r['classify_s']:.2f} s "
                     f"(floor {r['floor_1024_s']:.2f} s, ratio {r['ratio_to_floor']:.2f})")  # fmt: skip
    if "fit_s" in r:
        parts.append(f"fit {r['n_fit']} 7x7: {r['fit_s']:.1f} s")
    for name, p in r.get("partition", {}).items():
        parts.append(f"{name} partition: predict {p['predict_s']:.3f} s = "
                     f"{p['predict_to_product']:.2f}x product, 2 threads x{p['two_thread_speedup']}")  # fmt: skip
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="kernels to classify")
    ap.add_argument("--n-fit", type=int, default=100_000, help="kernels to fit (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="best-of for the classification")
    ap.add_argument("--baseline", metavar="SRC", help="another kernelatlas src/ to compare with")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "classify.json")
    ap.add_argument("--partition-sizes", default="3x3,5x5,7x7",
                    help="sizes timed per 65,536-kernel partition ('' : none)")  # fmt: skip
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.partition_sizes.split(",") if s]
    if args.child:
        print(json.dumps(measure(args.n, args.n_fit, args.repeats, sizes)))
        return 0

    import torch

    load_before = os.getloadavg()[0]
    result: dict = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "target_classify_s": 3.0,
        "target_fit_ratio_to_baseline": 1.5,
    }
    if args.baseline:
        own = str(ROOT / "src")
        rounds = []
        for _ in range(args.rounds):
            a, b = _child(own, args), _child(args.baseline, args)
            rounds.append({"this": a, "baseline": b})
            print("round: " + _summary(a) + "  |  baseline: " + _summary(b))
        keys = (["classify_s", "floor_1024_s"] if args.n else []) + (
            ["fit_s"] if args.n_fit else []
        )
        result.update(
            {
                "baseline": args.baseline,
                "rounds": rounds,
                **{f"{k}_median": statistics.median(r["this"][k] for r in rounds) for k in keys},
                **{
                    f"{k}_ratio_to_baseline_median": round(
                        statistics.median(r["this"][k] / r["baseline"][k] for r in rounds), 3
                    )
                    for k in keys
                },
            }
        )
        if sizes:
            med = statistics.median
            result["partition_median"] = {
                name: {
                    side: {
                        k: round(med(r[side]["partition"][name][k] for r in rounds), 4)
                        for k in rounds[0][side]["partition"][name]
                    }
                    for side in ("this", "baseline")
                }
                | {
                    "predict_ratio_to_baseline": round(
                        med(
                            r["this"]["partition"][name]["predict_s"]
                            / r["baseline"]["partition"][name]["predict_s"]
                            for r in rounds
                        ),
                        3,
                    )
                }
                for name in rounds[0]["this"]["partition"]
            }
        last = rounds[-1]["this"]
    else:
        last = measure(args.n, args.n_fit, args.repeats, sizes)
        result.update(last)
    result.update(
        loadavg_1min_before=round(load_before, 2),
        loadavg_1min_after=round(os.getloadavg()[0], 2),
        note="best of --repeats runs for the classification; the machine may be shared (load "
        "average above), so absolute times are noisy; ratios measured in the same run less so",
    )
    print(_summary(last))
    if args.baseline:
        print({k: v for k, v in result.items() if k.endswith("_ratio_to_baseline_median")})
        for name, row in result.get("partition_median", {}).items():
            print(f"partition {name}: predict/baseline {row['predict_ratio_to_baseline']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
