"""The self-contained HTML report (relative links to figures/ only; opens from disk)."""

from __future__ import annotations

import html
import json
from typing import Any

from ..taxonomy import FAMILIES, FAMILY_INFO, PAPER_AE_THRESHOLDS, PATTERN_FAMILIES
from .figures import FAMILY_COLORS

__all__ = ["render_index", "CSS"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:0 auto;padding:1.2em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12.5px;margin:.6em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%;height:auto;border:0}
.meta{color:#666;font-size:12px}.ci{color:#777;font-size:11px}.sw{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin-right:.3em}
figure{margin:.8em 0}figcaption{color:#555;font-size:12.5px}code,pre{background:#f6f6f6;padding:1px 4px}
pre{padding:.6em;overflow-x:auto;white-space:pre-wrap}.tw{overflow-x:auto}
@media print{body{max-width:none}h2{page-break-after:avoid}figure{page-break-inside:avoid}}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _ci(iv: Any, signed: bool = False) -> str:
    if not iv:
        return ""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f" <span class='ci'>[{f.format(100 * iv[0])}, {f.format(100 * iv[1])}]</span>"


def _pp(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):+.1f} pp"


def _label(nulls: dict[str, Any], kind: str | None) -> str:
    return str(nulls.get("kinds", {}).get(kind, {}).get("label", kind))


def _baselines_table(models: list[dict[str, Any]], nulls: dict[str, Any]) -> str:
    """Coverage beside every baseline (held-out surrogates, with their count) and the excess."""
    kinds = list(nulls.get("kinds", {}))
    head = ["model", "size", "classified", *(_label(nulls, k) for k in kinds)]
    head += ["strongest baseline", "excess over it"]
    rows = []
    for m in models:
        base = m.get("baselines") or {}
        cells = [f'<td class="l">{_e(m["model"])}</td>', f"<td>{m['kh']}x{m['kw']}</td>",
                 f"<td><b>{_pct(m['coverage'])}</b>{_ci(m.get('coverage_interval'))}</td>"]  # fmt: skip
        for k in kinds:
            b = base.get(k)
            cells.append(
                "<td>–</td>"
                if not b
                else f"<td>{_pct(b['coverage'])}{_ci(b['interval'])}<br><span class='ci'>"
                f"n={b['surrogates']:,}</span></td>"
            )
        ex = m.get("excess") or {}
        cells.append(f"<td class='l'>{_e(_label(nulls, ex.get('baseline')) if ex else '–')}</td>")
        cells.append(f"<td><b>{_pp(ex.get('excess'))}</b>{_ci(ex.get('interval'), True)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f'<th class="{"l" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    return f"<div class='tw'><table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _family_excess_table(models: list[dict[str, Any]], nulls: dict[str, Any]) -> str:
    """Per family: the trained share, the strongest baseline's share, and the excess."""
    head = "<th class='l'>model</th><th>size</th><th class='l'>strongest baseline</th>" + "".join(
        f"<th>{_e(f.replace('_', ' '))}: trained / baseline / excess</th>" for f in PATTERN_FAMILIES
    )
    rows = []
    for m in models:
        ex = m.get("excess")
        if not ex:
            continue
        b = m["baselines"][ex["baseline"]]
        live = m["kernels"] - m["degenerate"]
        cells = [f'<td class="l">{_e(m["model"])}</td><td>{m["kh"]}x{m["kw"]}</td>',
                 f"<td class='l'>{_e(_label(nulls, ex['baseline']))}</td>"]  # fmt: skip
        for f in PATTERN_FAMILIES:
            trained = m["family_shares"][f] * m["kernels"] / live if live else None
            fe = ex["family_excess"][f]
            cells.append(
                f"<td>{_pct(trained)} / {_pct(b['family_shares'][f])} / "
                f"<b>{_pp(fe['excess'])}</b>{_ci(fe['interval'], True)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _nulls_table(nulls: dict[str, Any]) -> str:
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


def _fig(name: str, caption: str) -> str:
    return f'<figure><img src="figures/{_e(name)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _models_table(models: list[dict[str, Any]], with_ae: bool) -> str:
    head = [
        "model",
        "source",
        "size",
        "kernels",
        "degenerate",
        "classified",
        "null (held-out)",
        "fresh init",
    ]
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
            f'<td class="l">{_e(m["model"])}</td>',
            f'<td class="l">{_e(m["source"])}</td>',
            f"<td>{m['kh']}x{m['kw']}</td>",
            f"<td>{m['kernels']:,}</td>",
            f"<td>{m['degenerate']:,}</td>",
            f"<td><b>{_pct(m['coverage'])}</b></td>",
            f"<td>{_pct(m.get('null_coverage'))}</td>",
            f"<td>{_pct(m.get('init_coverage'))}</td>",
        ]
        if with_ae:
            cells += [
                f"<td>{_pct(m.get(k))}</td>"
                for k in (
                    "ae_coverage",
                    "ae_null_coverage",
                    "agreement",
                    "agreement_both_classified",
                )
            ]
        cells += [f"<td>{_pct(m['family_shares'].get(f))}</td>" for f in FAMILIES]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f'<th class="{"l" if i < 2 else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    return f"<div class='tw'><table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _ae_kind(row: dict[str, Any]) -> str:
    """'reference (N models)' or 'this run'."""
    ref = row.get("reference")
    if row.get("autoencoder") == "reference" and ref:
        return f"reference ({ref['models']} models)"
    return "this run"


def _heldout(t: dict[str, Any]) -> str:
    n = t.get("heldout_surrogates")
    count = "" if n is None else f" <span class='ci'>n={n:,}</span>"
    return f"{_pct(t.get('heldout_rate'))}{_ci(t.get('heldout_interval'))}{count}"


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


def _thresholds_table(thresholds: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{t['kh']}x{t['kw']}</td><td class='l'>{_e(t['method'])}</td><td class='l'>{_e(t['family'])}</td>"
        f"<td>{t['threshold']:.4f}</td><td class='l'>{_e(t['null_kind'])}</td><td>{_pct(t.get('null_rate'))}</td>"
        f"<td>{_heldout(t)}</td></tr>"
        for t in thresholds
    )
    return (
        "<table><thead><tr><th>size</th><th class='l'>method</th><th class='l'>family</th><th>threshold</th>"
        "<th class='l'>null</th><th>null rate (calibration)</th><th>null rate (held-out)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def render_index(
    summary: dict[str, Any], figures: dict[str, list[str]], *, title: str = "kernelatlas report"
) -> str:
    """The report page as one HTML string."""
    cfg = summary["config"]
    ae = summary.get("autoencoder")
    nulls = summary.get("nulls") or {}
    null_label = _label(nulls, cfg["null"])
    legend = " ".join(
        f'<span class="sw" style="background:{FAMILY_COLORS[f]}"></span>{_e(f)}' for f in FAMILIES
    )
    fam_rows = "".join(
        f"<tr><td class='l'><span class='sw' style='background:{FAMILY_COLORS[f]}'></span>{_e(f)}</td>"
        f"<td class='l'>{_e(FAMILY_INFO[f].description)}</td><td class='l'><code>{_e(FAMILY_INFO[f].formula)}</code></td></tr>"
        for f in FAMILIES
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>kernelatlas {_e(summary['kernelatlas_version'])} · {_e(summary['created'])} · "
        f"sources: {_e(', '.join(cfg['sources']))} · method: {_e(cfg['method'])} · null: {_e(null_label)} "
        f"(<code>--null {_e(cfg['null'])}</code>) at {100 * cfg['null_fpr']:g}% false-positive rate</p>",
        "<h2>Coverage per model and kernel size</h2>",
        "<p>A kernel is <i>classified</i> when the atlas explains it better than the calibrated threshold, "
        "which at most the stated fraction of null (random) kernels pass. The thresholds here were calibrated "
        f"on the <b>{_e(null_label)}</b> null. <b>null</b>: the rate on held-out surrogates of that null (for "
        "this model"
        + (
            "; with <code>--null init</code>, the half of the fresh-init kernels not used to calibrate"
            if cfg["null"] == "init"
            else ""
        )
        + "); <b>fresh init</b>: coverage of the held-out half of the same architecture freshly "
        "initialised. Coverage excludes degenerate kernels; family shares are of all kernels.</p>",
        _models_table(summary["models"], bool(ae)),
        _skipped_note(summary.get("skipped") or []),
        *[
            _fig(
                f,
                f"Classified share of trained kernels (thresholds from the {null_label} null) beside the "
                "held-out coverage of every baseline, with 95% intervals",
            )
            for f in figures.get("coverage", [])
        ],
    ]
    if nulls.get("kinds"):
        parts += [
            "<h2>Coverage beside every baseline</h2>",
            "<p>Each baseline is a null kind: surrogate kernels that keep some property of real kernels and "
            "nothing else, named under the same thresholds (held-out surrogates: never the ones the thresholds "
            "were calibrated on; <i>n</i> = their count). The <b>excess</b> is the trained coverage minus the "
            "strongest baseline's, in percentage points. Classified kernels beyond a baseline are structure that "
            "its property does not explain; the excess over the covariance-matched null is conservative, since "
            "that null is built from the model's own kernels and keeps part of the structure under test. "
            f"Intervals: {_e(nulls.get('intervals', ''))}; the trained coverage's interval treats the kernels as "
            "draws from what training produces.</p>",
            _baselines_table(summary["models"], nulls),
            "<p>Per family (shares of non-degenerate kernels, so they add up to the coverage): trained share, "
            "the strongest baseline's share, and the excess.</p>",
            _family_excess_table(summary["models"], nulls),
            "<p>What each baseline rules out, and what it does not:</p>",
            _nulls_table(nulls),
        ]
    parts += [
        "<h2>Layer by layer</h2>",
        f"<p>Family shares of each depthwise layer against its relative depth, one panel per model. {legend}</p>",
        *[_fig(f, "Family shares against relative depth") for f in figures.get("layers", [])],
        "<h2>Gallery</h2><p>For each family, the mean of its classified kernels (sign-aligned; oriented families "
        "around their most common orientation) and random real examples; the last panel shows unclassified kernels. "
        "Each kernel is centred and scaled to unit norm; red is positive, blue negative, white zero.</p>",
        *[
            _fig(f, f"Gallery {f.removeprefix('gallery_').removesuffix('.png')}")
            for f in figures.get("gallery", [])
        ],
        "<h2>The atlas</h2><p>The pattern families, generated (not hand-drawn) from each registered family's "
        "definition: on- and off-centre difference of Gaussians, their first and second derivatives at a few "
        "orientations, and the other registered families.</p>",
        *[_fig(f, "Atlas families") for f in figures.get("atlas", [])],
        f"<table><thead><tr><th class='l'>family</th><th class='l'>what</th><th class='l'>model</th></tr></thead><tbody>{fam_rows}</tbody></table>",
    ]
    if figures.get("fits"):
        parts += [
            "<h2>Fitted scale and orientation by depth</h2>",
            "<p>Left: the Gaussian scale of the best parametric fit per kernel, by relative depth. Right: the "
            "orientation of first-derivative kernels by depth tercile.</p>",
            *[_fig(f, "Fitted scale and orientation by depth") for f in figures["fits"]],
        ]
    if ae:
        rows = "".join(
            f"<tr><td>{r['kh']}x{r['kw']}</td><td>{r['threshold']:.3f}</td><td class='l'>{_e(r['threshold_rule'])}</td>"
            f"<td>{_pct(r['null_coverage'])}</td><td>{_pct(r.get('init_coverage'))}</td>"
            f"<td class='l'>{_e(_ae_kind(r))}</td><td>{r['trained_on']:,}</td></tr>"
            for r in ae["by_size"]
        )
        notes = "".join(
            f"<p><b>Note</b>: {_e(r['note'])}.</p>" for r in ae["by_size"] if r.get("note")
        )
        parts += [
            "<h2>Autoencoder (the paper's method)</h2>",
            "<p>One autoencoder per kernel size with a cosine loss and a 1-D sigmoid latent (Babaiee et al., ICLR 2024). "
            f"A kernel is classified when the cosine distance to its reconstruction is below the paper's threshold "
            f"({', '.join(f'{k}x{k}: {v}' for k, v in PAPER_AE_THRESHOLDS.items())}), or, for other sizes, below a "
            "threshold calibrated on the null. The decoded spectrum along the latent is named by the atlas. ",
            "By default each size uses the shipped <i>reference</i> autoencoder, trained once on the pooled kernels of "
            "every real model kernelatlas can load, so a model's figures do not depend on what else is in the run; "
            "<i>this run</i>: trained on this run's kernels (<code>--ae train</code>, or a size without a reference). "
            "Agreement with the atlas counts only kernels that at least one method classifies.</p>",
            "<table><thead><tr><th>size</th><th>distance threshold</th><th class='l'>rule</th><th>null classified</th>"
            f"<th>fresh init classified</th><th class='l'>autoencoder</th><th>trained on</th></tr></thead><tbody>{rows}</tbody></table>",
            notes,
            *[
                _fig(f, "Autoencoder latent histogram with the decoded spectrum")
                for f in figures.get("autoencoder", [])
            ],
        ]
    if summary.get("biology"):
        from ..biology.report import render_html

        parts.append(render_html(summary["biology"], figures.get("biology", [])))
    parts += [
        "<h2>How this was computed</h2>",
        f"<p>Command: <code>{_e(cfg.get('command') or 'kernelatlas.analyze (Python API)')}</code></p>",
        "<p>Kernels are centred (mean subtracted) and scaled to unit L2 norm; zero, constant and non-finite "
        "kernels are <i>degenerate</i>. Thresholds (per kernel size and family):</p>",
        _thresholds_table(summary["thresholds"]),
        f"<pre>{_e(json.dumps({'config': cfg, 'versions': summary['versions']}, indent=1))}</pre>",
        "<p class='meta'>Files: <a href='summary.json'>summary.json</a> · <code>kernels.parquet</code> "
        "(one row per kernel) · <code>bank/</code> (the harvested kernel bank).</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
