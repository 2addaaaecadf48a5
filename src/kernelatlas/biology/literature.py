"""The reference table: published receptive-field statistics, one row per value or finding.

Shipped as ``reference.csv`` beside this module. Every row carries its citation (authors,
year, title, journal, volume, pages, DOI), where in the paper the value stands, the species,
area and cell class, and how it was verified. ``value`` is empty for a qualitative finding
(``value_kind == "qualitative"``): its ``claim`` says what the paper reports in words, and
no number is made up for it. docs/biology.md lists what was taken from each source.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from ..errors import KernelAtlasError

__all__ = ["reference", "sources", "REFERENCE_COLUMNS", "CITATION_COLUMNS", "DOI_PATTERN"]

REFERENCE_COLUMNS: tuple[str, ...] = (
    "ref_id", "statistic", "value", "value_kind", "n", "claim", "species", "area",
    "cell_class", "authors", "year", "title", "journal", "volume", "pages", "doi",
    "doi_verified", "location", "verified_from", "note",
)  # fmt: skip
CITATION_COLUMNS: tuple[str, ...] = (
    "authors", "year", "title", "journal", "volume", "pages", "doi", "location",
    "verified_from", "species", "area", "cell_class",
)  # fmt: skip
# Crossref's recommended pattern for modern DOIs.
DOI_PATTERN = re.compile(r"^10\.\d{4,9}/[-._;()/:A-Za-z0-9]+$")
_VALUE_KINDS = ("mean", "median", "share", "count", "lower_bound", "qualitative")


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    text = resources.files("kernelatlas.biology").joinpath("reference.csv").read_text("utf-8")
    from io import StringIO

    df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    if tuple(df.columns) != REFERENCE_COLUMNS:
        raise KernelAtlasError(f"reference.csv columns {list(df.columns)} != {REFERENCE_COLUMNS}")
    out = df.copy()
    out["value"] = pd.to_numeric(df["value"].replace("", np.nan))
    out["n"] = pd.to_numeric(df["n"].replace("", np.nan)).astype("Int64")
    out["year"] = df["year"].astype(int)
    out["doi_verified"] = df["doi_verified"].map({"true": True, "false": False})
    bad = out[~out["value_kind"].isin(_VALUE_KINDS) | out["doi_verified"].isna()]
    if len(bad):
        raise KernelAtlasError(f"reference.csv rows {bad['ref_id'].tolist()} are malformed")
    return out


def reference() -> pd.DataFrame:
    """The published statistics, one row per value or finding, with citation columns.

    Returns
    -------
    DataFrame, columns :data:`REFERENCE_COLUMNS` (``value`` float, NaN for qualitative
    findings; ``n`` the cells behind it where the source states it).

    Examples
    --------
    >>> from kernelatlas.biology import reference
    >>> ref = reference()
    >>> ref.loc[ref["ref_id"] == "croner_kaplan_1995", ["statistic", "value", "species"]].iloc[0].tolist()
    ['surround_weight', 0.55, 'macaque (Macaca fascicularis)']
    """
    return _load().copy()


def sources() -> pd.DataFrame:
    """One row per cited paper: ``ref_id``, the citation columns and what was taken from it."""
    ref = _load()
    taken = ref.groupby("ref_id", sort=False)["statistic"].agg(
        lambda s: ", ".join(dict.fromkeys(s))
    )
    first = ref.drop_duplicates("ref_id").set_index("ref_id")
    cols = ["authors", "year", "title", "journal", "volume", "pages", "doi", "doi_verified",
            "species", "area", "verified_from"]  # fmt: skip
    out = first[cols].copy()
    out["statistics"] = taken
    return out.reset_index()
