"""Fixtures of the hostile battery: real small seed files of every reader, and their
reference harvests (what an intact file yields)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .makers import write_seeds
from .worker import classify_one


@pytest.fixture(scope="session")
def seeds(tiny_dscnn, tmp_path_factory) -> dict[str, Path]:
    """reader key -> intact seed file (see ``makers.SEED_NAMES``)."""
    return write_seeds(tiny_dscnn, tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="session")
def reference(seeds) -> dict[str, str]:
    """reader key -> digest of the intact file's harvest."""
    out = {}
    for key, path in seeds.items():
        rec = classify_one(str(path))
        assert rec["kind"] == "ok", (key, rec)
        out[key] = rec["detail"]
    return out
