"""Synthetic recovery of the atlas: kernels of known family, scale, orientation and noise.

Used by the tests and to regenerate the confusion tables in ``docs/atlas.md``::

    .venv/bin/python -m kernelatlas.atlas.evaluation                   # synthetic tables
    .venv/bin/python -m kernelatlas.atlas.evaluation --real            # shipped models' coverage
    .venv/bin/python -m kernelatlas.atlas.evaluation --effect-of shift # a family's effect
    .venv/bin/python -m kernelatlas.atlas.evaluation --fits            # fit/atlas agreement
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from ..sizes import kernel_geometry
from ..taxonomy import (
    CENTER,
    FAMILIES,
    FIRST_DERIVATIVE,
    PATTERN_FAMILIES,
    SECOND_DERIVATIVE,
    UNCLASSIFIED,
    coverage,
)
from . import functional as F
from .family import wrap_angle

__all__ = [
    "family_effect",
    "fit_agreement",
    "synthetic_kernels",
    "recovery",
    "confusion_matrix",
    "REAL_MODELS",
    "real_coverage",
    "SCALE_SPACE_FAMILIES",
]

# The receptive-field models of scale-space theory among the built-in families (the
# synthetic recovery draws these three).
SCALE_SPACE_FAMILIES: tuple[str, ...] = (CENTER, FIRST_DERIVATIVE, SECOND_DERIVATIVE)

# shipped trained models and the timm architecture whose fresh initialisation is their null
REAL_MODELS: dict[str, str | None] = {
    "efficientnet_lite0": "timm:efficientnet_lite0@init",
    "efficientnet_lite1": "timm:efficientnet_lite1@init",
    "efficientnet_lite2": "timm:efficientnet_lite2@init",
    "mobilenet_v2": "timm:mobilenetv2_100@init",
    "pp_lcnet_orientation": "timm:lcnet_100@init",
}


def synthetic_kernels(
    kh: int, kw: int, n_per_family: int, *, noise: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, pd.DataFrame]:
    """Random patterns of the three scale-space families plus noise, and their true parameters.

    Scales are drawn log-uniformly in [0.4, max(0.8, min(kh, kw) / 5)] px, offsets
    uniformly in [-0.5, 0.5]^2 px, orientations uniformly, polarities and second-derivative
    kinds (bar / cross) at random; centre patterns get a random surround ratio in [1.3, 3]
    and weight in [0, 1]. ``noise`` is the L2 norm of the added iid Gaussian noise relative
    to the unit pattern (0.5: SNR 2).

    Returns
    -------
    kernels float32 [3 * n_per_family, kh, kw] and a DataFrame with ``family, orientation,
    polarity, scale, kind`` (orientation in the taxonomy's convention, crosses with
    polarity +1).
    """
    rng = np.random.default_rng(seed)
    n = n_per_family
    smax = max(0.8, min(kh, kw) / 5.0)
    sig = lambda: np.exp(rng.uniform(np.log(0.4), np.log(smax), n))  # noqa: E731
    off = lambda: rng.uniform(-0.5, 0.5, (n, 2))  # noqa: E731
    pol = lambda: rng.choice(np.array([-1, 1]), n)  # noqa: E731

    s_c, p_c = sig(), pol()
    center = F.center_pattern(
        kh,
        kw,
        s_c,
        surround_ratio=rng.uniform(1.3, 3.0, n),
        surround_weight=rng.uniform(0.0, 1.0, n),
        polarity=p_c,
        offset=off(),
    )
    s_1, t_1 = sig(), rng.uniform(0, 360, n)
    first = F.first_derivative_pattern(kh, kw, s_1, t_1, offset=off())
    s_2, t_2, p_2 = sig(), rng.uniform(0, 180, n), pol()
    is_cross = rng.random(n) < 0.5
    o2 = off()
    bar = F.second_derivative_pattern(kh, kw, s_2, t_2, kind="bar", polarity=p_2, offset=o2)
    cross = F.second_derivative_pattern(kh, kw, s_2, t_2, kind="cross", polarity=p_2, offset=o2)
    second = np.where(is_cross[:, None, None], cross, bar)
    # canonical cross: polarity +1 (cross(t, -1) == cross(t + 90, +1))
    t_2c = wrap_angle(np.where(is_cross & (p_2 < 0), t_2 + 90.0, t_2), 180.0)
    p_2c = np.where(is_cross, 1, p_2)

    kernels = np.concatenate([center, first, second]).astype(np.float64)
    kernels += noise * rng.standard_normal(kernels.shape) / np.sqrt(kh * kw)
    truth = pd.DataFrame(
        {
            "family": np.repeat(np.array(SCALE_SPACE_FAMILIES, dtype=object), n),
            "orientation": np.concatenate([np.full(n, np.nan), t_1, t_2c]),
            "polarity": np.concatenate([p_c, np.ones(n, int), p_2c]).astype(np.int8),
            "scale": np.concatenate([s_c, s_1, s_2]),
            "kind": np.concatenate(
                [np.full(n, "dog"), np.full(n, "first"), np.where(is_cross, "cross", "bar")]
            ).astype(object),
        }
    )
    return kernels.astype(np.float32), truth


def confusion_matrix(truth: pd.Series, predicted: pd.Series) -> pd.DataFrame:
    """Rows: true family; columns: predicted family (all of FAMILIES); row fractions."""
    rows = [f for f in PATTERN_FAMILIES if f in set(truth)]
    tab = pd.crosstab(
        pd.Categorical(truth, categories=rows),
        pd.Categorical(predicted, categories=FAMILIES),
        dropna=False,
        normalize="index",
    )
    tab.index.name, tab.columns.name = "true", "predicted"
    return tab


def recovery(atlas, kernels: np.ndarray, truth: pd.DataFrame) -> dict[str, object]:
    """Confusion matrix, accuracy, orientation errors (deg) and polarity agreement."""
    pred = atlas.predict(kernels)
    conf = confusion_matrix(truth["family"], pred["family"])
    hit = (pred["family"] == truth["family"]).to_numpy()
    is1 = hit & (truth["family"] == FIRST_DERIVATIVE).to_numpy()
    is2 = hit & (truth["family"] == SECOND_DERIVATIVE).to_numpy()
    err1 = F.angular_difference(pred["orientation"][is1], truth["orientation"][is1], 360.0)
    err2 = F.angular_difference(pred["orientation"][is2], truth["orientation"][is2], 180.0)
    pol_ok = hit & (truth["family"] != FIRST_DERIVATIVE).to_numpy()
    return {
        "predicted": pred,
        "confusion": conf,
        "accuracy": float(hit.mean()),
        "orientation_error_first": err1,
        "orientation_error_second": err2,
        "polarity_agreement": float((pred["polarity"][pol_ok] == truth["polarity"][pol_ok]).mean()),
        "center_hits": int((hit & (truth["family"] == CENTER).to_numpy()).sum()),
    }


def _by_size(source: str) -> dict[tuple[int, int], np.ndarray]:
    import warnings

    from ..harvest import harvest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = harvest(source)
    out: dict[tuple[int, int], list[np.ndarray]] = {}
    for layer in res.layers:
        out.setdefault(tuple(layer.shape), []).append(layer.weights.reshape(-1, *layer.shape))
    return {k: np.concatenate(v) for k, v in out.items()}


def real_coverage(
    models: dict[str, str | None] = REAL_MODELS,
    null_fpr: float = 0.01,
    families: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Coverage per shipped model and kernel size at ``null_fpr``.

    Columns: model, size, kernels, coverage (Gaussian null), gaussian_null_rate, share of
    each family, init_coverage (the same architecture freshly initialised, scored by the
    Gaussian-calibrated Atlas), and init_null_coverage / init_null_rate (an Atlas
    calibrated on the freshly initialised kernels as the null). ``families``: the atlas's
    families (None: every registered one).
    """
    from .classifier import Atlas

    rows = []
    atlases: dict[tuple[int, int], Atlas] = {}
    for model, init in models.items():
        trained = _by_size(model)
        fresh = _by_size(init) if init else {}
        for size, k in sorted(trained.items()):
            if kernel_geometry(*size) is None:
                continue
            if size not in atlases:
                atlases[size] = Atlas(kernel_size=size, null_fpr=null_fpr, families=families).fit()
            atlas = atlases[size]
            pred = atlas.predict(k)
            ok = pred["family"] != "degenerate"
            row = {
                "model": model,
                "size": f"{size[0]}x{size[1]}",
                "kernels": len(k),
                "coverage": coverage(pred["classified"], pred["family"]),
                "gaussian_null_rate": atlas.null_rate_,
            }
            for fam in atlas.families_:
                row[fam] = float((pred["family"][ok] == fam).mean())
            row["init_coverage"] = float("nan")
            row["init_null_coverage"] = float("nan")
            row["init_null_rate"] = float("nan")
            if size in fresh:
                row["init_coverage"] = atlas.coverage(fresh[size])
                own = Atlas(kernel_size=size, null_fpr=null_fpr, families=families)
                own = own.fit(null=fresh[size])
                row["init_null_coverage"] = own.coverage(k)
                row["init_null_rate"] = own.null_rate_
            rows.append(row)
    return pd.DataFrame(rows)


