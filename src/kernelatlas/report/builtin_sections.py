"""The built-in sections of the report page (see :mod:`.sections` for the registry).

Order: 10 coverage, 15 baselines, 20 explorer, 30 layers, 40 atlas (the seed's diagram and your
means), 50 examples, 60 fits, 70 autoencoder, 90 method. Other stages register theirs
between (e.g. 80 for biology).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ..taxonomy import FAMILIES, FAMILY_INFO, PAPER_AE_THRESHOLDS, PATTERN_FAMILIES, UNCLASSIFIED
from . import figures as F
from .html import _e, _num, _pct, legend_html, swatch
from .labels import percent
from .sections import Figure, ReportContext, register_section

__all__ = ["models_table", "baselines_table", "family_excess_table", "nulls_table", "layers_figure",
           "thresholds_table"]  # fmt: skip


def _meta(ctx: ReportContext) -> pd.DataFrame:
    """Per-kernel columns (never the weights) read once, row-sampled above a limit."""
    if "meta" not in ctx.cache:
        from .build import read_columns

        cols = ["source", "model", "kh", "kw", "layer", "layer_index", "depth", "channel", "family",
                "orientation", "polarity", "scale", "score", "classified", "fit_sigma"]  # fmt: skip
        ctx.cache["meta"] = read_columns(ctx.kernels_path, cols, seed=ctx.seed)
    return ctx.cache["meta"]


def _models(ctx: ReportContext) -> pd.DataFrame:
    return pd.DataFrame(ctx.summary["models"])


#: Most rows (model, size) the coverage figure draws, and most sources (panels) the layers
#: figure draws: past them a figure shows the first ones, says so in its caption, and the
#: page's tables keep every row (one panel per source of 100 sources took 12 s to draw,
#: growing linearly, into an image no one can read).
COVERAGE_FIGURE_ROWS = 60
LAYERS_FIGURE_SOURCES = 24


def _first_of(n_shown: int, n_all: int, what: str, where: str) -> str:
    """The caption's note when a figure shows only the first ``n_shown`` of ``n_all``."""
    if n_shown >= n_all:
        return ""
    return f" (the first {n_shown} of {n_all} {what}; {where})"


def _sizes(ctx: ReportContext) -> list[tuple[int, int]]:
    return sorted({(int(m["kh"]), int(m["kw"])) for m in ctx.summary["models"]})


def _has_kernels(ctx: ReportContext) -> bool:
    return ctx.kernels_path.exists() and bool(ctx.summary.get("models"))


# --------------------------------------------------------------------------- coverage


def _null_label(summary: dict[str, Any], kind: str | None) -> str:
    """The display label of a null kind (from summary.json's ``nulls``), else its name."""
    return str((summary.get("nulls") or {}).get("kinds", {}).get(kind, {}).get("label", kind))


def _baseline_columns(rows: list[dict[str, Any]], kinds: list[str]) -> pd.DataFrame:
    """``coverage_lo/hi`` and ``baseline_KIND`` (+ ``_lo/_hi``) columns of summary model rows."""
    out: dict[str, list[Any]] = {"coverage_lo": [], "coverage_hi": []}
    for r in rows:
        iv = r.get("coverage_interval") or [np.nan, np.nan]
        out["coverage_lo"].append(iv[0])
        out["coverage_hi"].append(iv[1])
        for k in kinds:
            b = (r.get("baselines") or {}).get(k) or {}
            biv = b.get("interval") or [np.nan, np.nan]
            for suffix, v in (("", b.get("coverage")), ("_lo", biv[0]), ("_hi", biv[1])):
                out.setdefault(f"baseline_{k}{suffix}", []).append(np.nan if v is None else v)
    return pd.DataFrame(out, dtype=float)


def _coverage_figures(ctx: ReportContext) -> Iterator[Figure]:
    models = _models(ctx)
    if not len(models):
        return
    n_all = len(models)
    models = models.iloc[:COVERAGE_FIGURE_ROWS].reset_index(drop=True)
    note = _first_of(len(models), n_all, "model rows", "the table lists every one")
    kinds = (ctx.summary.get("nulls") or {}).get("kinds", {})
    null = _null_label(ctx.summary, ctx.summary["config"]["null"])
    if kinds:
        rows = ctx.summary["models"][: len(models)]
        models = models.join(_baseline_columns(rows, list(kinds)))
    series = F.coverage_series(
        models,
        null_label=f"null ({null}, held out)",
        baselines={k: v["label"] for k, v in kinds.items()} or None,
    )
    fig, ax = ctx.plt.subplots(
        figsize=(8.5, 0.8 + 0.22 * len(models) * max(1.0, len(series) / 2.2))
    )
    F.plot_coverage(ax, models, labels=ctx.labels, series=series)
    ax.set_title(
        f"Classified share of the trained kernels (thresholds from the {null} null), beside "
        "every baseline (held-out surrogates; 95% intervals)",
        fontsize=9,
    )
    yield ctx.save(
        fig,
        "coverage.png",
        f"Classified share of trained kernels (thresholds from the {null} null) beside the "
        f"held-out coverage of every baseline, with 95% intervals{note}",
    )


