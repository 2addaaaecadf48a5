"""One report across earlier analyses (trained vs fresh init, or training checkpoints).

Runs are compared only where their numbers mean the same: :func:`comparability` lists what
differs between them (the null the thresholds were calibrated on, its false-positive rate,
the kernelatlas version, the method); the page and comparison.json say it at the top, and
``strict=True`` refuses. Rows are kept apart by source (two files of one model are two
rows), and a missing value is written as a dash, never ``nan%``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import KernelAtlasError
from ..outputs import replacing
from ..taxonomy import FAMILIES
from . import load_summary, write_json
from .figures import family_color, family_handles, plain_text
from .html import CSS, _e, _num, _pct
from .labels import source_labels
from .sections import Figure, ReportContext

__all__ = ["compare", "comparison_table", "comparability", "COMPARED_SETTINGS"]

# What two runs must share for their coverages to be compared: (where, label).
COMPARED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("config.null", "null the thresholds were calibrated on"),
    ("config.null_fpr", "false-positive rate on the null"),
    ("kernelatlas_version", "kernelatlas version"),
    ("config.method", "method"),
)


def _get(doc: dict[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def comparability(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between the runs among :data:`COMPARED_SETTINGS` (empty: comparable).

    Each entry reads e.g. ``false-positive rate on the null: a = 0.01, b = 0.05``.
    """
    out = []
    for key, label in COMPARED_SETTINGS:
        values = {run: _get(doc, key) for run, doc in summaries.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out.append(f"{label}: " + ", ".join(f"{run} = {v}" for run, v in values.items()))
    return out


def comparison_table(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, source, size): coverage, null, fresh init and family shares."""
    rows = []
    for run, doc in summaries.items():
        for m in doc["models"]:
            shares = m.get("family_shares") or {}
            rows.append(
                {"run": run, "source": m["source"], "model": m["model"], "size": f"{m['kh']}x{m['kw']}",
                 "kernels": m["kernels"], "coverage": m["coverage"], "null_coverage": m.get("null_coverage"),
                 "init_coverage": m.get("init_coverage"),
                 **{f"share_{f}": shares.get(f) for f in FAMILIES}}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _layer_frame(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {"run": run, "source": r["source"], "model": r["model"], "size": f"{r['kh']}x{r['kw']}",
         "layer_index": r["layer_index"], "depth": r["depth"], "coverage": r["coverage"]}
        for run, doc in summaries.items()
        for r in doc["layers"]
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _figures(ctx: ReportContext, table: pd.DataFrame, layers: pd.DataFrame, runs: list[str], labels: dict[str, str]) -> list[Figure]:  # fmt: skip
    plt = ctx.plt
    keys = table[["source", "size"]].drop_duplicates().to_numpy().tolist()
    names = [f"{labels.get(s, s)}  {z}" for s, z in keys]
    fig, ax = plt.subplots(figsize=(8.5, 0.9 + 0.3 * len(keys) * max(1, len(runs) / 2)))
    h = 0.8 / len(runs)
    y = np.arange(len(keys))
    for i, run in enumerate(runs):
        sub = table[table["run"] == run].set_index(["source", "size"])
        vals = [100 * float(sub.loc[tuple(k), "coverage"]) if tuple(k) in sub.index and sub.loc[tuple(k), "coverage"] is not None else np.nan for k in keys]  # fmt: skip
        ax.barh(y + (i - (len(runs) - 1) / 2) * h, np.nan_to_num(vals), h, label=run)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("kernels classified (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    figs = [ctx.save(fig, "coverage.png", "Coverage per run")]

    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    for run in runs:
        for (source, size), df in layers[layers["run"] == run].groupby(
            ["source", "size"], sort=False
        ):
            df = df.sort_values("depth")
            ax.plot(df["depth"], 100 * pd.to_numeric(df["coverage"]).astype(float), marker="o", ms=3,
                    label=f"{run}: {labels.get(source, source)} {size}")  # fmt: skip
    ax.set_xlabel("relative depth")
    ax.set_ylabel("classified (%)")
    ax.set_ylim(0, 100)
    if len(layers):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    figs.append(ctx.save(fig, "layers.png", "Coverage against relative depth, per run"))

    # Horizontal stacked bars: one row per (run, source, size), its label never overprinted.
    fig, ax = plt.subplots(figsize=(8.5, 0.9 + 0.32 * max(len(table), 1)))
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for f in FAMILIES:
        v = pd.to_numeric(table[f"share_{f}"]).astype(float).fillna(0).to_numpy()
        ax.barh(y, v, left=left, color=family_color(f), height=0.8)
        left += v
    names = [f"{r}: {labels.get(s, s)} {z}" for r, s, z in zip(table["run"], table["source"], table["size"])]  # fmt: skip
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()  # first run on top, as in the table
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of kernels")
    ax.legend(handles=family_handles(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # fmt: skip
    figs.append(ctx.save(fig, "families.png", "Family shares per run"))
    return figs


def compare(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    force: bool = False,
    strict: bool = False,
) -> Path:
    """Write ``out/index.html`` (one self-contained file; + figures/, comparison.json)
    comparing earlier analyses.

    Runs that differ in a setting of :data:`COMPARED_SETTINGS` are flagged on the page and
    in comparison.json (``comparable: false`` with the ``differences``); with ``strict``
    they are refused. ``out`` follows the rules of :mod:`kernelatlas.outputs` (never a run
    folder, a folder holding one, or a file; with ``force`` a folder kernelatlas did not
    write is moved aside to ``NAME.previous``); it is replaced atomically. Returns ``out``
    resolved.
    """
    if len(run_dirs) < 2:
        raise KernelAtlasError("compare needs at least two analysis directories")
    seen: dict[Path, str] = {}
    for d in run_dirs if not labels else ():  # unlabelled, a run twice is a slip
        key = Path(d).expanduser().resolve()
        if key in seen:
            raise KernelAtlasError(
                f"{d} is given twice (as {seen[key]}): name each run once, or give each its "
                "own --labels"
            )
        seen[key] = str(d)
    labels = list(labels) if labels else [Path(d).name or str(d) for d in run_dirs]
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise KernelAtlasError("give one distinct label per directory (--labels A B ...)")
    summaries = {lab: load_summary(d) for lab, d in zip(labels, run_dirs)}
    differences = comparability(summaries)
    if strict and differences:
        raise KernelAtlasError(
            "these runs are not comparable (" + "; ".join(differences) + "): re-run them with the "
            "same settings, or compare without --strict to see them flagged"
        )
    with replacing(out, kind="comparison", inputs=run_dirs, force=force) as stage:
        _write_comparison(stage.path, stage.out, run_dirs, labels, summaries, differences)
        stage.publish()
    return stage.out


@plain_text
def _write_comparison(
    staging: Path,
    out: Path,
    run_dirs: Sequence[str | os.PathLike[str]],
    labels: list[str],
    summaries: dict[str, dict[str, Any]],
    differences: list[str],
) -> None:
    table = comparison_table(summaries)
    layers = _layer_frame(summaries)
    names = source_labels([*(r for d in summaries.values() for r in d["models"])])
    ctx = ReportContext(staging, {"config": {}, "models": [], "layers": []})
    figs = _figures(ctx, table, layers, labels, names)

    rows = "".join(
        f"<tr><td class='l'>{_e(r.run)}</td><td class='l'>{_e(names.get(r.source, r.model))}</td>"
        f"<td class='l'>{_e(r.source)}</td><td>{_e(r.size)}</td><td>{_num(r.kernels)}</td>"
        f"<td><b>{_pct(r.coverage)}</b></td><td>{_pct(r.null_coverage)}</td><td>{_pct(r.init_coverage)}</td>"
        + "".join(f"<td>{_pct(getattr(r, f'share_{f}'))}</td>" for f in FAMILIES)
        + "</tr>"
        for r in table.itertuples()
    )
    settings = "".join(
        f"<tr><td class='l'>{_e(lab)}</td>"
        + "".join(f"<td class='l'>{_e(_get(doc, key))}</td>" for doc in summaries.values())
        + "</tr>"
        for key, lab in COMPARED_SETTINGS
    )
    banner = (
        "<p class='warn' id='ka-incomparable'><b>These runs are not comparable as they stand:</b> "
        + "; ".join(_e(d) for d in differences)
        + ". A coverage depends on the null and false-positive rate its thresholds were calibrated "
        "at (and on the kernelatlas version that named the kernels); re-run them with the same settings "
        "before reading differences between them.</p>"
        if differences
        else "<p class='meta' id='ka-comparable'>The runs share the null, its false-positive rate, the "
        "method and the kernelatlas version.</p>"
    )
    head = "".join(f"<th>{_e(f.replace('_', ' '))}</th>" for f in FAMILIES)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>kernelatlas comparison</title>"
        f"<style>{CSS}</style></head><body><h1>kernelatlas comparison</h1>"
        f"<p class='meta'>kernelatlas {__version__} · runs: "
        + ", ".join(
            f"<a href='{_e(os.path.relpath(Path(d).resolve() / 'index.html', out.resolve()))}'>{_e(lab)}</a>"
            for lab, d in zip(labels, run_dirs)
        )
        + "</p>"
        + banner
        + "<p>One row per run, model (each source file its own) and kernel size. <b>classified</b>: the share "
        "of non-degenerate kernels an atlas pattern matches above the threshold calibrated on the run's null "
        "(random kernels; only the stated false-positive rate of them pass); <b>null</b>: that rate on held-out "
        "null kernels; <b>fresh init</b>: the same architecture untrained; family shares are of all kernels. "
        "Each run's own page (linked above, while the folders stay where they were) has the baselines, "
        "intervals and every kernel.</p>"
        + "<div class='tw'><table><thead><tr><th class='l'>setting</th>"
        + "".join(f"<th class='l'>{_e(lab)}</th>" for lab in labels)
        + f"</tr></thead><tbody>{settings}</tbody></table></div>"
        "<div class='tw'><table><thead><tr><th class='l'>run</th><th class='l'>model</th><th class='l'>source</th><th>size</th>"
        f"<th>kernels</th><th>classified</th><th>null</th><th>fresh init</th>{head}</tr></thead><tbody>{rows}"
        "</tbody></table></div>" + "".join(ctx.img(f) for f in figs) + "</body></html>"
    )
    (staging / "index.html").write_text(page, encoding="utf-8")
    write_json(
        staging / "comparison.json",
        {
            "kernelatlas_version": __version__,
            "runs": labels,
            "comparable": not differences,
            "differences": differences,
            "rows": table.replace({np.nan: None}).to_dict(orient="records"),
        },
    )
