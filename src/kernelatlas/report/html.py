"""The report page: one self-contained HTML file (figures, data and scripts inline).

The page is assembled from the registered sections (:mod:`.sections`); figures are inline
``data:`` images and the explorer's data is one JSON document in the page, so the file works
when moved or mailed, with no network. The same figures are PNG files under ``figures/``
and every kernel is in ``kernels.parquet`` beside it, for those who keep the folder.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any

from ..taxonomy import FAMILIES, FAMILY_INFO
from .figures import family_color
from .labels import percent

__all__ = ["render_page", "CSS", "asset", "json_script"]


def asset(name: str) -> str:
    """The text of a file shipped in ``kernelatlas/report/assets`` (package data)."""
    return resources.files("kernelatlas.report").joinpath("assets", name).read_text("utf-8")


CSS = asset("report.css")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(x: Any) -> str:
    """A fraction as a percentage; '–' for missing values (None, NaN), never 'nan%'."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(v) else f"{int(v):,}"


def json_script(element_id: str, doc: Any) -> str:
    """``doc`` as a JSON data block (``</`` escaped so the text never closes the script)."""
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    text = text.replace("</", "<\\/").replace("<!--", "<\\!--")
    return f'<script type="application/json" id="{_e(element_id)}">{text}</script>'


def swatch(family: str) -> str:
    return f"<span class='sw' style='background:{family_color(family)}'></span>"


def legend_html(families: Any = None) -> str:
    return " ".join(
        f"<span class='lg'>{swatch(f)}{_e(f.replace('_', ' '))}</span>"
        for f in (FAMILIES if families is None else families)
    )


def families_doc() -> list[dict[str, Any]]:
    """The family registry as the page's scripts see it (names, colours, periods)."""
    return [
        {
            "name": f,
            "color": family_color(f),
            "period": FAMILY_INFO[f].orientation_period,
            "polarity": bool(FAMILY_INFO[f].has_polarity),
            "pattern": f not in ("unclassified", "degenerate"),
            "description": FAMILY_INFO[f].description,
        }
        for f in FAMILIES
    ]


def reading_guide(summary: dict[str, Any]) -> str:
    """The page's "how to read it" box: what classified, the null, the baselines, the excess,
    the intervals and the score mean, in this run's terms (its null and false-positive rate)."""
    cfg = summary["config"]
    kinds = (summary.get("nulls") or {}).get("kinds") or {}
    null = str(kinds.get(cfg["null"], {}).get("label", cfg["null"]))
    fpr = percent(cfg["null_fpr"])
    terms = [
        (
            "classified",
            "a kernel is <i>classified</i> when its best match to an atlas pattern (centre-surround, "
            "edge, bar, ...) is closer than the threshold for its family and size. The thresholds are set so that "
            f"only {fpr} of <i>null</i> kernels pass: a classified share well above {fpr} is structure random "
            "kernels do not have. Degenerate kernels (zero, constant, non-finite) are left out of it.",
        ),
        (
            "null",
            f"random kernels the thresholds are calibrated on: here <b>{_e(null)}</b>. <i>null (held-out)</i> "
            f"is the rate on other kernels of the same null (about {fpr} by construction).",
        ),
        (
            "fresh init",
            "the same architecture freshly initialised (untrained), through the same thresholds: "
            "what training added is the distance between it and the trained share.",
        ),
        (
            "baselines, excess",
            "other nulls that keep one property of the real kernels (smoothness, spectrum, "
            "covariance); the <i>excess</i> is the trained share minus the strongest baseline's, in percentage "
            "points: what that property does not explain.",
        ),
        (
            "intervals",
            "<span class='ci'>[lo, hi]</span> after a rate is its 95% interval (the kernels seen "
            "as a sample of what training produces); <i>n</i> is how many kernels the rate is over.",
        ),
        (
            "score",
            "the cosine similarity (1 = a perfect match) between the centred, unit-norm kernel and the "
            "closest pattern of its family; the explorer shows each kernel's score beside its threshold.",
        ),
    ]
    if not kinds:
        terms = [t for t in terms if t[0] != "baselines, excess"]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in terms)
    return (
        "<details class='howto' id='ka-howto' open><summary>How to read this page</summary>"
        f"<dl>{items}</dl></details>"
    )


def render_page(ctx: Any, wanted: list[Any], *, title: str = "kernelatlas report") -> str:
    """The page of a :class:`~.sections.ReportContext` with the sections in ``wanted``."""
    summary = ctx.summary
    cfg = summary["config"]
    bodies = []
    for sec in wanted:
        body = sec.render(ctx)
        bodies.append(
            f"<section id='sec-{_e(sec.name)}' data-section='{_e(sec.name)}'>"
            f"<h2>{_e(sec.title)}</h2>{body}</section>"
        )
    nav = " · ".join(f"<a href='#sec-{_e(s.name)}'>{_e(s.title)}</a>" for s in wanted)
    ctx.data.setdefault("families", families_doc())
    ctx.data.setdefault("summary", summary)
    weights = (
        "with weights"
        if cfg.get("with_weights")
        else "weights in <code>bank/</code>, read with <code>kernelatlas.kernel_weights</code>"
    )
    head = (
        f"<p class='meta'>kernelatlas {_e(summary['kernelatlas_version'])} · {_e(summary['created'])} · "
        f"sources: {_e(', '.join(map(str, cfg['sources'])))} · method: {_e(cfg['method'])} · null: "
        f"{_e(cfg['null'])} at {percent(cfg['null_fpr'])} false-positive rate</p>"
        "<p class='files'>This page is one self-contained file: it works when moved or mailed, with no "
        "network. <b>Download from it:</b> <button type='button' class='dl' data-download='csv-all'>"
        "kernels.csv</button> (the per-kernel table without weights) · <button type='button' class='dl' "
        "data-download='summary'>summary.json</button>. <b>Beside it</b>, when the folder is kept: "
        f"<a href='kernels.parquet'>kernels.parquet</a> (every kernel, every column; {weights}) · "
        "<a href='summary.json'>summary.json</a> · <a href='figures/'>figures/</a> (these figures as PNG) · "
        "<code>bank/</code> (the harvested kernels).</p>"
    )
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
            f"<header><h1>{_e(title)}</h1>{head}<nav>{nav}</nav>{reading_guide(summary)}</header>",
            *bodies,
            json_script("ka-data", ctx.data),
            f"<script>{asset('explorer.js')}</script>",
            "</body></html>",
        ]
    )
