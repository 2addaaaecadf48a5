"""Benchmark: classify 1M 7x7 kernels with the calibrated Atlas, and fit 100k 7x7 kernels.

Prints the times and the ratio to the floor (a bare float32 1M x 49 @ 49 x 1024 product
followed by a row max, streamed in the same batches), and writes them with the command to
``docs/benchmarks/classify.json`` (written to a temp file, then renamed).

    .venv/bin/python benchmarks/classify.py            # classify 1M + fit 100k
    .venv/bin/python benchmarks/classify.py --n-fit 0  # classify only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import kernelatlas
from kernelatlas.atlas import Atlas

ROOT = Path(__file__).resolve().parents[1]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="kernels to classify")
    ap.add_argument("--n-fit", type=int, default=100_000, help="kernels to fit (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "classify.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 7, 7), dtype=np.float32)
    atlas = Atlas(kernel_size=7).fit()
    bs = atlas.batch_size

    xt = torch.from_numpy(x.reshape(args.n, 49))
    w = torch.randn(49, 1024)

    def floor() -> None:
        for s in range(0, args.n, bs):
            (xt[s : s + bs] @ w).max(dim=1)

    t_floor = _best_of(floor, args.repeats)
    t_classify = _best_of(lambda: atlas.predict(x), args.repeats)
    df = atlas.predict(x)
    result = {
        "kernelatlas_version": kernelatlas.__version__,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "n_classify": args.n,
        "bank_columns": int(atlas._weights.shape[1]),
        "classify_s": round(t_classify, 3),
        "floor_1024_s": round(t_floor, 3),
        "ratio_to_floor": round(t_classify / t_floor, 2),
        "kernels_per_s": round(args.n / t_classify),
        "null_rate_on_gaussian_input": round(float(df["classified"].mean()), 5),
        "target_classify_s": 3.0,
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "note": "best of --repeats runs; the machine is shared (load average above), so "
        "absolute times are noisy; the ratio to the floor, measured in the same run, less so",
    }
    print(
        f"classify {args.n} 7x7: {t_classify:.2f} s  (floor 1M x 49 @ 49 x 1024 + max: "
        f"{t_floor:.2f} s, ratio {t_classify / t_floor:.2f})"
    )
    if args.n_fit:
        from kernelatlas.fit import fit_kernels

        xf = x[: args.n_fit]
        t = time.perf_counter()
        fit_kernels(xf, device="cpu")
        t_fit = time.perf_counter() - t
        result.update(n_fit=args.n_fit, fit_s=round(t_fit, 2), target_fit_s=60.0)
        print(f"fit {args.n_fit} 7x7 on CPU: {t_fit:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
