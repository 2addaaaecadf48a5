"""Coverage tables, merged exactly from per-batch partial counts.

A batch of analysed kernels (one row per kernel, with the bank's provenance columns and the
atlas columns) is reduced to integer counts per (model, size) and per layer; counts from any
number of batches, processes or Dask partitions add up to the same tables as one pass over
the whole bank. ``build_summary`` turns the counts into ``summary.json`` (schema:
``summary.schema.json`` beside this file, documented in docs/summary.md).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..null import (
    INTERVAL_LEVEL,
    INTERVAL_METHOD,
    NULLS,
    difference_interval,
    get_null,
    wilson_interval,
)
from ..taxonomy import FAMILIES, PATTERN_FAMILIES, coverage_counts

__all__ = [
    "MODEL_KEYS",
    "LAYER_KEYS",
    "count_matrix",
    "partial_counts",
    "merge_counts",
    "coverage_tables",
    "build_summary",
    "baseline_block",
    "versions",
]

MODEL_KEYS = ["source", "model", "kh", "kw"]
LAYER_KEYS = ["source", "model", "kh", "kw", "layer", "layer_index", "depth"]


def _count_cols() -> list[str]:
    return ["kernels", "classified", *[f"n_{f}" for f in FAMILIES]]  # FAMILIES is live


def count_matrix(
    family: np.ndarray,
    classified: np.ndarray,
    ae_family: np.ndarray | None = None,
    ae_classified: np.ndarray | None = None,
) -> tuple[list[str], np.ndarray]:
    """Per-row 0/1 indicators [N, C] of every counted quantity, and their column names.

    The one definition of what the coverage tables count (:func:`partial_counts` and the
    analysis engines' partitions both use it): ``kernels``, ``classified``, ``n_<family>``
    and, with the autoencoder's columns, ``ae_*`` (degenerate kernels left out, as in
    ``kernelatlas.autoencoder.agreement``).
    """
    fam = np.asarray(family, dtype=object)
    cls = np.asarray(classified, dtype=bool)
    cols = {"kernels": np.ones(len(fam), bool), "classified": cls}
    for f in FAMILIES:
        cols[f"n_{f}"] = fam == f
    if ae_classified is not None:
        # One definition with kernelatlas.autoencoder.agreement: agreement only among
        # kernels that at least one method names (degenerate kernels left out).
        from ..autoencoder.agreement import agreement_masks

        m = agreement_masks(np.asarray(ae_family, dtype=object), fam)
        ae_cls = np.asarray(ae_classified, dtype=bool)
        cols["ae_kernels"] = m["valid"]
        cols["ae_classified"] = m["valid"] & ae_cls
        cols["ae_either"] = m["either"]
        cols["ae_either_agree"] = m["either"] & m["same"]
        cols["ae_both"] = m["both"]
        cols["ae_both_agree"] = m["both"] & m["same"]
    return list(cols), np.stack(list(cols.values()), axis=1).astype(np.int64)


def _row_counts(df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """:func:`count_matrix` of an analysed batch's columns."""
    ae = "ae_classified" in df.columns
    return count_matrix(
        df["family"].to_numpy(object),
        df["classified"].to_numpy(dtype=bool),
        df["ae_family"].to_numpy(object) if ae else None,
        df["ae_classified"].to_numpy(dtype=bool) if ae else None,
    )


