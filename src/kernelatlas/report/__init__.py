"""Stage: the report — summary tables, figures and the HTML page of an analysis."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .html import render_index

__all__ = [
    "write_report",
    "write_json",
    "load_summary",
    "validate_summary",
    "summary_schema",
    "SCHEMA_PATH",
]

SCHEMA_PATH = Path(__file__).with_name("summary.schema.json")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``run_dir/summary.json``."""
    from ..errors import KernelAtlasError

    path = Path(run_dir) / "summary.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KernelAtlasError(
            f"{path} not found: pass a directory written by `kernelatlas analyze`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise KernelAtlasError(f"cannot read {path}: {exc}") from None
    validate_summary(doc)
    return doc


def summary_schema() -> dict[str, Any]:
    """summary.schema.json with the family names of the registry filled in: the pattern
    families' enum and the names every ``family_shares`` object must hold."""
    from ..taxonomy import FAMILIES, PATTERN_FAMILIES

    schema = json.loads(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    defs["pattern_family"] = {
        "enum": list(PATTERN_FAMILIES),
        "$comment": defs["pattern_family"]["$comment"],
    }
    defs["row"]["properties"]["family_shares"]["required"] = list(FAMILIES)
    return schema


def validate_summary(doc: dict[str, Any]) -> None:
    """Check a summary document against :func:`summary_schema` (needs ``jsonschema``)."""
    import jsonschema

    from ..errors import KernelAtlasError

    schema = summary_schema()
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as exc:
        raise KernelAtlasError(f"summary.json does not match its schema: {exc.message}") from None


def write_report(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    figures: bool = True,
) -> None:
    """Write summary.json, figures/*.png and index.html into ``run_dir``.

    With ``figures``, the "compared with biology" section is computed too and stored in
    ``summary["biology"]`` (None without figures); see :mod:`kernelatlas.biology.report`.
    """
    from .build import make_figures

    biology = None
    if figures and (run_dir / "kernels.parquet").exists():
        from ..biology.report import biology_section

        biology = biology_section(run_dir, summary)
    summary["biology"] = biology.doc() if biology is not None else None
    write_json(run_dir / "summary.json", summary)
    made = (
        make_figures(
            run_dir,
            summary,
            spectra=spectra,
            seed=int(summary["config"].get("seed", 0)),
            biology=biology,
        )
        if figures
        else {}
    )
    page = render_index(summary, made)
    tmp = run_dir / ".index.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, run_dir / "index.html")
