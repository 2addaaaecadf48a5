"""Plain-text tables for the terminal: the result of ``analyze`` (one row per source and
kernel size, with its source, never truncated)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..taxonomy import PATTERN_FAMILIES
from .labels import percent, source_labels

__all__ = ["format_table", "coverage_table"]


def format_table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[bool],
    notes: Sequence[tuple[Sequence[str], str]] = (),
) -> str:
    """Columns as wide as their widest cell (nothing cut), a rule under the header.

    ``notes``: rows of a few leading cells and a text that runs on over the other columns
    (it never widens them), printed after ``rows``.
    """
    widths = [
        max([len(h), *(len(r[i]) for r in rows), *(len(c[i]) for c, _ in notes if i < len(c))])
        for i, h in enumerate(head)
    ]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    text = [line(head), "  ".join("-" * w for w in widths)]
    text += [line(r) for r in rows]
    text += [f"{line(cells)}  {note}" for cells, note in notes]
    return "\n".join(text)


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _with_ae(summary: dict[str, Any]) -> bool:
    """Whether the analysis ran the autoencoder (``--method autoencoder`` or ``both``)."""
    method = (summary.get("config") or {}).get("method")
    return method in ("autoencoder", "both") or any(
        m.get("ae_coverage") is not None for m in summary.get("models", [])
    )


def _agreement(m: dict[str, Any]) -> str:
    """``42.5% (100.0%)``: among kernels either method classifies (among those both do)."""
    either, both = _pct(m.get("agreement")), _pct(m.get("agreement_both_classified"))
    return either if both == "-" else f"{either} ({both})"


def coverage_table(summary: dict[str, Any]) -> str:
    """The coverage of every (source, size) of an analysis, as a text table; with the
    autoencoder (``--method autoencoder`` or ``both``) also its coverage, its null rate and
    the agreement of the two methods, the method asked for first."""
    labels = source_labels([*summary.get("models", []), *summary.get("layers", [])])
    ae = _with_ae(summary)
    ae_first = (summary.get("config") or {}).get("method") == "autoencoder"
    atlas_head = ["classified", "null", "init", "excess (strongest baseline)", "top family"]
    if ae:  # two methods: say whose rates these are
        atlas_head[:2] = ["atlas classified", "atlas null"]
    ae_head = ["AE classified", "AE null", "agreement (both)"] if ae else []
    head = ["model", "source", "size", "kernels"]
    head += [*ae_head, *atlas_head] if ae_first else [*atlas_head, *ae_head]
    right_atlas = [True, True, True, False, False]
    right_ae = [True, True, True] if ae else []
    right = [False, False, True, True]
    right += [*right_ae, *right_atlas] if ae_first else [*right_atlas, *right_ae]
    rows = []
    for m in summary["models"]:
        shares = {f: (m.get("family_shares") or {}).get(f) or 0.0 for f in PATTERN_FAMILIES}
        top = max(shares, key=lambda f: shares[f]) if shares else "-"
        ex = m.get("excess") or {}
        excess = (
            f"{100 * ex['excess']:+.1f} pp ({ex['baseline']})"
            if ex.get("excess") is not None
            else "-"
        )
        atlas = [
            _pct(m["coverage"]),
            _pct(m.get("null_coverage")),
            _pct(m.get("init_coverage")),
            excess,
            f"{top.replace('_', ' ')} {_pct(shares.get(top))}" if shares else "-",
        ]
        ae_cells = (
            [_pct(m.get("ae_coverage")), _pct(m.get("ae_null_coverage")), _agreement(m)]
            if ae
            else []
        )
        rows.append(
            [
                labels.get(m["source"], m["model"]),
                str(m["source"]),
                f"{m['kh']}x{m['kw']}",
                f"{int(m['kernels']):,}",
                *([*ae_cells, *atlas] if ae_first else [*atlas, *ae_cells]),
            ]
        )
    notes = []
    for r in summary.get("skipped") or []:
        n = int(r["layers"])
        cells = [labels.get(r["source"], r["model"]), str(r["source"]), f"{r['kh']}x{r['kw']}",
                 f"{int(r['kernels']):,}"]  # fmt: skip
        notes.append((cells, f"not analysed ({n} layer{'s' * (n != 1)}): {r['reason']}"))
    table = format_table(head, rows, right=right, notes=notes)
    cfg = summary.get("config", {})
    kind = cfg.get("null", "gaussian")
    label = (summary.get("nulls") or {}).get("kinds", {}).get(kind, {}).get("label", kind)
    note = (
        f"classified: at thresholds calibrated on the {label} null "
        f"({percent(cfg.get('null_fpr', 0.01))} false positives); null: the held-out "
        "rate of that null; init: fresh init of the same architecture; excess: over the "
        "strongest baseline (summary.json has every baseline, with intervals)"
    )
    if ae:
        note = (
            "atlas "
            + note.replace("; null:", "; atlas null:")
            + (
                "; AE classified: the autoencoder's share (reconstruction distance under the "
                "paper's threshold, or one calibrated on the Gaussian null where the paper gives "
                "none); AE null: its rate on Gaussian kernels; agreement: same family from both "
                "methods among the kernels either classifies (in brackets: among those both classify)"
            )
        )
    if kind == "init":
        note += (
            "; the init null is calibrated on half of the fresh-init kernels, and null and init are "
            "rates on the other half"
        )
    return f"{table}\n{note}"