def partial_counts(batch: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Integer counts of one analysed batch, per (model, size) and per layer.

    One pass: the rows' indicator matrix is summed per layer with ``np.bincount``; the
    model rows are sums of their layers.
    """
    names, rows = _row_counts(batch)
    codes = batch.groupby(LAYER_KEYS, sort=False, observed=True).ngroup().to_numpy()
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    sums = np.zeros((n_groups, len(names)), np.int64)
    for j in range(len(names)):  # a dozen count columns, not kernels
        sums[:, j] = np.bincount(codes, weights=rows[:, j], minlength=n_groups)
    first = np.unique(codes, return_index=True)[1]
    layers = batch[LAYER_KEYS].iloc[first].reset_index(drop=True)
    layers[names] = sums
    models = layers.drop(columns=["layer", "layer_index", "depth"])
    models = models.groupby(MODEL_KEYS, sort=False, observed=True).sum().reset_index()
    return {"models": models, "layers": layers}


def merge_counts(parts: Iterable[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Add up partial counts exactly (integer sums), in a deterministic row order."""
    out: dict[str, list[pd.DataFrame]] = {"models": [], "layers": []}
    for p in parts:
        for key in out:
            out[key].append(p[key])
    merged = {}
    for key, keys in (("models", MODEL_KEYS), ("layers", LAYER_KEYS)):
        if not out[key]:
            merged[key] = pd.DataFrame(columns=[*keys, *_count_cols()])
            continue
        df = pd.concat(out[key], ignore_index=True)
        df = df.groupby(keys, sort=True, observed=True).sum().reset_index()
        if key == "layers":  # network order within each model (not the layer names' order)
            order = ["source", "model", "layer_index", "kh", "kw", "layer"]
            df = df.sort_values(order, kind="stable").reset_index(drop=True)
        merged[key] = df
    return merged


def coverage_tables(counts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Fractions from counts: coverage (classified / non-degenerate kernels) and family shares.

    Coverage is :func:`kernelatlas.taxonomy.coverage` (degenerate kernels are counted apart,
    out of the denominator); family shares are fractions of all kernels, so they sum to 1
    across FAMILIES.
    """
    tables = {}
    for key, df in counts.items():
        df = df.copy()
        n = df["kernels"].to_numpy(dtype=np.float64)
        for f in FAMILIES:  # a family no kernel fell into (or registered later) counts 0
            if f"n_{f}" not in df.columns:
                df[f"n_{f}"] = 0
        df["coverage"] = coverage_counts(df["classified"], n, df["n_degenerate"])
        with np.errstate(invalid="ignore", divide="ignore"):
            for f in FAMILIES:
                df[f"share_{f}"] = np.where(n > 0, df[f"n_{f}"] / np.maximum(n, 1), np.nan)
            if "ae_kernels" in df.columns:
                ae_n = df["ae_kernels"].to_numpy(dtype=np.float64)
                df["ae_coverage"] = np.where(
                    ae_n > 0, df["ae_classified"] / np.maximum(ae_n, 1), np.nan
                )
                ne = df["ae_either"].to_numpy(dtype=np.float64)
                df["agreement"] = np.where(
                    ne > 0, df["ae_either_agree"] / np.maximum(ne, 1), np.nan
                )
                df["agreement_kernels"] = df["ae_either"]
                df["agreement_both_kernels"] = df["ae_both"]
                nb = df["ae_both"].to_numpy(dtype=np.float64)
                df["agreement_both_classified"] = np.where(
                    nb > 0, df["ae_both_agree"] / np.maximum(nb, 1), np.nan
                )
        tables[key] = df
    return tables


def versions() -> dict[str, str]:
    """Versions of the software that produced an output (stamped into every file)."""
    import pyarrow
    import torch

    return {
        "kernelatlas": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
        "torch": torch.__version__,
    }


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _records(df: pd.DataFrame, keys: list[str], extra: list[str]) -> list[dict[str, Any]]:
    rows = []
    for rec in df.to_dict(orient="records"):
        row = {k: _nan_to_none(rec[k]) for k in keys}
        row["kernels"] = int(rec["kernels"])
        row["degenerate"] = int(rec["n_degenerate"])
        row["classified"] = int(rec["classified"])
        row["coverage"] = _nan_to_none(rec["coverage"])
        row["family_shares"] = {f: _nan_to_none(rec[f"share_{f}"]) for f in FAMILIES}
        for e in extra:
            row[e] = _nan_to_none(rec.get(e, np.nan))
        rows.append(row)
    return rows


def _interval(lo: Any, hi: Any) -> list[float] | None:
    lo, hi = float(lo), float(hi)
    return [lo, hi] if np.isfinite(lo) and np.isfinite(hi) else None


def _rate(k: int, n: int) -> float | None:
    return k / n if n > 0 else None


def baseline_block(
    classified: int, live: int, family_counts: dict[str, int], rows: pd.DataFrame
) -> dict[str, Any]:
    """Coverage beside every baseline: the ``models[]`` fields of one (model, size).

    Parameters
    ----------
    classified, live : classified and non-degenerate kernels of the model at that size.
    family_counts : family -> kernels classified as it (the pattern families).
    rows : that model's baseline counts (:func:`kernelatlas.null.measure_baselines` rows).

    Returns ``coverage_interval``, ``baselines`` (kind -> surrogates, classified, coverage,
    interval, family_shares, excess, excess_interval, family_excess), ``strongest_baseline``
    (the highest baseline coverage) and ``excess`` (over that one). Family shares and their
    excesses are of non-degenerate kernels, so the family excesses add up to the coverage
    excess. Intervals: :data:`kernelatlas.null.INTERVAL_METHOD`.
    """
    out: dict[str, Any] = {"coverage_interval": _interval(*wilson_interval(classified, live))}
    base: dict[str, Any] = {}
    for r in rows.to_dict(orient="records"):
        m, c = int(r["surrogates"]), int(r["classified"])
        d, lo, hi = difference_interval(classified, live, c, m)
        n_fam = {f: int(r.get(f"n_{f}") or 0) for f in PATTERN_FAMILIES}  # absent: none counted
        fam = {}
        for f in PATTERN_FAMILIES:
            fd, flo, fhi = difference_interval(family_counts.get(f, 0), live, n_fam[f], m)
            fam[f] = {"excess": _nan_to_none(float(fd)), "interval": _interval(flo, fhi)}
        base[r["kind"]] = {
            "surrogates": m,
            "classified": c,
            "coverage": _rate(c, m),
            "interval": _interval(*wilson_interval(c, m)),
            "family_shares": {f: _rate(n_fam[f], m) for f in PATTERN_FAMILIES},
            "excess": _nan_to_none(float(d)),
            "excess_interval": _interval(lo, hi),
            "family_excess": fam,
        }
    out["baselines"] = base
    ranked = [
        (b["coverage"], -i, k) for i, (k, b) in enumerate(base.items()) if b["coverage"] is not None
    ]
    strongest = max(ranked)[2] if ranked else None
    out["strongest_baseline"] = strongest
    out["excess"] = (
        None
        if strongest is None
        else {"baseline": strongest, "excess": base[strongest]["excess"],
              "interval": base[strongest]["excess_interval"],
              "family_excess": base[strongest]["family_excess"]}
    )  # fmt: skip
    return out


def _nulls_doc(null: str, kinds: list[str], null_fpr: float | None) -> dict[str, Any]:
    doc = {}
    for k in kinds:
        e = get_null(k)
        doc[k] = {"label": e.label, "keeps": e.keeps, "rules_out": e.rules_out,
                  "leaves_open": e.leaves_open, "reference": e.reference, "finite": e.finite}  # fmt: skip
    return {
        "calibrated_on": null,
        "null_fpr": null_fpr,
        "intervals": INTERVAL_METHOD,
        "interval_level": INTERVAL_LEVEL,
        "kinds": doc,
    }


def build_summary(
    counts: dict[str, pd.DataFrame],
    *,
    config: dict[str, Any],
    thresholds: list[dict[str, Any]],
    baselines: pd.DataFrame | None = None,
    autoencoder: dict[str, Any] | None = None,
    null: str | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary.json document (see summary.schema.json).

    ``baselines`` has one row per (source, model, kh, kw, kind) of held-out surrogate
    counts (:func:`kernelatlas.null.measure_baselines`); ``null`` is the kind the thresholds
    were calibrated on (default: ``config["null"]``). Each model row gets
    :func:`baseline_block`, and ``null_coverage`` / ``init_coverage``: the held-out rates of
    the calibrating null and of the fresh initialisation (None where unknown).

    ``skipped`` lists, per (source, model, kh, kw), the layers and kernels of sizes the atlas
    cannot name (``kernelatlas.sizes.unsupported_reason``), with that reason.
    """
    null = null or config.get("null", "gaussian")
    tables = coverage_tables(counts)
    models = tables["models"]
    ae_cols = (
        [
            "ae_coverage",
            "ae_null_coverage",
            "agreement",
            "agreement_kernels",
            "agreement_both_classified",
            "agreement_both_kernels",
        ]
        if autoencoder
        else []
    )
    if autoencoder:
        nulls = pd.DataFrame(autoencoder.get("by_size", []))
        if len(nulls):
            models = models.merge(
                nulls[["kh", "kw", "null_coverage"]].rename(
                    columns={"null_coverage": "ae_null_coverage"}
                ),
                on=["kh", "kw"],
                how="left",
            )
    records = _records(models, MODEL_KEYS, ae_cols)
    if baselines is None:
        baselines = pd.DataFrame(columns=[*MODEL_KEYS, "kind"])
    rank = {k: i for i, k in enumerate(NULLS)}  # registry order; unknown kinds last
    baselines = baselines.assign(_rank=baselines["kind"].map(lambda k: rank.get(k, len(rank))))
    baselines = baselines.sort_values("_rank", kind="stable").drop(columns="_rank")
    groups = dict(list(baselines.groupby(MODEL_KEYS, sort=False)))
    for row, rec in zip(records, models.to_dict(orient="records"), strict=True):
        rows = groups.get(tuple(rec[k] for k in MODEL_KEYS), baselines.iloc[:0])
        live = int(rec["kernels"]) - int(rec["n_degenerate"])
        fam = {f: int(rec[f"n_{f}"]) for f in PATTERN_FAMILIES}
        block = baseline_block(int(rec["classified"]), live, fam, rows)
        row["null_coverage"] = block["baselines"].get(null, {}).get("coverage")
        row["init_coverage"] = block["baselines"].get("init", {}).get("coverage")
        row.update(block)
    thresholds = [dict(t) for t in thresholds]
    for t in thresholds:
        if "heldout_surrogates" in t:
            n, k = int(t["heldout_surrogates"]), int(t["heldout_classified"])
            t["heldout_rate"] = _rate(k, n)
            t["heldout_interval"] = _interval(*wilson_interval(k, n))
    kinds = sorted(set(baselines["kind"]) | {null}, key=lambda k: rank.get(k, len(rank)))
    return {
        "schema_version": 1,
        "kernelatlas_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": config,
        "thresholds": thresholds,
        "nulls": _nulls_doc(null, kinds, config.get("null_fpr")),
        "models": records,
        "layers": _records(
            tables["layers"], LAYER_KEYS, ["ae_coverage", "agreement"] if autoencoder else []
        ),
        "autoencoder": autoencoder,
        "skipped": list(skipped or []),
    }