#: Tooltips of the tables' column headers (what a newcomer asks of each).
HEADER_TIPS: dict[str, str] = {
    "kernels": "depthwise kernels of this size in the model (or layer)",
    "degenerate": "zero, constant or non-finite kernels: counted, never classified",
    "classified": "share of the non-degenerate kernels that an atlas pattern matches above the "
    "threshold calibrated on the null",
    "null (held-out)": "the same rate on null kernels never used to calibrate: about the "
    "false-positive rate by construction",
    "fresh init": "the same rate on the same architecture freshly initialised (held-out half)",
    "strongest baseline": "the baseline with the highest coverage for this row",
    "excess over it": "classified minus the strongest baseline's coverage, in percentage points, "
    "with its 95% interval",
    "depth": "relative depth of the layer in the network: 0 first, 1 last",
    "#": "the layer's index in the network (depthwise layers only)",
    "AE classified": "share the autoencoder classifies (reconstruction distance under its threshold)",
}


def _tip(head: str) -> str:
    """`` title='...'`` for a column header with a tooltip, else ''."""
    tip = HEADER_TIPS.get(head)
    if tip is None and head.replace(" ", "_") in FAMILIES:
        tip = f"share of all kernels named {head}"
    return f" title='{_e(tip)}'" if tip else ""


def models_table(ctx: ReportContext) -> str:
    """Coverage per (source, size): the counts, coverage beside its baselines, family shares."""
    models = ctx.summary["models"]
    with_ae = any(m.get("ae_coverage") is not None for m in models)
    head = ["model", "source", "size", "kernels", "degenerate", "classified", "null (held-out)", "fresh init"]  # fmt: skip
    if with_ae:
        head += [
            "AE classified",
            "AE null",
            "AE/atlas agree (either classified)",
            "agree (both classified)",
        ]
    head += [f.replace("_", " ") for f in FAMILIES]
    rows = []
    for m in models:
        cells = [
            f'<td class="l">{_e(ctx.labels.get(m["source"], m["model"]))}</td>',
            f'<td class="l">{_e(m["source"])}</td>',
            f"<td>{m['kh']}x{m['kw']}</td>",
            f"<td data-v='{m['kernels']}'>{_num(m['kernels'])}</td>",
            f"<td data-v='{m['degenerate']}'>{_num(m['degenerate'])}</td>",
            f"<td data-v='{m['coverage']}'><b>{_pct(m['coverage'])}</b></td>",
            f"<td>{_pct(m.get('null_coverage'))}</td>",
            f"<td>{_pct(m.get('init_coverage'))}</td>",
        ]
        if with_ae:
            keys = ("ae_coverage", "ae_null_coverage", "agreement", "agreement_both_classified")
            cells += [f"<td>{_pct(m.get(k))}</td>" for k in keys]
        cells += [f"<td>{_pct((m.get('family_shares') or {}).get(f))}</td>" for f in FAMILIES]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(
        f'<th class="{"l" if i < 2 else ""}"{_tip(h)}>{_e(h)}</th>' for i, h in enumerate(head)
    )
    return (
        f"<div class='tw'><table class='sortable-table' id='ka-models-table'><thead><tr>{th}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


@register_section("coverage", title="Coverage per model and kernel size", order=10,
                  figures=_coverage_figures)  # fmt: skip
def _coverage(ctx: ReportContext) -> str:
    cfg = ctx.summary["config"]
    null = _null_label(ctx.summary, cfg["null"])
    held = (
        "; with <code>--null init</code>, the half of the fresh-init kernels not used to calibrate"
        if cfg["null"] == "init"
        else ""
    )
    return (
        "<p>A kernel is <i>classified</i> when it matches an atlas pattern more closely than the "
        "calibrated threshold allows for null (random) kernels: at most the stated false-positive rate of null "
        f"kernels pass. The thresholds here were calibrated on the <b>{_e(null)}</b> null. <b>null</b>: the rate "
        f"on held-out surrogates of that null (for this model{held}); <b>fresh init</b>: coverage of the held-out "
        "half of the same architecture freshly initialised. Coverage excludes degenerate kernels; family shares "
        "are of all kernels. Click a column to sort.</p>"
        + models_table(ctx)
        + _skipped_note(ctx.summary.get("skipped") or [])
        + ctx.figure_html("coverage")
    )


def _skipped_note(skipped: list[dict[str, Any]]) -> str:
    """Kernel sizes the atlas cannot name: counted and listed with the reason."""
    if not skipped:
        return ""
    items = "".join(
        f"<li>{_e(r['model'])} ({_e(r['source'])}): {r['kernels']:,} kernels in {r['layers']} "
        f"layers of size {r['kh']}x{r['kw']} &mdash; {_e(r['reason'])}</li>"
        for r in skipped
    )
    return f"<p><b>Not analysed</b> (every other layer was):</p><ul>{items}</ul>"


# --------------------------------------------------------------------------- baselines


def _ci(iv: Any, signed: bool = False) -> str:
    if not iv:
        return ""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f" <span class='ci'>[{f.format(100 * iv[0])}, {f.format(100 * iv[1])}]</span>"


def _pp(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):+.1f} pp"


