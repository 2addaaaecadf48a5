"""Stage: the report — summary tables, figures and the HTML page of an analysis."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .html import render_page

__all__ = [
    "write_report",
    "start_page",
    "PageKernels",
    "rebuild_report",
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


#: The largest summary.json read (one of 30 sources is about 0.5 MB).
_MAX_SUMMARY_BYTES = 256 * 2**20


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``run_dir/summary.json`` (``run_dir`` may also be that file)."""
    from ..atomic import read_json
    from ..errors import KernelAtlasError

    path = Path(run_dir)
    if not path.is_file():
        path = path / "summary.json"
    try:  # a FIFO or a device at its name is refused, never waited on or read without end
        doc = read_json(path, _MAX_SUMMARY_BYTES)
    except FileNotFoundError:
        raise KernelAtlasError(
            f"{path} not found: pass a directory written by `kernelatlas analyze`"
        ) from None
    except UnicodeDecodeError:  # a weight file or other binary given as a run
        raise KernelAtlasError(
            f"{path} is not a summary.json (binary data): pass a directory written by "
            "`kernelatlas analyze`"
        ) from None
    except (OSError, ValueError) as exc:
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


def _context(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    explorer_limit: int | None = None,
    init_twins: dict[str, Any] | None = None,
) -> Any:
    """The :class:`~.sections.ReportContext` of a page (its seed from the summary's config)."""
    from .build import FIGURE_DPI
    from .sections import ReportContext

    ctx = ReportContext(
        Path(run_dir),
        summary,
        spectra=dict(spectra or {}),
        seed=int(summary["config"].get("seed", 0)),
        dpi=FIGURE_DPI,
    )
    if explorer_limit is not None:
        ctx.cache["explorer_limit"] = int(explorer_limit)
    if init_twins:
        ctx.cache["init_twins"] = init_twins
    return ctx


class PageKernels:
    """The page's pass over the kernels, started before the summary is complete.

    What the pass reads depends on the run's layers, models and config only (the
    explorer's stratified sample and its weights, the biology section's sample of classified
    kernels, then the biology comparison), never on the baselines: :func:`start_page`
    runs it in a thread (pyarrow, numpy and torch release the GIL) while the analysis
    measures the baselines, and :func:`write_report` takes its result. The result is the
    one :func:`write_report` computes without it (same samples, same seeds).
    """

    def __init__(self, ctx: Any, figures: bool) -> None:
        from ..threads import in_thread

        self._future = in_thread(_page_pass, ctx, figures, name="kernelatlas-page")

    def result(self) -> tuple[Any, Any]:
        """(the explorer's data as ``_explorer_data`` caches it, or None; the future of the
        biology section, or None). Raises what the pass raised."""
        return self._future.result()

    def close(self) -> None:
        """Wait for the pass to end, whatever it raised (before its folder goes away)."""
        import contextlib

        with contextlib.suppress(BaseException):
            _, pending = self._future.result()
            if pending is not None:
                pending.result()


def start_page(
    run_dir: str | os.PathLike[str],
    summary: dict[str, Any],
    *,
    figures: bool = True,
    explorer_limit: int | None = None,
    init_twins: dict[str, Any] | None = None,
) -> PageKernels:
    """Start the page's pass over ``run_dir``'s kernels in a thread (:class:`PageKernels`).

    ``summary`` needs only what the pass reads: ``config``, ``models`` and ``layers`` as
    :func:`~.summary.build_summary` writes them (its baselines may be missing); the other
    arguments are :func:`write_report`'s.
    """
    from .sections import sections

    sections()  # the section modules imported here, not in the thread
    ctx = _context(Path(run_dir), summary, explorer_limit=explorer_limit, init_twins=init_twins)
    return PageKernels(ctx, figures)


def _page_pass(ctx: Any, figures: bool) -> tuple[Any, Any]:
    """The explorer's data (when the page has an explorer) and the biology section's
    future (with ``figures``), without progress stages: what :func:`write_report` would
    compute in its own thread."""
    from .builtin_sections import _explorer_data, _has_kernels

    pending = None
    if figures and ctx.kernels_path.exists():
        pending = _biology(ctx)
    elif _has_kernels(ctx):
        _explorer_data(ctx)
    return ctx.cache.get("explorer"), pending


