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


def segment_figure(ae, path: Path, title: str) -> None:
    """Top: the decoded pattern at the middle of each segment holding > 1% of the training
    kernels, with its name and mass; bottom: 16 evenly spaced latents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = ae.segments_[ae.segments_["mass"] > 0.01]
    zs = ((seg["z_start"] + seg["z_end"]) / 2).to_numpy()
    grid = np.linspace(0.0, 1.0, 16)
    rows = [(zs, [f"{r.label.replace('_derivative', ' d.')}\n{r.mass:.0%}" for r in seg.itertuples()]),
            (grid, [f"z={z:.2f}" for z in grid])]  # fmt: skip
    ncol = max(len(zs), len(grid))
    fig, axes = plt.subplots(2, ncol, figsize=(ncol * 0.85, 2.9), squeeze=False)
    for row, (z, labels) in zip(axes, rows, strict=True):
        pats = ae.inverse_transform(z) if len(z) else []
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(z):
                v = np.abs(pats[j]).max()
                ax.imshow(pats[j], cmap="RdBu_r", vmin=-v, vmax=v)
                ax.set_title(labels[j], fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def reference_figures() -> None:
    from kernelatlas.autoencoder.reference import load_reference, reference_sizes

    for kh, kw in reference_sizes():
        ae = load_reference((kh, kw), device="cpu")
        title = (f"reference {kh}x{kw} autoencoder: segments (name, share of the "
                 f"{ae.n_train_:,} training kernels) and the decoded line")  # fmt: skip
        segment_figure(ae, ROOT / "docs" / "figures" / f"reference_ae_{kh}x{kw}.png", title)


def references(plain: bool) -> dict:
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
            segment_figure(p, ROOT / "docs" / "figures" / f"reference_ae_{key}_plain.png",
                           f"{key}, same recipe with the paper's plain training")  # fmt: skip
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


_by_size: list[dict] = []


def models(tmp: Path, left_out: dict[str, str]) -> list[dict]:
    from kernelatlas.harvest import list_sources
    from kernelatlas.pipeline import AnalysisConfig, analyze

    names = list(list_sources())  # 1-D layers: the 1-D atlas, an autoencoder trained per run
    cfg = AnalysisConfig(quiet=True, method="both", fit=False, figures=False)
    res = analyze(names, tmp / "all", cfg)
    by_size = {(r["kh"], r["kw"]): r for r in res.summary["autoencoder"]["by_size"]}
    _by_size[:] = list(by_size.values())
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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict) -> str:
    """The tables pasted into docs/autoencoder.md and docs/coverage.md."""
    out = []
    if "synthetic" in report:
        out += ["| bank | training | coverage | center | first der. | second der. |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["synthetic"]:
            rec = r["recovered"]
            out.append(
                f"| {r['bank']} | {'search' if r['search'] else 'plain (paper)'} | "
                f"{_pct(r['coverage'])} | {_pct(rec.get('center'))} | "
                f"{_pct(rec.get('first_derivative'))} | {_pct(rec.get('second_derivative'))} |"
            )
        out.append("")
    if "references" in report:
        out += ["| size | trained on | models | threshold | rule | Gaussian null | segments (mass > 1%) |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, r in report["references"].items():
            segs = ", ".join(
                f"{s['label']} {s['mass']:.0%}" for s in r["segments"] if s["mass"] > 0.01
            )
            out.append(
                f"| {key} | {r['trained_on']:,} | {r['models']} | {r['threshold']:.3f} | "
                f"{r['threshold_rule']} | {_pct(r['null_coverage'])} | {segs} |"
            )
        out += ["", "| size | training | center | first der. | second der. | unclassified |"
                " coverage of the bank |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, r in report["references"].items():
            rows = [("search (shipped)", r["family_mass"], r.get("plain", {}).get(
                "reference_coverage_of_bank"))]  # fmt: skip
            if "plain" in r:
                rows.append(("plain (paper)", r["plain"]["family_mass"],
                             r["plain"]["coverage_of_bank"]))  # fmt: skip
            for name, fm, cov in rows:
                out.append(
                    f"| {key} | {name} | {_pct(fm.get('center', 0))} | "
                    f"{_pct(fm.get('first_derivative', 0))} | "
                    f"{_pct(fm.get('second_derivative', 0))} | {_pct(fm.get('unclassified', 0))}"
                    f" | {_pct(cov)} |"
                )
        out.append("")
    if "models" in report:
        from kernelatlas.autoencoder.reference import reference_index

        trained_on = set(reference_index()["sources"])
        out += ["| model | size | kernels | AE classified | AE null | atlas classified | "
                "atlas null | atlas fresh init | agreement (kernels) | agreement, both "
                "classified (kernels) |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["models"]:
            out.append(
                f"| {r['model']}{'' if r['source'] in trained_on else ' †'} | {r['size']} | "
                f"{r['kernels']:,} | **{_pct(r['ae_coverage'])}**"
                f" | {_pct(r['ae_null'])} | {_pct(r['atlas_coverage'])} | {_pct(r['atlas_null'])}"
                f" | {_pct(r['atlas_init'])} | {_pct(r['agreement'])} ({r['agreement_kernels']:,})"
                f" | {_pct(r['agreement_both'])} ({r['agreement_both_kernels']:,}) |"
            )
        out.append("")
    if "company" in report:
        out += ["| autoencoder | run | size | EfficientNet-Lite0 AE classified | agreement |",
                "|---|---|---|---|---|"]  # fmt: skip
        for r in report["company"]:
            out.append(
                f"| {r['ae']} | {r['run']} | {r['size']} | {_pct(r['ae_coverage'])} | "
                f"{_pct(r['agreement'])} |"
            )
        out.append("")
    if "holdout" in report:
        out += ["| kernels | set | in sample | held-out half | epochs, batch |",
                "|---|---|---|---|---|"]  # fmt: skip
        for r in report["holdout"]:
            out.append(
                f"| {r['kernels']:,} | {r['set']} | {_pct(r['in_sample'])} | "
                f"{_pct(r['held_out'])} | {r['params']['epochs']}, {r['params']['batch_size']} |"
            )
    return "\n".join(out)


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
    ap.add_argument("--tables", action="store_true", help="print the tables of --out only")
    args = ap.parse_args(argv)
    if args.tables:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    torch.set_num_threads(1)
    path = Path(args.out)
    report = json.loads(path.read_text()) if path.is_file() else {}
    command = "python benchmarks/autoencoder_reference.py " + " ".join(argv or sys.argv[1:])
    report.update(kernelatlas_version=__version__, torch=torch.__version__)
    report.pop("command", None)
    ran = report.setdefault("commands", {})  # section -> the command that wrote it
    with tempfile.TemporaryDirectory() as tmp:
        if "synthetic" not in args.skip:
            report["synthetic"], ran["synthetic"] = synthetic(args.seed), command
        if "references" not in args.skip:
            report["references"], ran["references"] = references(args.plain), command
        if "figures" not in args.skip:
            reference_figures()
        if "models" not in args.skip:
            report["models_left_out"] = {}
            report["models"] = models(Path(tmp), report["models_left_out"])
            report["models_by_size"] = _by_size
            ran["models"] = command
        if "company" not in args.skip:
            report["company"], ran["company"] = company(Path(tmp)), command
        if args.holdout or args.holdout_pooled:
            report["holdout"] = holdout(
                args.holdout, args.holdout_pooled, args.holdout_epochs, args.holdout_batch
            )
            ran["holdout"] = command
    _write_json(path, report)
    print(markdown(report))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