def baselines_table(ctx: ReportContext) -> str:
    """Coverage beside every baseline (held-out surrogates, with their count) and the excess."""
    kinds = list((ctx.summary.get("nulls") or {}).get("kinds", {}))
    head = ["model", "size", "classified", *(_null_label(ctx.summary, k) for k in kinds)]
    head += ["strongest baseline", "excess over it"]
    rows = []
    for m in ctx.summary["models"]:
        base = m.get("baselines") or {}
        cells = [f'<td class="l">{_e(ctx.labels.get(m["source"], m["model"]))}</td>',
                 f"<td>{m['kh']}x{m['kw']}</td>",
                 f"<td data-v='{m['coverage']}'><b>{_pct(m['coverage'])}</b>"
                 f"{_ci(m.get('coverage_interval'))}</td>"]  # fmt: skip
        for k in kinds:
            b = base.get(k)
            cells.append(
                "<td>–</td>"
                if not b
                else f"<td data-v='{b['coverage']}'>{_pct(b['coverage'])}{_ci(b['interval'])}"
                f"<br><span class='ci'>n={b['surrogates']:,}</span></td>"
            )
        ex = m.get("excess") or {}
        label = _null_label(ctx.summary, ex.get("baseline")) if ex else "–"
        cells.append(f"<td class='l'>{_e(label)}</td>")
        cells.append(
            f"<td data-v='{ex.get('excess')}'><b>{_pp(ex.get('excess'))}</b>"
            f"{_ci(ex.get('interval'), True)}</td>"
        )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(
        f'<th class="{"l" if i == 0 else ""}"{_tip(h)}>{_e(h)}</th>' for i, h in enumerate(head)
    )
    return (
        f"<div class='tw'><table class='sortable-table' id='ka-baselines-table'><thead><tr>{th}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def family_excess_table(ctx: ReportContext) -> str:
    """Per family: the trained share, the strongest baseline's share, and the excess."""
    head = "<th class='l'>model</th><th>size</th><th class='l'>strongest baseline</th>" + "".join(
        f"<th>{_e(f.replace('_', ' '))}: trained / baseline / excess</th>" for f in PATTERN_FAMILIES
    )
    rows = []
    for m in ctx.summary["models"]:
        ex = m.get("excess")
        if not ex:
            continue
        b = m["baselines"][ex["baseline"]]
        live = m["kernels"] - m["degenerate"]
        cells = [f'<td class="l">{_e(ctx.labels.get(m["source"], m["model"]))}</td>'
                 f"<td>{m['kh']}x{m['kw']}</td>",
                 f"<td class='l'>{_e(_null_label(ctx.summary, ex['baseline']))}</td>"]  # fmt: skip
        for f in PATTERN_FAMILIES:
            share = (m.get("family_shares") or {}).get(f)
            trained = share * m["kernels"] / live if live and share is not None else None
            fe = (ex.get("family_excess") or {}).get(f) or {}
            cells.append(
                f"<td>{_pct(trained)} / {_pct((b.get('family_shares') or {}).get(f))} / "
                f"<b>{_pp(fe.get('excess'))}</b>{_ci(fe.get('interval'), True)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )


def nulls_table(nulls: dict[str, Any]) -> str:
    """What each baseline keeps, rules out and leaves open (summary.json's ``nulls.kinds``)."""
    rows = "".join(
        f"<tr><td class='l'><b>{_e(k)}</b><br>{_e(v['label'])}</td><td class='l'>{_e(v['keeps'])}</td>"
        f"<td class='l'>{_e(v['rules_out'])}</td><td class='l'>{_e(v['leaves_open'])}</td></tr>"
        for k, v in nulls.get("kinds", {}).items()
    )
    return (
        "<div class='tw'><table><thead><tr><th class='l'>baseline</th><th class='l'>its surrogates keep</th>"
        "<th class='l'>beating it rules out</th><th class='l'>it does not rule out</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def _has_baselines(ctx: ReportContext) -> bool:
    return bool((ctx.summary.get("nulls") or {}).get("kinds")) and bool(ctx.summary.get("models"))


@register_section("baselines", title="Coverage beside every baseline", order=15,
                  applies=_has_baselines)  # fmt: skip
def _baselines(ctx: ReportContext) -> str:
    nulls = ctx.summary.get("nulls") or {}
    return (
        "<p>Each baseline is a null kind: surrogate kernels that keep some property of real kernels and "
        "nothing else, named under the same thresholds (held-out surrogates: never the ones the thresholds "
        "were calibrated on; <i>n</i> = their count). The <b>excess</b> is the trained coverage minus the "
        "strongest baseline's, in percentage points. Classified kernels beyond a baseline are structure that "
        "its property does not explain; the excess over the covariance-matched null is conservative, since "
        "that null is built from the model's own kernels and keeps part of the structure under test. "
        f"Intervals: {_e(nulls.get('intervals', ''))}; the trained coverage's interval treats the kernels as "
        "draws from what training produces.</p>"
        + baselines_table(ctx)
        + "<p>Per family (shares of non-degenerate kernels, so they add up to the coverage): trained share, "
        "the strongest baseline's share, and the excess.</p>"
        + family_excess_table(ctx)
        + "<p>What each baseline rules out, and what it does not:</p>"
        + nulls_table(nulls)
    )


# --------------------------------------------------------------------------- explorer


def _cmap(n: int = 65) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps[F.KERNEL_CMAP]
    return [matplotlib.colors.to_hex(cmap(x)) for x in np.linspace(0, 1, n)]


def _thresholds(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in summary.get("thresholds", []):
        if t.get("method", "atlas") == "atlas":
            out.setdefault(f"{t['kh']}x{t['kw']}", {})[t["family"]] = float(t["threshold"])
    return out


def _explorer_data(ctx: ReportContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The explorer's payload and its kept kernels as read (:func:`.explorer.explorer_payload`'s
    ``stash``), made once: the example figures draw from the same kernels, and the weights
    of ``ctx.cache["extra_rows"]`` (the biology sample) come in the same pass, so the bank
    is read once for the page."""
    if "explorer" not in ctx.cache and "page" in ctx.cache:  # read by the page's pass
        explorer, _ = ctx.cache["page"].result()
        if explorer is not None:
            ctx.cache["explorer"] = explorer
    if "explorer" not in ctx.cache:
        from .explorer import EXPLORER_LIMIT, explorer_payload

        limit = int(ctx.cache.get("explorer_limit", EXPLORER_LIMIT))
        stash: dict[str, Any] = {}
        payload = explorer_payload(
            ctx.kernels_path, ctx.summary, labels=ctx.labels, limit=limit, seed=ctx.seed,
            stash=stash, extra_rows=ctx.cache.get("extra_rows"),
        )  # fmt: skip
        ctx.cache["explorer"] = (payload, stash)
    return ctx.cache["explorer"]


@register_section("explorer", title="Kernel explorer", order=20, applies=_has_kernels)
def _explorer(ctx: ReportContext) -> str:
    payload, _ = _explorer_data(ctx)
    ctx.add_data("explorer", payload)
    ctx.add_data("thresholds", _thresholds(ctx.summary))
    ctx.add_data("cmap", _cmap())
    note = "sampled" if payload["sampled"] else "all"
    return (
        f"<p>This page holds <b data-explorer='{note}'>{_e(payload['sampling'])}</b>. Filter them, hover "
        "over one for its source, layer, channel, family, orientation, scale, score and fit; click to pin it. "
        "Each kernel is drawn at its own scale (largest |weight| = full colour), framed in its family's colour: "
        f"{legend_html()}. The CSV button saves the kernels that match the filter (no weights).</p>"
        "<div id='ka-explorer'><noscript><p class='note'>The explorer needs JavaScript; the figures and "
        "tables of this page do not.</p></noscript></div>"
    )


# --------------------------------------------------------------------------- layers


def layers_figure(plt: Any, layer_rows: list[dict[str, Any]], labels: dict[str, str]) -> Any:
    """One panel per source (never per model name): family shares of each layer, in order."""
    layers = pd.DataFrame(layer_rows)
    for f in FAMILIES:
        layers[f"share_{f}"] = [(s or {}).get(f) for s in layers["family_shares"]]
    panels = list(layers.groupby("source", sort=False))
    ncols = min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.1 * nrows), squeeze=False)
    for ax, (source, df) in zip(axes.flat, panels):
        F.plot_layer_shares(ax, df, title=f"{labels.get(source, source)} ({len(df)} layers)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.legend(handles=F.family_handles(), loc="lower center", ncol=len(FAMILIES), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _layer_figures(ctx: ReportContext) -> Iterator[Figure]:
    layers = ctx.summary["layers"]
    if layers:
        sources = list(dict.fromkeys(r["source"] for r in layers))
        shown = set(sources[:LAYERS_FIGURE_SOURCES])
        note = _first_of(len(shown), len(sources), "sources", "the table below lists every layer")
        fig = layers_figure(ctx.plt, [r for r in layers if r["source"] in shown], ctx.labels)
        yield ctx.save(fig, "layers.png", f"Family shares of every depthwise layer, in network order, one panel per source{note}")  # fmt: skip


@register_section("layers", title="Layer by layer", order=30, figures=_layer_figures, early=True)
def _layers(ctx: ReportContext) -> str:
    layers = ctx.summary["layers"]
    with_ae = any(r.get("ae_coverage") is not None for r in layers)
    head = ["model", "size", "#", "layer", "depth", "kernels", "degenerate", "classified"]
    head += (["AE classified"] if with_ae else []) + [f.replace("_", " ") for f in FAMILIES]
    rows = []
    order = {s: i for i, s in enumerate(dict.fromkeys(r["source"] for r in layers))}
    in_network_order = sorted(enumerate(layers), key=lambda p: (order[p[1]["source"]], p[1]["layer_index"]))  # fmt: skip
    for i, r in in_network_order:  # i: the layer's index in summary.json (the explorer's)
        sh = r.get("family_shares") or {}
        cells = [
            f"<td class='l'>{_e(ctx.labels.get(r['source'], r['model']))}</td>",
            f"<td>{r['kh']}x{r['kw']}</td>",
            f"<td data-v='{r['layer_index']}'>{r['layer_index']}</td>",
            f"<td class='l'>{_e(r['layer'])}</td>",
            f"<td data-v='{r['depth']}'>{float(r['depth']):.2f}</td>",
            f"<td data-v='{r['kernels']}'>{_num(r['kernels'])}</td>",
            f"<td data-v='{r['degenerate']}'>{_num(r['degenerate'])}</td>",
            f"<td data-v='{r['coverage'] if r['coverage'] is not None else ''}'>{_pct(r['coverage'])}</td>",
        ]
        if with_ae:
            cells.append(f"<td>{_pct(r.get('ae_coverage'))}</td>")
        cells += [f"<td data-v='{sh.get(f) if sh.get(f) is not None else ''}'>{_pct(sh.get(f))}</td>" for f in FAMILIES]  # fmt: skip
        rows.append(
            f"<tr class='pick' data-layer='{i}' data-source='{_e(r['source'])}' title='show in the explorer'>"
            + "".join(cells) + "</tr>"
        )  # fmt: skip
    th = "".join(
        f"<th class='{'l' if h in ('model', 'layer') else ''}'{_tip(h)}>{_e(h)}</th>" for h in head
    )
    options = "".join(
        f"<option value='{_e(s)}'>{_e(lab)}</option>" for s, lab in ctx.labels.items()
    )
    return (
        f"<p>Every depthwise layer with its name (click a column to sort, a row to see its kernels in the "
        f"explorer). Family shares are of all the layer's kernels. {legend_html()}</p>"
        f"<p><label>show <select id='ka-layer-source'><option value=''>every model</option>{options}</select>"
        "</label></p>"
        f"<div class='tscroll'><table class='sortable-table' id='ka-layer-table'><thead><tr>{th}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>" + ctx.figure_html("layers")
    )


# --------------------------------------------------------------------------- atlas diagram


def _atlas_figures(ctx: ReportContext) -> Iterator[Figure]:
    from .diagram import diagram_columns, diagram_patterns, panel_means, plot_diagram

    columns = diagram_columns()
    patterns = diagram_patterns(columns)
    means = {}
    # the analysis's panel sums, when it computed them over these very panels
    made, stats = ctx.cache.get("panel_stats") or (None, {})
    same = made is not None and [list(c) for c in made] == columns
    for kh, kw in _sizes(ctx):
        if same and (kh, kw) in stats:
            means[f"{kh}x{kw}"] = stats[(kh, kw)].means(columns)
        elif ctx.kernels_path.exists():
            means[f"{kh}x{kw}"] = panel_means(ctx.kernels_path, kh, kw, columns)
    ctx.cache["diagram_counts"] = {k: n for k, (_m, n) in means.items()}
    fig = plot_diagram(ctx.plt, columns, patterns, means)
    yield ctx.save(
        fig,
        "atlas.png",
        "The complete diagram of the on and off DoG filters and their derivatives (generated; sigma and "
        "angle on each panel), beside the mean of your classified kernels in each panel (n kernels)",
    )


@register_section("atlas", title="The atlas, beside your kernels", order=40, figures=_atlas_figures,
                  early=True)  # fmt: skip
def _atlas(ctx: ReportContext) -> str:
    fam_rows = "".join(
        f"<tr><td class='l'>{swatch(f)}{_e(f)}</td><td class='l'>{_e(FAMILY_INFO[f].description)}</td>"
        f"<td class='l'><code>{_e(FAMILY_INFO[f].formula)}</code></td></tr>"
        for f in FAMILIES
    )
    sources = ", ".join(_e(v) for v in ctx.labels.values())
    return (
        "<p>Top rows: the pattern families, generated from their definitions (not hand-drawn) on a "
        "15x15 grid: on-centre (+) and off-centre (&minus;) difference of Gaussians, and their first and second "
        "derivatives (bars and crosses), each panel with its sigma and angle. Below: for each kernel size, the "
        "mean of your classified kernels that fall in each panel (same family and shape, same polarity, "
        "orientation within half a bin), with the number averaged; kernels are centred and unit-normalised, and "
        f"on- and off-polarity kernels are never averaged together. Pooled over: {sources}.</p>"
        + ctx.figure_html("atlas")
        + "<div class='tw'><table><thead><tr><th class='l'>family</th><th class='l'>what</th><th class='l'>model</th></tr>"
        f"</thead><tbody>{fam_rows}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- examples


def _family_counts(ctx: ReportContext, kh: int, kw: int) -> dict[str, int]:
    """Kernels of each family at one size, all models (from summary.json's shares)."""
    out: dict[str, int] = {}
    for m in ctx.summary["models"]:
        if (int(m["kh"]), int(m["kw"])) == (kh, kw):
            for f, share in (m.get("family_shares") or {}).items():
                out[f] = out.get(f, 0) + round(float(share or 0.0) * int(m["kernels"]))
    return out


def _example_figures(ctx: ReportContext) -> Iterator[Figure]:
    from ..normalize import normalize

    _, kept = _explorer_data(ctx)  # the explorer's kernels (all of them, or its stated sample)
    layers = kept["layers"]
    rng = np.random.default_rng(ctx.seed)
    fams = [*PATTERN_FAMILIES, UNCLASSIFIED]
    n = 10
    for kh, kw in _sizes(ctx):
        pos, weights = kept["weights"].get((kh, kw), (np.zeros(0, np.int64), np.zeros((0, kh, kw))))
        order = np.argsort(pos, kind="stable")  # in table order
        pos, weights = pos[order], weights[order]
        family = np.asarray(kept["family"], dtype=object)[pos]
        totals = _family_counts(ctx, kh, kw)
        cells, titles, frames, labels = [], [], [], []
        for f in fams:
            rows = np.flatnonzero(family == f)
            if len(rows) > n:
                rows = np.sort(rng.choice(rows, n, replace=False))
            w = normalize(weights[rows]).unit if len(rows) else np.zeros((0, kh, kw), np.float32)
            tit = []
            for c in range(len(rows)):
                at = pos[rows[c]]
                layer = layers.iloc[int(kept["layer"][at])]
                lab = ctx.labels.get(layer["source"], layer["model"])
                tit.append(f"{lab[:20]}\nL{int(layer['layer_index'])} c{int(kept['channel'][at])} s={float(kept['score'][at]):.2f}")  # fmt: skip
            pad = n - len(rows)
            cells.append([*w, *[None] * pad])
            titles.append([*tit, *[""] * pad])
            frames.append([F.family_color(f)] * len(rows) + [None] * pad)
            labels.append(f"{f.replace('_', ' ')}\n(n={totals.get(f, 0):,})")
        fig = ctx.plt.figure(figsize=(1.05 * n + 0.8, 1.3 * len(fams) + 0.5))
        ax = fig.add_axes((0.1, 0.02, 0.82, 0.88))
        ax.set_anchor("N")  # the grid right under the title (no band of white between)
        img = F.kernel_grid(ax, cells, titles=titles, frames=frames, row_labels=labels, fontsize=5.5, label_fontsize=8)  # fmt: skip
        if img is not None:
            F.kernel_colorbar(fig, [ax], label="centred weight / max |weight|")
        fig.suptitle(
            f"Random real {kh}x{kw} kernels per family (model, layer L, channel c, score s)",
            fontsize=9, y=0.905, va="bottom",
        )  # fmt: skip
        yield ctx.save(fig, f"examples_{kh}x{kw}.png", f"Random {kh}x{kw} kernels per family, each labelled with its model, layer, channel and score")  # fmt: skip


@register_section("examples", title="Examples", order=50, figures=_example_figures,
                  applies=_has_kernels, n_figures=lambda ctx: len(_sizes(ctx)), early=True)  # fmt: skip
def _examples(ctx: ReportContext) -> str:
    return (
        "<p>A seeded random sample of real kernels per family and size (centred, unit norm), each labelled with "
        "its model, layer index, channel and score; the explorer above shows all of them.</p>"
        + ctx.figure_html("examples")
    )


# --------------------------------------------------------------------------- fits


def _has_values(path: Any, column: str) -> bool:
    """Whether a column of kernels.parquet holds any non-null value: from the row groups'
    statistics (no data read) where the writer kept them."""
    import pyarrow.parquet as pq

    from ..results import kernels_dataset

    dataset = kernels_dataset(path)
    if column not in dataset.schema.names:
        return False
    for file in dataset.files:
        meta = pq.ParquetFile(file).metadata
        leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if column not in leaves:
            continue
        at = leaves.index(column)
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            st = rg.column(at).statistics
            if st is None or st.null_count is None:  # no statistics: read the column
                col = pq.read_table(file, columns=[column]).column(0)
                if col.null_count < len(col):
                    return True
                break
            if st.null_count < rg.num_rows:
                return True
    return False


def _has_fits(ctx: ReportContext) -> bool:
    return _has_kernels(ctx) and _has_values(ctx.kernels_path, "fit_sigma")


def _fit_figures(ctx: ReportContext) -> Iterator[Figure]:
    meta = _meta(ctx)
    oriented = [f for f in PATTERN_FAMILIES if FAMILY_INFO[f].orientation_period]
    fig, axes = ctx.plt.subplots(1, 1 + len(oriented), figsize=(5.2 * (1 + len(oriented)), 3.4), squeeze=False)  # fmt: skip
    F.plot_fit_by_depth(axes[0, 0], meta)
    for ax, f in zip(axes[0, 1:], oriented):
        F.plot_orientation_by_depth(ax, meta, family=f)
    fig.tight_layout()
    yield ctx.save(fig, "fits_by_depth.png", "Fitted scale and orientation by depth")


@register_section("fits", title="Fitted scale and orientation by depth", order=60,
                  figures=_fit_figures, applies=_has_fits, early=True)  # fmt: skip
def _fits(ctx: ReportContext) -> str:
    return (
        "<p>Left: the Gaussian scale of the best parametric fit per kernel, by relative depth (n kernels under "
        "each box). Right: the atlas orientation of each oriented family's kernels, by depth tercile.</p>"
        + ctx.figure_html("fits")
    )


# --------------------------------------------------------------------------- autoencoder


def _spectra(ctx: ReportContext) -> dict[str, Any]:
    """The compact spectra (:mod:`.spectra`): from summary.json, else from the pipeline's."""
    from .spectra import spectra_docs

    docs = (ctx.summary.get("autoencoder") or {}).get("spectra")
    return docs if docs else spectra_docs(ctx.spectra)


def _ae_figures(ctx: ReportContext) -> Iterator[Figure]:
    from .build import read_columns

    lat = read_columns(ctx.kernels_path, ["kh", "kw", "ae_latent"], seed=ctx.seed)
    for key, spec in _spectra(ctx).items():
        kh, kw = int(spec["kh"]), int(spec["kw"])
        z = lat.loc[(lat["kh"] == kh) & (lat["kw"] == kw), "ae_latent"].to_numpy(dtype=float) if "ae_latent" in lat else np.zeros(0)  # fmt: skip
        fig, (a1, a2) = ctx.plt.subplots(2, 1, figsize=(10, 3.8), gridspec_kw={"height_ratios": [1, 2.2]})  # fmt: skip
        dec = np.asarray(spec["decoded"], dtype=np.float32).reshape(-1, kh, kw)
        F.plot_ae_spectrum(a1, a2, spec["segments"], dec, z)
        a1.set_title(f"Autoencoder spectrum, {key}: decoded patterns along the latent and their atlas names", fontsize=9)  # fmt: skip
        fig.tight_layout()
        yield ctx.save(fig, f"ae_spectrum_{key}.png", f"Autoencoder latent histogram ({key}) with the decoded spectrum")  # fmt: skip


def _ae_kind(row: dict[str, Any]) -> str:
    """'reference (N models)' or 'this run'."""
    ref = row.get("reference")
    if row.get("autoencoder") == "reference" and ref:
        return f"reference ({ref['models']} models)"
    return "this run"


@register_section("autoencoder", title="Autoencoder (the paper's method)", order=70,
                  figures=_ae_figures, applies=lambda ctx: bool(ctx.summary.get("autoencoder")),
                  n_figures=lambda ctx: len(_spectra(ctx)), early=True)  # fmt: skip
def _autoencoder(ctx: ReportContext) -> str:
    ae = ctx.summary["autoencoder"]
    spectra = _spectra(ctx)
    ctx.add_data("spectra", spectra)
    rows = "".join(
        f"<tr><td>{r['kh']}x{r['kw']}</td><td>{r['threshold']:.3f}</td><td class='l'>{_e(r['threshold_rule'])}</td>"
        f"<td>{_pct(r['null_coverage'])}</td><td>{_pct(r.get('init_coverage'))}</td>"
        f"<td class='l'>{_e(_ae_kind(r))}</td><td>{_num(r['trained_on'])}</td></tr>"
        for r in ae["by_size"]
    )
    notes = "".join(
        f"<p class='note'><b>Note</b>: {_e(r['note'])}.</p>" for r in ae["by_size"] if r.get("note")
    )
    canvases = "".join(
        f"<h3>{_e(key)}</h3><canvas class='ka-spectrum' data-size='{_e(key)}' width='1000' height='230'></canvas>"
        for key in spectra
    )
    names = {seg["family"] for s in spectra.values() for seg in s["segments"]}
    named = [f for f in FAMILIES if f in names] + sorted(names - set(FAMILIES))
    return (
        "<p>One autoencoder per kernel size with a cosine loss and a 1-D sigmoid latent (Babaiee et al., ICLR 2024). "
        "A kernel is classified when the cosine distance to its reconstruction is below the paper's threshold "
        f"({', '.join(f'{k}x{k}: {v}' for k, v in PAPER_AE_THRESHOLDS.items())}), or, for other sizes, below a "
        "threshold calibrated on the null. The decoded spectrum along the latent is named by the atlas. "
        "By default each size uses the shipped <i>reference</i> autoencoder, trained once on the pooled kernels of "
        "every real model kernelatlas can load, so a model's figures do not depend on what else is in the run; "
        "<i>this run</i>: trained on this run's kernels (<code>--ae train</code>, or a size without a reference). "
        "Agreement with the atlas counts only kernels that at least one method classifies.</p>"
        "<div class='tw'><table><thead><tr><th>size</th><th>distance threshold</th><th class='l'>rule</th><th>null classified</th>"
        f"<th>fresh init classified</th><th class='l'>autoencoder</th><th>trained on</th></tr></thead><tbody>{rows}</tbody></table></div>"
        + notes
        + (
            f"<p>The decoded row along the latent (top), the atlas name of each decoded pattern (band: {legend_html(named)}) "
            "and the latents of this page's kernels (histogram):</p>" + canvases
            if spectra
            else ""
        )
        + ctx.figure_html("autoencoder")
    )


# --------------------------------------------------------------------------- biology

_BIOLOGY_CAPTIONS = {
    "biology_summary.png": "Each statistic per model and size: trained kernels (median with quartiles, or "
    "share/index with a 95% interval; n beside the marker), the iid Gaussian null through the same atlas and "
    "fits, the fresh initialisation, and the published value where one number maps onto the statistic.",
}


def _biology_figures(ctx: ReportContext) -> Iterator[Figure]:
    bio = ctx.cache.get("biology")
    if bio is None:  # summary.json written without figures: nothing to draw
        return
    for name in bio.figures(ctx.fig_dir, dpi=ctx.dpi):
        yield Figure(name, _BIOLOGY_CAPTIONS.get(name, "Distributions behind the summary for one kernel size, all models pooled."))  # fmt: skip


@register_section("biology", title="Compared with biology", order=80, figures=_biology_figures,
                  applies=lambda ctx: bool(ctx.summary.get("biology")),
                  n_figures=lambda ctx: 1 + len({(m["kh"], m["kw"]) for m in ctx.summary["models"]}))  # fmt: skip
def _biology(ctx: ReportContext) -> str:
    """kernelatlas.biology's section (its own HTML), with the figures inline."""
    from ..biology.report import render_html

    figs = ctx.figures.get("biology", [])
    page = render_html(ctx.summary["biology"], [f.file for f in figs])
    for f in figs:  # its <img src="figures/..."> become inline images (a self-contained page)
        uri = ctx.img(f).split('src="', 1)[1].split('"', 1)[0]
        page = page.replace(f'<img src="figures/{_e(f.file)}"', f'<img src="{uri}" data-file="figures/{_e(f.file)}"')  # fmt: skip
    return page.replace(
        "<h2 id='biology'>Compared with biology</h2>", "<span id='biology'></span>", 1
    )


# --------------------------------------------------------------------------- method


def _heldout(t: dict[str, Any]) -> str:
    n = t.get("heldout_surrogates")
    count = "" if n is None else f" <span class='ci'>n={n:,}</span>"
    return f"{_pct(t.get('heldout_rate'))}{_ci(t.get('heldout_interval'))}{count}"


def thresholds_table(thresholds: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{t['kh']}x{t['kw']}</td><td class='l'>{_e(t['method'])}</td><td class='l'>{_e(t['family'])}</td>"
        f"<td>{t['threshold']:.4f}</td><td class='l'>{_e(t['null_kind'])}</td><td>{_pct(t.get('null_rate'))}</td>"
        f"<td>{_heldout(t)}</td></tr>"
        for t in thresholds
    )
    return (
        "<div class='tw'><table><thead><tr><th>size</th><th class='l'>method</th><th class='l'>family</th><th>threshold</th>"
        "<th class='l'>null</th><th>null rate (calibration)</th><th>null rate (held-out)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


@register_section("method", title="How this was computed", order=90)
def _method(ctx: ReportContext) -> str:
    s = ctx.summary
    cfg = s["config"]
    return (
        f"<p>Command: <code>{_e(cfg.get('command') or 'kernelatlas.analyze (Python API)')}</code></p>"
        "<p>Kernels are centred (mean subtracted) and scaled to unit L2 norm; zero, constant and non-finite "
        "kernels are <i>degenerate</i>. <b>score</b>: for each pattern family, the best cosine similarity between "
        "the unit kernel and that family's patterns (over scales, sub-pixel offsets, orientations and polarities); "
        "a kernel's family is the one whose score clears its threshold by the largest margin "
        "<code>(score - threshold) / (1 - threshold)</code>, and its <code>score</code> column is that family's "
        "cosine (for an unclassified kernel, the closest family's). A cosine of 1 is a perfect match. Thresholds "
        f"are calibrated per kernel size on {_e(_null_label(s, cfg['null']))} null kernels so that at most "
        f"{percent(cfg['null_fpr'])} of them pass any family:</p>"
        + thresholds_table(s["thresholds"])
        + "<p><b>fit R&sup2;</b>: the share of the kernel's variance explained by the best bounded parametric fit "
        f"(one model per pattern family: {_e(', '.join(f.replace('_', ' ') for f in PATTERN_FAMILIES))}).</p>"
        + f"<pre>{_e(json.dumps({'config': cfg, 'versions': s['versions']}, indent=1))}</pre>"
    )
