"""One report across earlier analyses (trained vs fresh init, or training checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import write_marker
from ..errors import KernelAtlasError
from ..outputs import replacing
from ..taxonomy import FAMILIES
from . import load_summary, write_json
from .figures import FAMILY_COLORS, plain_text
from .html import CSS, _e, _fig, _pct

__all__ = ["compare", "comparison_table"]


def comparison_table(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, model, size): coverage, null, fresh init and family shares."""
    rows = []
    for run, doc in summaries.items():
        for m in doc["models"]:
            rows.append(
                {"run": run, "model": m["model"], "size": f"{m['kh']}x{m['kw']}", "kernels": m["kernels"],
                 "coverage": m["coverage"], "null_coverage": m.get("null_coverage"),
                 "init_coverage": m.get("init_coverage"),
                 **{f"share_{f}": m["family_shares"].get(f) for f in FAMILIES}}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _layer_frame(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "run": run,
            "model": r["model"],
            "size": f"{r['kh']}x{r['kw']}",
            "depth": r["depth"],
            "coverage": r["coverage"],
        }
        for run, doc in summaries.items()
        for r in doc["layers"]
    ]
    return pd.DataFrame(rows)


def compare(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    force: bool = False,
) -> Path:
    """Write ``out/index.html`` (+ figures, comparison.json) comparing earlier analyses.

    ``out`` follows the rules of :mod:`kernelatlas.outputs` (never a run folder, a folder
    holding one, or a file; ``force`` replaces a folder kernelatlas did not write); it is
    replaced atomically. Returns ``out`` resolved.
    """
    if len(run_dirs) < 2:
        raise KernelAtlasError("compare needs at least two analysis directories")
    labels = list(labels) if labels else [Path(d).name or str(d) for d in run_dirs]
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise KernelAtlasError("give one distinct label per directory (--labels A B ...)")
    summaries = {lab: load_summary(d) for lab, d in zip(labels, run_dirs)}
    with replacing(out, kind="comparison", inputs=run_dirs, force=force) as stage:
        _write_comparison(stage.path, stage.out, run_dirs, labels, summaries)
        stage.publish()
    return stage.out


@plain_text
def _write_comparison(
    staging: Path,
    out: Path,
    run_dirs: Sequence[str | os.PathLike[str]],
    labels: list[str],
    summaries: dict[str, dict[str, Any]],
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = comparison_table(summaries)
    layers = _layer_frame(summaries)
    (staging / "figures").mkdir(parents=True, exist_ok=True)
    write_marker(staging / "figures", "figures")

    keys = table[["model", "size"]].drop_duplicates().to_numpy().tolist()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * len(labels) / 2 + 2), 3.6))
    w = 0.8 / len(labels)
    x = np.arange(len(keys))
    for i, lab in enumerate(labels):
        sub = table[table["run"] == lab].set_index(["model", "size"])
        vals = [
            100 * float(sub.loc[tuple(k), "coverage"]) if tuple(k) in sub.index else 0.0
            for k in keys
        ]
        ax.bar(x + (i - (len(labels) - 1) / 2) * w, vals, w, label=lab)
    ax.set_xticks(x, [f"{m}\n{s}" for m, s in keys], fontsize=7)
    ax.set_ylabel("kernels classified (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.savefig(staging / "figures" / "coverage.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for lab in labels:
        for (model, size), df in layers[layers["run"] == lab].groupby(["model", "size"]):
            df = df.sort_values("depth")
            ax.plot(
                df["depth"],
                100 * df["coverage"].astype(float),
                marker="o",
                ms=3,
                label=f"{lab}: {model} {size}",
            )
    ax.set_xlabel("relative depth")
    ax.set_ylabel("classified (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=6)
    fig.savefig(staging / "figures" / "layers.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(table) + 2), 3.4))
    bottom = np.zeros(len(table))
    for f in FAMILIES:
        v = table[f"share_{f}"].astype(float).fillna(0).to_numpy()
        ax.bar(np.arange(len(table)), v, bottom=bottom, color=FAMILY_COLORS[f], label=f)
        bottom += v
    ax.set_xticks(
        np.arange(len(table)),
        [f"{r}\n{m} {s}" for r, m, s in zip(table["run"], table["model"], table["size"])],
        fontsize=6,
    )
    ax.set_ylabel("share of kernels")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(staging / "figures" / "families.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    rows = "".join(
        f"<tr><td class='l'>{_e(r.run)}</td><td class='l'>{_e(r.model)}</td><td>{_e(r.size)}</td><td>{r.kernels:,}</td>"
        f"<td><b>{_pct(r.coverage)}</b></td><td>{_pct(r.null_coverage)}</td><td>{_pct(r.init_coverage)}</td>"
        + "".join(f"<td>{_pct(getattr(r, f'share_{f}'))}</td>" for f in FAMILIES)
        + "</tr>"
        for r in table.itertuples()
    )
    head = "".join(f"<th>{_e(f)}</th>" for f in FAMILIES)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>kernelatlas comparison</title>"
        f"<style>{CSS}</style></head><body><h1>kernelatlas comparison</h1>"
        f"<p class='meta'>kernelatlas {__version__} · runs: "
        + ", ".join(
            f"<a href='{_e(os.path.relpath(Path(d).resolve() / 'index.html', out.resolve()))}'>{_e(lab)}</a>"
            for lab, d in zip(labels, run_dirs)
        )
        + "</p><table><thead><tr><th class='l'>run</th><th class='l'>model</th><th>size</th><th>kernels</th>"
        f"<th>classified</th><th>null</th><th>fresh init</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        + _fig("coverage.png", "Coverage per run")
        + _fig("layers.png", "Coverage against relative depth, per run")
        + _fig("families.png", "Family shares per run")
        + "</body></html>"
    )
    (staging / "index.html").write_text(page)
    write_json(
        staging / "comparison.json",
        {
            "kernelatlas_version": __version__,
            "runs": labels,
            "rows": table.replace({np.nan: None}).to_dict(orient="records"),
        },
    )
