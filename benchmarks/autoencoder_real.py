"""The paper's autoencoder on every shipped real model: coverage, null, agreement with the atlas.

One autoencoder per kernel size is trained on the pooled kernels of all shipped models
(the paper trained one per size); then, per model and size:

- ``coverage``: fraction of its (non-degenerate) kernels classified by the autoencoder,
  with the paper's threshold (5x5: 0.2) or, for 3x3, the null-calibrated one;
- ``null_gaussian``: the same autoencoder's coverage of iid Gaussian kernels;
- ``null_init``: its coverage of freshly initialised kernels of a real architecture
  (``timm:efficientnet_lite0@init``, the same architecture as efficientnet_lite0..2);
- ``agreement``: among kernels that at least one method classifies, the fraction whose
  autoencoder family (``ae_family``) equals the atlas classifier's family;
  ``agreement_both``: the same among kernels both classify.

Usage::

    .venv/bin/python benchmarks/autoencoder_real.py [--epochs 20] [--device cpu]

writes docs/benchmarks/autoencoder_real.json, docs/figures/autoencoder_spectrum_KxK.png
and prints Markdown tables. It trains a fresh pooled autoencoder with any recipe (for
experiments); the figures in docs/autoencoder.md now come from the shipped reference
autoencoders, ``benchmarks/autoencoder_reference.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2",
    "pp_lcnet_orientation",
    "mediapipe/*",
)
INIT_NULL = "timm:efficientnet_lite0@init"


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _spectrum_figure(ae, path: Path, n: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = ae.segments_
    z = np.linspace(0.0, 1.0, n)
    pats = ae.inverse_transform(z)
    labels = seg["label"].to_numpy()[
        np.clip(np.searchsorted(seg["z_end"], z, "right"), 0, len(seg) - 1)
    ]
    fig, axes = plt.subplots(1, n, figsize=(n * 0.9, 1.6))
    for ax, p, zz, lab in zip(axes, pats, z, labels, strict=True):
        v = np.abs(p).max()
        ax.imshow(p, cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_title(f"{zz:.2f}\n{lab.replace('_derivative', ' d.')}", fontsize=6)
        ax.axis("off")
    kh, kw = pats.shape[1:]
    fig.suptitle(f"decoded {kh}x{kw} spectrum (z, atlas name)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernelatlas import __version__
    from kernelatlas.atlas import Atlas
    from kernelatlas.autoencoder import KernelAutoencoder, agreement
    from kernelatlas.harvest import harvest, list_sources
    from kernelatlas.null import DEFAULT_NULL_SIZE, gaussian_null

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show training progress bars")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "autoencoder_real.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    names = [n for m in MODELS for n in (list_sources(m) if "*" in m else [m])]
    per_model: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for name in names:
        res = harvest(name)
        by_size: dict[tuple[int, int], list[np.ndarray]] = {}
        for layer in res.layers:
            by_size.setdefault(tuple(layer.weights.shape[1:]), []).append(layer.weights)
        per_model[name] = {s: np.concatenate(v).astype(np.float32) for s, v in by_size.items()}
    init = harvest(INIT_NULL)
    init_by_size: dict[tuple[int, int], np.ndarray] = {}
    for layer in init.layers:
        s = tuple(layer.weights.shape[1:])
        init_by_size[s] = np.concatenate([init_by_size.get(s, np.zeros((0, *s))), layer.weights])

    sizes = sorted({s for d in per_model.values() for s in d if s[0] * s[1] > 1})
    report: dict[str, object] = {
        "kernelatlas_version": __version__,
        "command": "python benchmarks/autoencoder_real.py " + " ".join(argv or sys.argv[1:]),
        "device": args.device,
        "host": platform.node(),
        "init_null": INIT_NULL,
        "sizes": {},
        "models": [],
    }
    for size in sizes:
        pooled = np.concatenate([d[size] for d in per_model.values() if size in d])
        t0 = time.perf_counter()
        ae = KernelAutoencoder(
            size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            progress=args.progress,
        ).fit(pooled)
        train_s = time.perf_counter() - t0
        atlas = Atlas(kernel_size=size).fit()
        gnull = gaussian_null(DEFAULT_NULL_SIZE, *size, seed=args.seed + 7)
        null_g = ae.null_coverage(gnull)
        null_i = ae.null_coverage(init_by_size[size]) if size in init_by_size else float("nan")
        atlas_null = atlas.coverage(gnull)
        key = f"{size[0]}x{size[1]}"
        seg = ae.segments_
        report["sizes"][key] = {
            "n_train": ae.n_train_,
            "train_seconds": round(train_s, 1),
            "final_loss": ae.loss_history_[-1],
            "threshold": ae.threshold_,
            "threshold_rule": ae.threshold_rule_,
            "null_gaussian": null_g,
            "null_init": null_i,
            "atlas_null_gaussian": atlas_null,
            "segments": seg[["label", "z_start", "z_end", "mass"]].to_dict("records"),
        }
        _spectrum_figure(ae, ROOT / "docs" / "figures" / f"autoencoder_spectrum_{key}.png")
        for name, d in per_model.items():
            if size not in d:
                continue
            pred = ae.predict(d[size])
            at = atlas.predict(d[size])
            ok = pred["ae_family"].to_numpy() != "degenerate"
            agr = agreement(pred, at)
            report["models"].append(
                {
                    "model": name,
                    "size": key,
                    "kernels": int(d[size].shape[0]),
                    "degenerate": int((~ok).sum()),
                    "coverage": float(pred["ae_classified"].to_numpy()[ok].mean()),
                    "null_gaussian": null_g,
                    "null_init": null_i,
                    "atlas_coverage": float(at["classified"].to_numpy()[ok].mean()),
                    "agreement": agr["agreement"],
                    "agreement_both": agr["agreement_both_classified"],
                }
            )
    _write_json(Path(args.out), report)

    print(f"device {args.device}, torch {torch.__version__}, epochs {args.epochs}\n")
    print(
        "| size | trained on | threshold | rule | AE null (Gaussian) | AE null (init) | segments (mass > 1%) |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, s in report["sizes"].items():
        segs = ", ".join(f"{r['label']} {r['mass']:.0%}" for r in s["segments"] if r["mass"] > 0.01)
        print(
            f"| {key} | {s['n_train']:,} | {s['threshold']:.3f} | {s['threshold_rule']} | "
            f"{s['null_gaussian']:.2%} | {s['null_init']:.2%} | {segs} |"
        )
    print(
        "\n| model | size | kernels | AE coverage | AE null (Gaussian / init) | atlas coverage | agreement | agreement (both classified) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in report["models"]:
        print(
            f"| {r['model']} | {r['size']} | {r['kernels']:,} | {r['coverage']:.1%} | "
            f"{r['null_gaussian']:.1%} / {r['null_init']:.1%} | {r['atlas_coverage']:.1%} | "
            f"{r['agreement']:.1%} | {r['agreement_both']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
