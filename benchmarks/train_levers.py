"""The two numbers behind the training levers' defaults, measured on real data.

1. **The atlas basis holds trained kernels** (``kernelatlas.train.structured``): the share
   of each unit kernel's energy inside the span of the default basis (G, Gx, Gy, Gxx, Gxy,
   Gyy at ``basis_sigmas(k)``), for the shipped trained models' depthwise kernels, for the
   eight master-key filters, for the ``dog`` initialiser and for Gaussian noise (whose
   expected share is M / k^2).
2. **The atlas prior's weight** (``kernelatlas.train.prior``): the mean residual fraction of
   the depthwise kernels while the default-initialised small ConvNeXt / MobileNetV2 of
   ``bench-train --cpu`` train on Fashion-MNIST 5k with the prior at several weights
   (warm-up 60 of 100 steps, released over 20). The default is the smallest weight that
   brings the residual below 10% within the warm-up on both.

Writes ``docs/benchmarks/train-levers.json``. About a minute of CPU::

    .venv/bin/python benchmarks/train_levers.py [--out docs/benchmarks/train-levers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kernelatlas import __version__
from kernelatlas.atlas import functional as F
from kernelatlas.harvest import harvest
from kernelatlas.train import LoopConfig, init_depthwise_, train_model
from kernelatlas.train.data import load_dataset
from kernelatlas.train.init import dog_kernels
from kernelatlas.train.models import build_model
from kernelatlas.train.prior import atlas_residual
from kernelatlas.train.structured import atlas_basis, basis_sigmas, orthonormal_basis


def energy_share(kernels: np.ndarray) -> dict[str, float]:
    k = np.asarray(kernels, dtype=np.float64)
    kh, kw = k.shape[1:]
    q = orthonormal_basis(atlas_basis(kh, kw)).numpy()
    x = k.reshape(len(k), -1)
    x = x[np.linalg.norm(x, axis=1) > 1e-12]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    share = ((x @ q) ** 2).sum(1)
    return {
        "n": int(len(x)),
        "basis_size": int(q.shape[1]),
        "mean": float(share.mean()),
        "median": float(np.median(share)),
        "p10": float(np.quantile(share, 0.1)),
    }


def basis_energy() -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for source in (
        "mobilenet_v2",
        "efficientnet_lite0",
        "pp_lcnet_orientation",
        "ppocrv6_det_small",
    ):
        by_size: dict[tuple[int, int], list[np.ndarray]] = {}
        for layer in harvest(source).layers:
            by_size.setdefault(layer.shape, []).append(layer.weights)
        for (kh, kw), ks in sorted(by_size.items()):
            if kh == kw and kh >= 3:
                rows.append(
                    {
                        "kernels": f"{source} (trained)",
                        "size": f"{kh}x{kw}",
                        **energy_share(np.concatenate(ks)),
                    }
                )
    rows.append(
        {
            "kernels": "master keys (published 8)",
            "size": "7x7",
            **energy_share(F.master_key_filters()),
        }
    )
    for k in (3, 5, 7):
        rows.append(
            {
                "kernels": "dog initialiser",
                "size": f"{k}x{k}",
                **energy_share(dog_kernels(2000, k, k, rng=rng)),
            }
        )
        rows.append(
            {
                "kernels": "Gaussian noise",
                "size": f"{k}x{k}",
                **energy_share(rng.standard_normal((5000, k, k))),
            }
        )
    for r in rows:
        k = int(r["size"].split("x")[0])
        r["sigmas"] = list(basis_sigmas(k, k))
        r["noise_expectation"] = r["basis_size"] / k**2
    return rows


def prior_calibration(weights: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)) -> list[dict]:
    data = load_dataset("fashion_mnist", n_train=5000, n_test=500)
    rows = []
    for arch, size, opts in (("convnext", 64, {}), ("mobilenetv2", 28, {"stem_stride": 2})):
        for w in weights:
            model = build_model(arch, 10, image_size=size, width=0.25, depth=0.34, seed=0, **opts)
            if w:
                init_depthwise_(
                    model, "atlas_prior", seed=0, weight=w, warmup_steps=60, release_steps=20
                )
            residual = {}

            def on_step(step, m, residual=residual):
                if step in (0, 10, 30, 60, 100):
                    residual[step] = atlas_residual(m)

            cfg = LoopConfig(
                steps=100,
                batch_size=64,
                lr=3e-3,
                eval_every=20,
                eval_batch_size=500,
                image_size=size,
            )
            res = train_model(model, data, cfg, seed=0, on_step=on_step)
            rows.append(
                {
                    "arch": arch,
                    "weight": w,
                    "residual": residual,
                    "accuracy": [p["accuracy"] for p in res.curve],
                }
            )
            print(arch, w, {k: round(v, 3) for k, v in residual.items()}, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/train-levers.json"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.process_time()
    doc = {
        "kernelatlas_version": __version__,
        "command": shlex.join(["python", *sys.argv]),
        "basis_energy": basis_energy(),
        "prior_calibration": prior_calibration(),
    }
    doc["cpu_seconds"] = time.process_time() - t0
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, args.out)
    for r in doc["basis_energy"]:
        print(
            f"{r['kernels']:32s} {r['size']} M={r['basis_size']:2d}: mean {r['mean']:.3f} "
            f"median {r['median']:.3f} (noise {r['noise_expectation']:.3f})"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