def family_effect(family: str, models: list[str], null_fpr: float = 0.01) -> pd.DataFrame:
    """What registering ``family`` changes: per model and size, coverage and null rate with
    and without it, its share, where its kernels came from and what it cost the others."""
    from .classifier import Atlas
    from .registry import families as registered

    others = tuple(f.name for f in registered() if f.name != family)
    rows = []
    atlases: dict[tuple[int, int], tuple[Atlas, Atlas]] = {}
    for model in models:
        for size, k in sorted(_by_size(model).items()):
            if kernel_geometry(*size) is None:
                continue
            if size not in atlases:
                atlases[size] = (
                    Atlas(kernel_size=size, null_fpr=null_fpr, families=others).fit(),
                    Atlas(kernel_size=size, null_fpr=null_fpr).fit(),
                )
            without, with_ = atlases[size]
            a, b = without.predict(k), with_.predict(k)
            new = (b["family"] == family).to_numpy()
            was = a["family"].to_numpy()
            rows.append(
                {
                    "model": model,
                    "size": f"{size[0]}x{size[1]}",
                    "kernels": len(k),
                    "coverage_without": coverage(a["classified"], a["family"]),
                    "null_rate_without": without.null_rate_,
                    "coverage_with": coverage(b["classified"], b["family"]),
                    "null_rate_with": with_.null_rate_,
                    f"share_{family}": float(new.mean()),
                    "from_unclassified": int((new & (was == UNCLASSIFIED)).sum()),
                    "from_other_families": int((new & (was != UNCLASSIFIED)).sum()),
                    "lost_to_unclassified": int(
                        ((was != UNCLASSIFIED) & (b["family"] == UNCLASSIFIED).to_numpy()).sum()
                    ),
                }
            )
    return pd.DataFrame(rows)


