"""The reference autoencoders: what they name, on synthetic and on every real model.

Sections (each writes into one JSON file, default docs/benchmarks/autoencoder_reference.json):

- ``synthetic``: a mixture of known families with noise (the test's bank, and the atlas's
  continuous generator ``synthetic_kernels``), trained with the projection search (default)
  and with the paper's plain training (``search=False``); per family, the fraction of its
  kernels whose latent segment is named after it.
- ``references``: each shipped reference's segments (figures docs/figures/reference_ae_KxK.png),
  and with ``--plain`` the same recipe without the search on the same pooled bank.
- ``models``: ``kernelatlas analyze`` over every registered source (``--ae reference``):
  per model and size AE coverage at the paper's thresholds (5x5: 0.2, 7x7: 0.3; 3x3
  null-calibrated), its Gaussian null, the atlas's coverage and null, and AE/atlas
  agreement among kernels that at least one method classifies.
- ``company``: EfficientNet-Lite0 alone and beside MobileNetV2, ``--ae train`` vs reference.
- ``holdout`` (``--holdout SOURCE...``, ``--holdout-pooled``): the recipe trained on a random
  half of a source's (or the pooled bank's) kernels, coverage in and out of sample.

Usage::

    .venv/bin/python benchmarks/autoencoder_reference.py [--plain] [--holdout-pooled]
        [--holdout PATH ... --holdout-epochs 500 --holdout-batch 64]
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _segments(ae) -> list[dict]:
    seg = ae.segments_
    return [
        {"label": r.label, "z_start": r.z_start, "z_end": r.z_end, "mass": r.mass}
        for r in seg.itertuples()
    ]


def _family_mass(ae) -> dict[str, float]:
    return {k: float(v) for k, v in ae.segments_.groupby("family")["mass"].sum().items()}


def synthetic(seed: int) -> list[dict]:
    from test_autoencoder import FAST, synthetic_bank

    from kernelatlas.atlas.evaluation import synthetic_kernels
    from kernelatlas.autoencoder import KernelAutoencoder

    rows = []
    banks = []
    for noise in (0.2, 0.5):
        x, lab = synthetic_bank(noise=noise, seed=seed)
        banks.append((f"clusters 7x7, SNR {1 / noise:g}", x, lab))
    x, truth = synthetic_kernels(5, 5, 400, noise=0.2, seed=seed)
    banks.append(("continuous 5x5 (synthetic_kernels), SNR 5", x, truth["family"].to_numpy()))
    for name, x, lab in banks:
        fam_true = np.array([str(s).rstrip("+-") for s in lab])
        for search in (True, False):
            t0 = time.perf_counter()
            ae = KernelAutoencoder(x.shape[1], seed=seed, search=search, **FAST).fit(x)
            seg_fam = ae.segments_["family"].to_numpy()[ae.segment_of(x)]
            rec = {f: float((seg_fam[fam_true == f] == f).mean()) for f in np.unique(fam_true)}
            rows.append(
                {
                    "bank": name,
                    "search": search,
                    "kernels": int(len(x)),
                    "coverage": float(ae.coverage(x)),
                    "recovered": rec,
                    "segment_mass": _family_mass(ae),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def references(plain: bool) -> dict:
    from autoencoder_real import _spectrum_figure

    from kernelatlas.autoencoder import KernelAutoencoder
    from kernelatlas.autoencoder.reference import (
        load_reference,
        pool_sources,
        reference_provenance,
        reference_sizes,
    )

    out = {}
    banks = None
    for size in reference_sizes():
        key = f"{size[0]}x{size[1]}"
        ae = load_reference(size, device="cpu")
        _spectrum_figure(ae, ROOT / "docs" / "figures" / f"reference_ae_{key}.png")
        prov = reference_provenance(size)
        row = {
            "trained_on": ae.n_train_,
            "models": prov["bank"]["models"],
            "threshold": ae.threshold_,
            "threshold_rule": ae.threshold_rule_,
            "null_coverage": ae.null_coverage_,
            "segments": _segments(ae),
            "family_mass": _family_mass(ae),
        }
        if plain:
            if banks is None:
                banks = pool_sources([s["name"] for s in prov["sources"]])
            t0 = time.perf_counter()
            params = dict(prov["recipe"], search=False)
            p = KernelAutoencoder(size, device="cpu", **params).fit(banks[tuple(size)].kernels)
            _spectrum_figure(p, ROOT / "docs" / "figures" / f"reference_ae_{key}_plain.png")
            row["plain"] = {
                "coverage_of_bank": p.coverage(banks[tuple(size)].kernels),
                "reference_coverage_of_bank": ae.coverage(banks[tuple(size)].kernels),
                "segments": _segments(p),
                "family_mass": _family_mass(p),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        out[key] = row
        print(key, row.get("family_mass"), row.get("plain", {}).get("family_mass"), flush=True)
    return out


def models(tmp: Path) -> list[dict]:
    from kernelatlas.harvest import list_sources
    from kernelatlas.pipeline import AnalysisConfig, analyze

    cfg = AnalysisConfig(quiet=True, method="both", fit=False, figures=False)
    res = analyze(list_sources(), tmp / "all", cfg)
    by_size = {(r["kh"], r["kw"]): r for r in res.summary["autoencoder"]["by_size"]}
    rows = []
    for m in res.summary["models"]:
        r = by_size[(m["kh"], m["kw"])]
        rows.append(
            {
                "model": m["model"],
                "source": m["source"],
                "size": f"{m['kh']}x{m['kw']}",
                "kernels": m["kernels"],
                "ae_coverage": m["ae_coverage"],
                "ae_null": m["ae_null_coverage"],
                "ae_threshold": r["threshold"],
                "ae_rule": r["threshold_rule"],
                "autoencoder": r["autoencoder"],
                "atlas_coverage": m["coverage"],
                "atlas_null": m["null_coverage"],
                "atlas_init": m["init_coverage"],
                "agreement": m["agreement"],
                "agreement_kernels": m["agreement_kernels"],
                "agreement_both": m["agreement_both_classified"],
                "agreement_both_kernels": m["agreement_both_kernels"],
            }
        )
    return rows


def company(tmp: Path) -> list[dict]:
    from kernelatlas.pipeline import AnalysisConfig, analyze

    rows = []
    for ae in ("train", "reference"):
        for sources in (["efficientnet_lite0"], ["efficientnet_lite0", "mobilenet_v2"]):
            cfg = AnalysisConfig(quiet=True, method="autoencoder", fit=False, figures=False,
                                 init_baseline=False, ae=ae)  # fmt: skip
            res = analyze(sources, tmp / f"{ae}-{len(sources)}", cfg)
            for m in res.summary["models"]:
                if m["source"] == "efficientnet_lite0":
                    rows.append(
                        {"ae": ae, "run": " + ".join(sources), "size": f"{m['kh']}x{m['kw']}",
                         "ae_coverage": m["ae_coverage"], "agreement": m["agreement"]}
                    )  # fmt: skip
                    print(rows[-1], flush=True)
    return rows


def holdout(sources: list[str], pooled: bool, epochs: int | None, batch: int | None) -> list:
    from kernelatlas.autoencoder import KernelAutoencoder
    from kernelatlas.autoencoder.reference import REFERENCE_RECIPE, pool_sources
    from kernelatlas.harvest import harvest, list_sources

    sets = []
    if pooled:
        for size, bank in pool_sources(list_sources()).items():
            if size[0] * size[1] > 1 and len(bank.kernels) >= 10_000:
                sets.append((f"pooled registry {size[0]}x{size[1]}", bank.kernels))
    for s in sources:
        res = harvest(s)
        by = {}
        for layer in res.layers:
            by.setdefault(tuple(layer.weights.shape[1:]), []).append(layer.weights)
        for size, arrs in sorted(by.items()):
            k = np.concatenate(arrs)
            if len(k) >= 100 and size[0] == size[1]:
                sets.append((f"{Path(s).name} {size[0]}x{size[1]}", k))
    params = dict(REFERENCE_RECIPE)
    params.update({k: v for k, v in (("epochs", epochs), ("batch_size", batch)) if v})
    rows = []
    for name, k in sets:
        perm = np.random.default_rng(1).permutation(len(k))
        a, b = k[perm[: len(k) // 2]], k[perm[len(k) // 2 :]]
        ae = KernelAutoencoder(k.shape[1], device="cpu", **params).fit(a)
        rows.append({"set": name, "kernels": int(len(k)), "params": params,
                     "in_sample": ae.coverage(a), "held_out": ae.coverage(b),
                     "family_mass": _family_mass(ae)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernelatlas import __version__

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks/autoencoder_reference.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", action="store_true", help="train the plain-training twins")
    ap.add_argument("--holdout", nargs="*", default=[], metavar="SOURCE")
    ap.add_argument("--holdout-pooled", action="store_true")
    ap.add_argument("--holdout-epochs", type=int, default=None)
    ap.add_argument("--holdout-batch", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="sections to skip")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(
        kernelatlas_version=__version__,
        torch=torch.__version__,
        command="python benchmarks/autoencoder_reference.py " + " ".join(argv or sys.argv[1:]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        if "synthetic" not in args.skip:
            report["synthetic"] = synthetic(args.seed)
        if "references" not in args.skip:
            report["references"] = references(args.plain)
        if "models" not in args.skip:
            report["models"] = models(Path(tmp))
        if "company" not in args.skip:
            report["company"] = company(Path(tmp))
        if args.holdout or args.holdout_pooled:
            report["holdout"] = holdout(
                args.holdout, args.holdout_pooled, args.holdout_epochs, args.holdout_batch
            )
    _write_json(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
