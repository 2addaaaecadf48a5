"""The "compared with biology" section of an analysis report (summary.json, figures, HTML).

:func:`biology_section` computes the comparison for an analysis directory (its
``kernels.parquet`` and ``summary.json`` config); :meth:`BiologySection.doc` is the
``biology`` entry of summary.json, :meth:`BiologySection.figures` writes the PNGs and
:func:`render_html` turns the entry and the figure names into the section's HTML. The report
module only calls these three, so a redesigned report can reuse them as they are.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import KernelAtlasError
from ..null import DEFAULT_NULL_SIZE
from ..report.labels import percent
from ..taxonomy import DEFAULT_NULL_FPR
from .comparison import BIOLOGY_NULL_SIZE, compare, group_statistics, label_kernels
from .literature import sources
from .statistics import STATISTICS

__all__ = ["BiologySection", "biology_section", "init_kernels", "render_html", "SUMMARY_STATISTICS",
           "REPORT_KERNELS_PER_SIZE"]  # fmt: skip

# classified kernels per kernel size behind the report's comparison (a seeded sample, its
# models sharing it equally): the section's cost does not grow with the number of kernels
REPORT_KERNELS_PER_SIZE = 2_000

# statistics drawn in the summary figure (the order of its panels)
SUMMARY_STATISTICS: tuple[str, ...] = (
    "surround_ratio", "surround_weight", "opponent_ratio", "odd_share", "phase_purity",
    "elongation", "cardinal_bias",
)  # fmt: skip


def _json(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if x is pd.NA:
        return None
    return x


@dataclass
class BiologySection:
    """The comparison of one analysis: the tidy table, the per-kernel statistics and settings."""

    table: pd.DataFrame
    stats: pd.DataFrame  # kernel_statistics rows of every group, with a ``group`` column
    settings: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        """The ``biology`` entry of summary.json (NaN written as null)."""
        rows = [{k: _json(v) for k, v in r.items()} for r in self.table.to_dict(orient="records")]
        src = [{k: _json(v) for k, v in r.items()} for r in sources().to_dict(orient="records")]
        return {**self.settings, "rows": rows, "sources": src}

    def figures(self, fig_dir: Path, *, dpi: int = 110) -> list[str]:
        """Write ``biology_summary.png`` and ``biology_<kh>x<kw>.png``; return their names."""
        from ..report.figures import pyplot
        from .figures import plot_distribution_row, plot_family_orders, plot_statistic

        plt = pyplot()

        made = []
        if not len(self.table):
            return made
        n_rows = self.table[["model", "kh", "kw"]].drop_duplicates().shape[0]
        panels = [*SUMMARY_STATISTICS, "orders"]
        ncols = 4
        nrows = int(np.ceil(len(panels) / ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, (0.32 * n_rows + 1.2) * nrows),
                                 squeeze=False)  # fmt: skip
        for i, (ax, name) in enumerate(zip(axes.flat, panels)):
            labels = i % ncols == 0
            if name == "orders":
                plot_family_orders(ax, self.table, labels=labels)
            else:
                plot_statistic(ax, self.table, name, labels=labels)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        handles, names = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in names:
                    handles.append(h)
                    names.append(lab)
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 7), fontsize=7,
                   bbox_to_anchor=(0.5, -0.01))  # fmt: skip
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        made.append(_save(fig, fig_dir / "biology_summary.png", dpi))

        pub = self.table.drop_duplicates("statistic").set_index("statistic")["published_value"]
        for (kh, kw), st in self.stats.groupby(["kh", "kw"], sort=True):
            fig, axes = plt.subplots(1, 5, figsize=(19, 3.3))
            plot_distribution_row(axes, st, published_opponent=pub.get("opponent_ratio"))
            fig.suptitle(f"{kh}x{kw} kernels, all models pooled: trained vs null vs fresh init",
                         fontsize=9)  # fmt: skip
            fig.tight_layout()
            made.append(_save(fig, fig_dir / f"biology_{kh}x{kw}.png", dpi))
        return made


def _save(fig: Any, path: Path, dpi: int) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path.name


def init_kernels(
    models: dict[str, str],
    *,
    fold_bn: bool = False,
    null_fpr: float = DEFAULT_NULL_FPR,
    n_null: int = DEFAULT_NULL_SIZE,
    seed: int = 0,
    harvested: dict[str, Any] | None = None,
) -> pd.DataFrame | None:
    """A kernels table of the freshly initialised twin of every source that has one.

    ``models`` maps each trained source to its model name; the twins' rows carry those
    names (so :func:`~kernelatlas.biology.compare` pairs them). None when no source has a
    known twin or the twins cannot be built here (e.g. timm is not installed).
    ``harvested``: twins already harvested (unfolded), by trained source: used as they are
    (without ``fold_bn``), instead of building the models again.
    """
    from ..harvest import harvest
    from ..harvest.zoo import init_twin

    parts = []
    for src, model in models.items():
        try:
            twin = init_twin(src)
        except KernelAtlasError:
            twin = None
        if twin is None:
            continue
        if harvested is not None and not fold_bn and src in harvested:
            res = harvested[src]  # the analysis's own twin (harvested unfolded)
        else:
            try:
                res = harvest(twin, fold_bn=fold_bn)
            except (KernelAtlasError, ImportError):
                continue  # no timm here: the init columns stay empty for this source
        by_size: dict[tuple[int, int], list[np.ndarray]] = {}
        for layer in res.layers:
            shape = tuple(int(s) for s in layer.weights.shape[1:])
            if len(shape) == 2 and min(shape) >= 3:
                by_size.setdefault(shape, []).append(np.asarray(layer.weights, np.float32))
        for _, arrs in sorted(by_size.items()):
            parts.append(label_kernels(np.concatenate(arrs), source=src, model=model,
                                       null_fpr=null_fpr, n_null=n_null, seed=seed))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else None


def biology_section(
    run_dir: str | os.PathLike[str],
    summary: dict[str, Any],
    *,
    init: bool | None = None,
    n_biology_null: int = BIOLOGY_NULL_SIZE,
    max_kernels: int | None = 20_000,
    max_per_size: int | None = REPORT_KERNELS_PER_SIZE,
    kernels: pd.DataFrame | None = None,
    twins: dict[str, Any] | None = None,
) -> BiologySection:
    """The comparison for an analysis directory, calibrated as its summary's config says.

    ``init``: compare with the freshly initialised twins (None: as the analysis did, i.e.
    not with ``--no-init-baseline``). ``max_kernels`` (per source, model and size) and
    ``max_per_size`` (per size, its models sharing it equally) bound the seeded sample of
    classified kernels of each group (trained, null, fresh init); None: no bound.
    ``kernels``: the trained group's rows as :func:`~kernelatlas.biology.comparison.sample_kernels`
    samples them, with their ``weights`` (read elsewhere); None: read from ``run_dir``.
    ``twins``: the fresh-init twins the analysis harvested (:func:`init_kernels`'s ``harvested``).
    """
    cfg = summary.get("config", {})
    if init is None:
        init = bool(cfg.get("init_baseline", True))
    kw = {"null_fpr": float(cfg.get("null_fpr", DEFAULT_NULL_FPR)),
          "n_null": int(cfg.get("n_null", DEFAULT_NULL_SIZE)), "seed": int(cfg.get("seed", 0))}  # fmt: skip
    device = cfg.get("device")
    fits = bool(cfg.get("fit", True))  # like the analysis: no fits anywhere with --no-fit
    path = Path(run_dir) / "kernels.parquet"
    init_table = None
    if init:
        listed = pd.DataFrame(summary.get("models", []), columns=["source", "model"])
        models = listed.drop_duplicates("source").set_index("source")["model"].to_dict()
        init_table = init_kernels(models, fold_bn=bool(cfg.get("fold_bn", False)), harvested=twins, **kw)  # fmt: skip
    stats = group_statistics(path if kernels is None else kernels, init=init_table, n_biology_null=n_biology_null,
                             max_kernels=max_kernels, device=device, fits=fits,
                             max_per_size=max_per_size, **kw)  # fmt: skip
    table = compare(path, init=init_table, statistics=stats, max_kernels=max_kernels, device=device,
                    fits=fits, max_per_size=max_per_size, **kw)  # fmt: skip
    merged = pd.concat([s.assign(group=g) for g, s in stats.items()], ignore_index=True)
    settings = {
        "null_kind": "gaussian",
        "null_kernels_per_size": int(n_biology_null),
        "null_fpr": kw["null_fpr"],
        "max_kernels": max_kernels,
        "max_per_size": max_per_size,
        "fits": fits,
        "statistics": {k: s.description for k, s in STATISTICS.items()},
    }
    return BiologySection(table=table, stats=merged, settings=settings)


# --------------------------------------------------------------------------- HTML
def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, lo: Any = None, hi: Any = None) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    s = f"{float(v):.2f}"
    if lo is not None and hi is not None:
        s += f" <span class='meta'>[{float(lo):.2f}, {float(hi):.2f}]</span>"
    return s


def _sample_text(doc: dict[str, Any]) -> str:
    """What the section's numbers rest on: the sample's bounds (n per row in the table)."""
    per_model, per_size = doc.get("max_kernels"), doc.get("max_per_size")
    if per_model is None and per_size is None:
        return "Every classified kernel counts."
    bounds = []
    if per_model is not None and (per_size is None or per_model < per_size):  # else it never binds
        bounds.append(f"{per_model:,} per model and size")
    if per_size is not None:
        bounds.append(f"{per_size:,} per kernel size, its models sharing them equally")
    return (
        "Each group (trained, null, fresh init) is a seeded uniform sample of its classified "
        "kernels, at most "
        + " and at most ".join(bounds)
        + " (n in the table: the intervals are those of the sample)."
    )


def render_html(doc: dict[str, Any] | None, figures: list[str]) -> str:
    """The section's HTML from the summary.json entry and the figure file names."""
    if not doc:
        return ""
    rows = doc.get("rows", [])
    head = ("<tr><th class='l'>model</th><th>size</th><th class='l'>statistic</th><th>trained</th>"
            "<th>n</th><th>null</th><th>n</th><th>fresh init</th><th>n</th><th>published</th>"
            "<th class='l'>sources</th><th class='l'>note</th></tr>")  # fmt: skip
    body = "".join(
        f"<tr><td class='l'>{_e(r['model'])}</td><td>{r['kh']}x{r['kw']}</td><td class='l'>{_e(r['label'])}</td>"
        f"<td>{_fmt(r['kernels_value'], r['kernels_lo'], r['kernels_hi'])}</td><td>{r['kernels_n']:,}</td>"
        f"<td>{_fmt(r['null_value'])}</td><td>{r['null_n']:,}</td><td>{_fmt(r['init_value'])}</td><td>{r['init_n']:,}</td>"
        f"<td>{_fmt(r['published_value'])}{' (upper bound)' if r['published_relation'] == '<=' and r['published_value'] is not None else ''}"
        f"{'qualitative' if r['published_relation'] == 'qualitative' else ''}</td>"
        f"<td class='l'>{_e((r['published_refs'] or '').replace(';', ', '))}</td><td class='l'>{_e(r['note'] or '')}</td></tr>"
        for r in rows
    )
    src = "".join(
        f"<tr><td class='l'>{_e(s['ref_id'])}</td><td class='l'>{_e(s['authors'])} ({s['year']}). {_e(s['title'])}. "
        f"<i>{_e(s['journal'])}</i> {_e(s['volume'])}, {_e(s['pages'])}. doi:{_e(s['doi'])}"
        f"{'' if s['doi_verified'] else ' (DOI not shown in the record read)'}</td>"
        f"<td class='l'>{_e(s['species'])}, {_e(s['area'])}</td><td class='l'>{_e(s['statistics'])}</td>"
        f"<td class='l'>{_e(s['verified_from'])}</td></tr>"
        for s in doc.get("sources", [])
    )
    figs = "".join(
        f'<figure><img src="figures/{_e(f)}" alt="{_e(f)}"><figcaption>'
        + (
            "Each statistic per model and size: trained kernels (median with quartiles, or share/index with a 95% "
            "interval; n beside the marker), the iid Gaussian null through the same atlas and fits, the fresh "
            "initialisation, and the published value where one number maps onto the statistic."
            if f == "biology_summary.png"
            else "Distributions behind the summary for one kernel size, all models pooled."
        )
        + "</figcaption></figure>"
        for f in figures
    )
    return (
        "<h2 id='biology'>Compared with biology</h2>"
        "<p>The kernels beside published receptive-field statistics of cats and monkeys, in dimensionless "
        "quantities only (kernels are in pixels, receptive fields in degrees of visual angle). Only classified "
        "kernels count; the null is iid Gaussian kernels named by the same calibrated atlas and fitted the same "
        f"way ({doc.get('null_kernels_per_size', 0):,} per size, about {percent(doc.get('null_fpr', 0))} of them "
        f"classified). {_sample_text(doc)} Where the analogy breaks: a kernel's support truncates any surround (a 3x3 kernel cannot hold "
        "a DoG with a wide surround), the atlas names centred kernels so a blob with a positive pedestal also counts "
        "as centre-surround (the raw opponent ratio tells them apart), and most published findings are qualitative "
        "(no number is invented for them). See docs/biology.md.</p>"
        + figs
        + f"<details><summary>Table ({len(rows)} rows)</summary><div class='tw'><table><thead>{head}</thead>"
        f"<tbody>{body}</tbody></table></div></details>"
        "<h3>Sources</h3><div class='tw'><table><thead><tr><th class='l'>id</th><th class='l'>citation</th>"
        "<th class='l'>species, area</th><th class='l'>taken</th><th class='l'>verified from</th></tr></thead>"
        f"<tbody>{src}</tbody></table></div>"
    )