def fit_agreement(
    models: list[str], margins: tuple[float, ...] = (0.05, 0.1, 0.15)
) -> pd.DataFrame:
    """Per model and size: the share of classified kernels whose ``fit_family`` is the
    atlas's family, for several override margins (R^2 units)."""
    from ..fit import KernelFitter
    from .classifier import Atlas

    rows = []
    atlases: dict[tuple[int, int], Atlas] = {}
    for model in models:
        for size, k in sorted(_by_size(model).items()):
            if kernel_geometry(*size) is None:
                continue
            atlas = atlases.setdefault(size, Atlas(kernel_size=size).fit())
            pred = atlas.predict(k)
            fit = KernelFitter(kernel_size=size, margin=1.0).fit(atlas).predict(k)
            cls = pred["classified"].to_numpy()
            names = atlas.families_
            r2 = np.stack([fit[f"fit_r2_{f}"].to_numpy() for f in names], axis=1)
            own = np.array([names.index(f) if f in names else 0 for f in pred["family"]])
            mine = r2[np.arange(len(k)), own]
            rival = np.where(np.arange(len(names))[None] == own[:, None], -np.inf, r2).max(1)
            gain = (rival - mine)[cls]
            row = {"model": model, "size": f"{size[0]}x{size[1]}", "classified": int(cls.sum())}
            for m in margins:
                row[f"agree_margin_{m:g}"] = float((gain <= m).mean()) if cls.any() else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _markdown(sizes: tuple[int, ...], noises: tuple[float, ...], n: int) -> str:
    from .classifier import Atlas

    lines = []
    summary = [
        "| size | noise | accuracy | 1st-deriv orient. err. median / p90 (deg) "
        "| 2nd-deriv orient. err. median / p90 (deg) | polarity agreement |",
        "|---|---|---|---|---|---|",
    ]
    for k in sizes:
        atlas = Atlas(kernel_size=k).fit()
        for noise in noises:
            kern, truth = synthetic_kernels(k, k, n, noise=noise, seed=k)
            r = recovery(atlas, kern, truth)
            e1, e2 = r["orientation_error_first"], r["orientation_error_second"]
            summary.append(
                f"| {k}x{k} | {noise:g} | {r['accuracy']:.3f} "
                f"| {np.median(e1):.1f} / {np.quantile(e1, 0.9):.1f} "
                f"| {np.median(e2):.1f} / {np.quantile(e2, 0.9):.1f} "
                f"| {r['polarity_agreement']:.3f} |"
            )
            conf = r["confusion"]
            lines.append(
                f"\n**{k}x{k}, noise {noise:g}** (row fractions, {n} kernels per family)\n"
            )
            lines.append("| true \\ predicted | " + " | ".join(conf.columns) + " |")
            lines.append("|---" * (len(conf.columns) + 1) + "|")
            for fam, row in conf.iterrows():
                lines.append(f"| {fam} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(summary) + "\n" + "\n".join(lines) + "\n"


def _write_table(df: pd.DataFrame) -> None:
    cols = list(df.columns)
    sys.stdout.write("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|\n")
    for _, r in df.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
        sys.stdout.write("| " + " | ".join(cells) + " |\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Synthetic recovery tables for docs/atlas.md")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 5, 7, 11])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    ap.add_argument("--n", type=int, default=1000, help="kernels per family")
    ap.add_argument("--real", action="store_true", help="coverage of the shipped models")
    ap.add_argument("--families", nargs="+", default=None, help="atlas families (--real)")
    ap.add_argument(
        "--effect-of", metavar="FAMILY", help="what FAMILY changes on every shipped model"
    )
    ap.add_argument(
        "--fits", action="store_true", help="fit/atlas agreement on every shipped model"
    )
    args = ap.parse_args(argv)
    if args.effect_of or args.fits:
        from ..harvest.zoo import list_sources

        names = [getattr(s, "name", s) for s in list_sources()]
        if args.effect_of:
            _write_table(family_effect(args.effect_of, names))
        else:
            _write_table(fit_agreement(names))
        return 0
    if args.real:
        fams = tuple(args.families) if args.families else None
        _write_table(real_coverage(families=fams))
        return 0
    sys.stdout.write(_markdown(tuple(args.sizes), tuple(args.noise), args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
