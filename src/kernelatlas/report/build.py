"""Build the report's figures from an analysis directory (kernels.parquet + summary)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..progress import Progress
from .sections import ReportContext, Section, run_figures

__all__ = ["make_figures", "read_columns", "FIGURE_DPI"]

FIGURE_DPI = 110


def read_columns(
    path: Path, columns: list[str], *, max_rows: int = 500_000, seed: int = 0
) -> pd.DataFrame:
    """Selected columns of kernels.parquet (never the weights), row-sampled to ``max_rows``.

    The column ``_row`` holds each row's index in the table (for fetching its weights later
    with :func:`kernelatlas.results.kernel_weights`). ``path`` may be a folder of parts.
    """
    from ..results import kernels_dataset

    dataset = kernels_dataset(path)
    cols = [c for c in columns if c in dataset.schema.names]
    n = dataset.count_rows()
    if n <= max_rows:
        df = dataset.to_table(columns=cols).to_pandas()
        df["_row"] = np.arange(n)
        return df
    idx = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    df = dataset.take(idx, columns=cols).to_pandas()
    df["_row"] = idx
    return df


def make_figures(
    ctx: ReportContext,
    wanted: list[Section],
    progress: Progress | None = None,
    *,
    stage: str = "figures",
) -> None:
    """Draw the figures of the ``wanted`` sections into ``ctx.figures`` (and figures/*.png).

    One progress stage (named ``stage``; none when no section draws) advancing per figure;
    matplotlib's math-text parser is off (model and file names are drawn as written) and
    library warnings are said once, in kernelatlas's words.
    """
    import matplotlib

    from ..progress import say_warnings_once

    with_figs = [s for s in wanted if s.figures is not None]
    if not with_figs:
        return
    total = sum(int(s.n_figures(ctx)) if s.n_figures else 1 for s in with_figs)
    bar = progress.stage(stage, total, unit="figure") if progress else contextlib.nullcontext()
    with (
        matplotlib.rc_context({"text.parse_math": False}),
        say_warnings_once(progress, "drawing figures"),
        bar as st,
    ):
        for _ in run_figures(ctx, with_figs, st):
            pass
