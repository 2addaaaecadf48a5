"""Plain-text tables for the terminal: the result of ``analyze`` (one row per source and
kernel size, with its source, never truncated)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..taxonomy import PATTERN_FAMILIES
from .labels import source_labels

__all__ = ["format_table", "coverage_table"]


def format_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]
) -> str:
    """Columns as wide as their widest cell (nothing cut), a rule under the header."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    text = [line(head), "  ".join("-" * w for w in widths)]
    text += [line(r) for r in rows]
    return "\n".join(text)


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else f"{100 * v:.1f}%"


def coverage_table(summary: dict[str, Any]) -> str:
    """The coverage of every (source, size) of an analysis, as a text table."""
    labels = source_labels([*summary.get("models", []), *summary.get("layers", [])])
    head = ["model", "source", "size", "kernels", "classified", "null", "init",
            "excess (strongest baseline)", "top family"]  # fmt: skip
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
        rows.append(
            [
                labels.get(m["source"], m["model"]),
                str(m["source"]),
                f"{m['kh']}x{m['kw']}",
                f"{int(m['kernels']):,}",
                _pct(m["coverage"]),
                _pct(m.get("null_coverage")),
                _pct(m.get("init_coverage")),
                excess,
                f"{top.replace('_', ' ')} {_pct(shares.get(top))}" if shares else "-",
            ]
        )
    for r in summary.get("skipped") or []:
        rows.append(
            [labels.get(r["source"], r["model"]), str(r["source"]), f"{r['kh']}x{r['kw']}",
             f"{int(r['kernels']):,}", "-", "-", "-", "-",
             f"not analysed ({r['layers']} layers): {r['reason']}"]
        )  # fmt: skip
    table = format_table(
        head, rows, right=[False, False, True, True, True, True, True, False, False]
    )
    cfg = summary.get("config", {})
    kind = cfg.get("null", "gaussian")
    label = (summary.get("nulls") or {}).get("kinds", {}).get(kind, {}).get("label", kind)
    note = (
        f"classified: at thresholds calibrated on the {label} null "
        f"({100 * float(cfg.get('null_fpr', 0.01)):g}% false positives); null: the held-out "
        "rate of that null; init: fresh init of the same architecture; excess: over the "
        "strongest baseline (summary.json has every baseline, with intervals)"
    )
    if kind == "init":
        note += (
            "; the init null is calibrated on half of the fresh-init kernels, and null and init are "
            "rates on the other half"
        )
    return f"{table}\n{note}"
