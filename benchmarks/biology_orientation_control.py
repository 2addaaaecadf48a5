"""Does the comparison's orientation pipeline make a cardinal bias of its own? A control.

The biology null (iid Gaussian kernels) holds no oriented patterns, so it cannot show a bias
of the orientation *estimate* on a pixel grid. This control draws first and second
Gaussian derivatives at uniformly random orientations (the atlas's own generators, sigma as
the ``dog`` initialiser draws it, iid noise of ``--noise`` times the pattern's norm), names
and fits them exactly as :func:`kernelatlas.biology.compare` does, and reports per kernel
size and family the cardinal-bias index of the classified oriented kernels (what the
comparison would report) beside the true index of the same kernels' drawn orientations.
A uniform population should give 0 for both; the difference is the pipeline's own bias.

Writes docs/benchmarks/biology_orientation_control.json.

    .venv/bin/python benchmarks/biology_orientation_control.py [--n 3000] [--noise 0.3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kernelatlas import __version__
from kernelatlas.atlas.registry import get_family
from kernelatlas.biology import kernel_statistics, label_kernels
from kernelatlas.biology.statistics import ORIENTED, cardinal_sign

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000, help="kernels per size and family")
    ap.add_argument("--noise", type=float, default=0.3, help="noise norm / pattern norm")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    for k in (3, 5, 7):
        for family in ORIENTED:
            theta = rng.uniform(0.0, 360.0, args.n)
            sigma = np.maximum(0.5, rng.uniform(0.6, 1.2, args.n) * np.sqrt(k / 7))
            x = get_family(family).generate(k, k, args.n, rng=rng, scale=sigma, orientation=theta)
            x = x / np.linalg.norm(x.reshape(args.n, -1), axis=1)[:, None, None]
            x = x + rng.standard_normal(x.shape) * args.noise / k  # noise norm ~ args.noise
            truth = cardinal_sign(theta) > 0
            # the drawn orientation's class rides in the model name, so the classified
            # kernels' true index can be read after the comparison's own selection
            parts = [
                label_kernels(x[m].astype(np.float32), source="control", model=name)
                for name, m in (("cardinal", truth), ("oblique", ~truth))
            ]
            stats = kernel_statistics(pd.concat(parts, ignore_index=True), max_kernels=None)
            o = stats[stats["family"].isin(ORIENTED)]
            measured = float(np.nanmean(cardinal_sign(o["orientation"].to_numpy())))
            true = float(np.where(o["model"].to_numpy() == "cardinal", 1.0, -1.0).mean())
            rows.append(
                {
                    "size": f"{k}x{k}",
                    "family": family,
                    "drawn": args.n,
                    "classified_oriented": int(len(o)),
                    "index_measured": round(measured, 3),
                    "index_true_same_kernels": round(true, 3),
                    "index_true_all_drawn": round(float(cardinal_sign(theta).mean()), 3),
                    "pipeline_bias": round(measured - true, 3),
                }
            )
            print(rows[-1], flush=True)
    out = ROOT / "docs" / "benchmarks" / "biology_orientation_control.json"
    out.write_text(
        json.dumps(
            {
                "kernelatlas_version": __version__,
                "n": args.n,
                "noise": args.noise,
                "seed": args.seed,
                "seconds": round(time.perf_counter() - t0, 1),
                "rows": rows,
            },
            indent=1,
        )  # fmt: skip
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