def write_report(
    run_dir: Path,
    summary: dict[str, Any],
    *,
    spectra: dict[str, Any] | None = None,
    figures: bool = True,
    progress: Any = None,
    explorer_limit: int | None = None,
    panel_stats: tuple[Any, dict[tuple[int, int], Any]] | None = None,
    init_twins: dict[str, Any] | None = None,
    page: PageKernels | None = None,
    final: Callable[[], dict[str, Any]] | None = None,
) -> Path:
    """Write summary.json, figures/*.png and the single-file index.html into ``run_dir``.

    The page is built from the registered sections (:mod:`kernelatlas.report.sections`)
    out of ``summary`` and ``run_dir/kernels.parquet``; ``progress`` (a
    :class:`kernelatlas.progress.Progress`) shows the stages; ``explorer_limit`` caps the
    kernels embedded in the page (default :data:`kernelatlas.report.explorer.EXPLORER_LIMIT`).
    With ``figures``, the "compared with biology" section is computed too and stored in
    ``summary["biology"]`` (None without figures); see :mod:`kernelatlas.biology.report`.
    ``panel_stats``: (the diagram's columns, the ``report.diagram.PanelStats`` per kernel
    size) when the analysis computed them while classifying; otherwise the atlas section
    reads kernels.parquet (and the weights through the bank) again. ``init_twins``: the
    fresh-init twins the analysis harvested, by source (the biology section uses them instead
    of building them again). ``page``: the page's pass over the kernels, started earlier
    with the same ``figures``, ``explorer_limit`` and ``init_twins``
    (:func:`start_page`); without it the pass runs here. ``final``: when the baselines are
    still being measured, ``summary`` is the summary without them and ``final()`` returns
    the complete one (waiting for them): the figures of the ``early`` sections
    (:func:`~.sections.register_section`) are drawn first, meanwhile.
    Returns the page's path.
    """
    import contextlib

    from .build import make_figures
    from .sections import sections

    run_dir = Path(run_dir)
    ctx = _context(run_dir, summary, spectra=spectra, explorer_limit=explorer_limit,
                   init_twins=init_twins)  # fmt: skip
    if panel_stats is not None:
        ctx.cache["panel_stats"] = panel_stats
    if final is not None and not figures:
        summary, final = final(), None
        ctx.summary = summary
    pending = None  # the biology comparison, computed beside the other figures
    if page is not None:
        ctx.cache["page"] = page  # the explorer's data: waited for where a section needs it
    elif figures and (run_dir / "kernels.parquet").exists():
        pending = _biology(ctx, progress)
    summary["biology"] = None  # until computed: its section waits for it
    drawn: set[str] = set()
    if final is not None:  # what needs no baseline, while they are measured
        early = [s for s in sections() if s.early and s.wanted(ctx)]
        make_figures(ctx, early, progress)
        drawn = {s.name for s in early}
        summary = final()
        summary["biology"] = None
        ctx.summary = summary
    first = [s for s in sections() if s.wanted(ctx) and s.name not in drawn]  # but biology's
    if figures:
        make_figures(ctx, first, progress, stage="figures" if not drawn else "baseline figures")
    drawn |= {s.name for s in first}
    if page is not None:
        with progress.stage("page kernels", 0) if progress else contextlib.nullcontext():
            _, pending = page.result()
    biology = None
    if pending is not None:
        with progress.stage("compare with biology", 0) if progress else contextlib.nullcontext():
            biology = pending.result()  # what is left of it once the other figures are drawn
    summary["biology"] = biology.doc() if biology is not None else None
    write_json(run_dir / "summary.json", summary)
    if biology is not None:
        ctx.cache["biology"] = biology
    wanted = [s for s in sections() if s.wanted(ctx)]
    if figures:
        make_figures(ctx, [s for s in wanted if s.name not in drawn], progress, stage="biology figures")  # fmt: skip
    page_html = render_page(ctx, wanted)
    tmp = run_dir / ".index.html.tmp"
    tmp.write_text(page_html, encoding="utf-8")
    os.replace(tmp, run_dir / "index.html")
    return run_dir / "index.html"


def _biology(ctx: Any, progress: Any = None) -> Any:
    """Start the biology section of the page; returns the future of its
    :class:`~kernelatlas.biology.report.BiologySection`.

    Its sample of trained kernels is chosen first (metadata only) and their weights come in
    the explorer's pass over the bank (its own progress stage, "page kernels"); then the
    comparison runs in a worker thread (numpy and torch, which release the GIL; torch on
    this thread's number of threads) while this thread draws the other figures (matplotlib,
    which never leaves this thread). The result does not depend on the thread it is
    computed in.
    """
    import contextlib

    import numpy as np
    import torch

    from ..biology.comparison import sample_kernels
    from ..biology.report import REPORT_KERNELS_PER_SIZE, biology_section
    from ..threads import in_thread
    from .builtin_sections import _explorer_data

    cfg = ctx.summary.get("config", {})
    sample = sample_kernels(
        ctx.run_dir, max_kernels=20_000, seed=int(cfg.get("seed", 0)),
        max_per_size=REPORT_KERNELS_PER_SIZE,
    )  # fmt: skip
    ctx.cache["extra_rows"] = sample["_row"].to_numpy()
    with progress.stage("page kernels", 0) if progress else contextlib.nullcontext():
        _, kept = _explorer_data(ctx)
    weights = np.empty(len(sample), dtype=object)
    at = {int(r): i for i, r in enumerate(sample["_row"])}
    for rows, w in kept["extra"].values():  # kernel sizes
        for r, k in zip(rows.tolist(), w):
            weights[at[r]] = k.reshape(-1)
    missing = [i for i, w in enumerate(weights) if w is None]
    if missing:  # rows of no layer listed in the summary: read from the bank
        from ..results import kernel_weights

        sub = sample.iloc[missing]
        for _, idx in sub.groupby(["kh", "kw"], sort=False).indices.items():
            k = kernel_weights(ctx.run_dir, sub["_row"].to_numpy()[idx])
            for j, i in enumerate(np.asarray(missing)[idx]):
                weights[i] = k[j].reshape(-1)
    frame = sample.drop(columns=["_row", "bank_file", "bank_row"], errors="ignore")
    summary = {**ctx.summary}  # its own copy: the page's summary gains "biology" meanwhile
    return in_thread(
        biology_section, ctx.run_dir, summary, kernels=frame.assign(weights=weights),
        twins=ctx.cache.get("init_twins"), name="kernelatlas-biology",
        torch_threads=torch.get_num_threads(),  # the comparison as this thread would compute it
    )  # fmt: skip


def rebuild_report(
    run_dir: str | os.PathLike[str], *, progress: Any = None, explorer_limit: int | None = None
) -> Path:
    """Draw the figures and write index.html of an analysis directory again, from its
    summary.json and kernels.parquet alone (e.g. after upgrading kernelatlas)."""
    summary = load_summary(run_dir)
    return write_report(Path(run_dir), summary, progress=progress, explorer_limit=explorer_limit)
