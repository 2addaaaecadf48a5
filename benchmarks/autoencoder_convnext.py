"""7x7 kernels: a ConvNeXt-atto-shaped network trained on real Fashion-MNIST, analysed by
the paper's autoencoder at several points of training.

No shipped model has 7x7 depthwise kernels in numbers, so this trains one
(``kernelatlas.train.models.convnext_small_images``: timm ConvNeXt, atto shape, 1x1 stem
for 28 px; data from Debian's ``dataset-fashion-mnist``) and snapshots its 7x7 kernels at
the given steps (step 0 = the fresh initialisation). A 7x7 KernelAutoencoder is trained on
the last snapshot and applied to every snapshot: coverage with the paper's 7x7 threshold
(0.3), the Gaussian null's coverage, the atlas's coverage, the agreement; then
``discover_master_keys`` on the last snapshot, compared with the published eight.

Usage::

    .venv/bin/python benchmarks/autoencoder_convnext.py [--steps 0,100,300,600] [--device cpu]

writes docs/benchmarks/autoencoder_convnext.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _finite(x: object) -> object:
    """The document with NaN/Inf as null (standard JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    return x


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernelatlas import __version__
    from kernelatlas.atlas import Atlas
    from kernelatlas.autoencoder import KernelAutoencoder, agreement, discover_master_keys
    from kernelatlas.harvest import harvest
    from kernelatlas.null import gaussian_null
    from kernelatlas.train.data import load_dataset
    from kernelatlas.train.models import convnext_small_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="0,100,300,600", help="snapshot steps, comma-separated")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--out", default=str(ROOT / "docs" / "benchmarks" / "autoencoder_convnext.json")
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = sorted({int(s) for s in args.steps.split(",")})
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    ds = load_dataset("fashion_mnist", seed=args.seed).to(dev)
    model = convnext_small_images(10, in_chans=1, image_size=28).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    snaps: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    step = 0
    model.train()
    while True:
        if step in steps:
            res = harvest(model)
            snaps[step] = np.concatenate(
                [lay.weights for lay in res.layers if lay.weights.shape[1:] == (7, 7)]
            ).astype(np.float32)
        if step >= steps[-1]:
            break
        idx = torch.randint(len(ds.y_train), (args.batch_size,), generator=gen).to(dev)
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for xb in ds.x_test.split(1000)])
    acc = float((pred == ds.y_test).float().mean())

    last = snaps[steps[-1]]
    ae = KernelAutoencoder(
        7, epochs=args.ae_epochs, batch_size=256, seed=args.seed, device=args.device
    ).fit(last)
    atlas = Atlas(kernel_size=7).fit()
    null = gaussian_null(20_000, 7, seed=args.seed + 7)
    rows = []
    for s in steps:
        k = snaps[s]
        p, a = ae.predict(k), atlas.predict(k)
        agr = agreement(p, a)
        rows.append(
            {
                "step": s,
                "kernels": int(k.shape[0]),
                "ae_coverage": float(p["ae_classified"].mean()),
                "ae_null_gaussian": ae.null_coverage(null),
                "atlas_coverage": float(a["classified"].mean()),
                "agreement": agr["agreement"],
                "agreement_both": agr["agreement_both_classified"],
            }
        )
    mk = discover_master_keys(last, k=8, autoencoder=ae, seed=args.seed, device=args.device)
    doc = {
        "kernelatlas_version": __version__,
        "command": "python benchmarks/autoencoder_convnext.py " + " ".join(argv or sys.argv[1:]),
        "device": args.device,
        "train_seconds": round(train_s, 1),
        "test_accuracy": acc,
        "snapshots": rows,
        "segments": ae.segments_[["label", "z_start", "z_end", "mass"]].to_dict("records"),
        "master_keys_coverage": mk.coverage.to_dict("records"),
        "master_keys_match": mk.match.to_dict("records"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(_finite(doc), f, indent=1, allow_nan=False)
    os.replace(tmp, out)

    print(f"Fashion-MNIST test accuracy after {steps[-1]} steps: {acc:.1%} ({train_s:.0f} s)\n")
    print(
        "| step | 7x7 kernels | AE coverage (< 0.3) | AE null (Gaussian) | atlas coverage | agreement | agreement (both classified) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['kernels']:,} | {r['ae_coverage']:.1%} | {r['ae_null_gaussian']:.1%} | "
            f"{r['atlas_coverage']:.1%} | {r['agreement']:.1%} | {r['agreement_both']:.1%} |"
        )
    segs = ", ".join(f"{r['label']} {r['mass']:.0%}" for r in doc["segments"] if r["mass"] > 0.01)
    print(f"\nsegments (mass > 1%): {segs}\n")
    print("| filters | explained | covered | null explained | null covered |")
    print("|---|---|---|---|---|")
    for r in doc["master_keys_coverage"]:
        print(
            f"| {r['n_filters']} | {r['explained']:.3f} | {r['covered']:.1%} | "
            f"{r['null_explained']:.3f} | {r['null_covered']:.1%} |"
        )
    print("\n| published filter | best discovered | cosine |")
    print("|---|---|---|")
    for r in doc["master_keys_match"]:
        print(f"| {r['published']} | {r['best_filter']} | {r['cosine']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
