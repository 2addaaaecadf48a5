"""The public API works as written: ``ka.harvest`` / ``ka.normalize`` are the functions,
``HarvestResult.kernels``, and README's Python snippet (run as a doctest)."""

from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_harvest_and_normalize_stay_functions_after_their_modules_load() -> None:
    import kernelatlas as ka

    for name in ("kernelatlas.harvest", "kernelatlas.harvest.api", "kernelatlas.harvest.zoo",
                 "kernelatlas.harvest.checkpoint", "kernelatlas.normalize",
                 "kernelatlas.pipeline", "kernelatlas.report.build"):  # fmt: skip
        importlib.import_module(name)
    from kernelatlas.harvest.api import harvest
    from kernelatlas.normalize import normalize

    assert ka.harvest is harvest and inspect.isfunction(ka.harvest)
    assert ka.normalize is normalize and inspect.isfunction(ka.normalize)
    from kernelatlas import harvest as h
    from kernelatlas import normalize as n

    assert h is harvest and n is normalize
    assert ka.normalize(np.ones((2, 3, 3))).degenerate.all()  # callable as written
    # the modules stay reachable the documented ways
    from kernelatlas.harvest import zoo

    assert importlib.import_module("kernelatlas.harvest.zoo") is zoo
    assert "harvest" in dir(ka) and "normalize" in dir(ka)


def test_harvest_result_kernels_by_size(pp_lcnet_path) -> None:
    import kernelatlas as ka
    from kernelatlas.errors import KernelAtlasError

    res = ka.harvest("pp_lcnet_orientation")
    k3, k5 = res.kernels(3), res.kernels((5, 5))
    assert k3.shape == (432, 3, 3) and k5.shape == (2048, 5, 5) and k3.dtype == np.float32
    want = np.concatenate([lk.weights for lk in res.layers if lk.shape == (5, 5)])
    np.testing.assert_array_equal(k5, want)
    assert res.kernels(7).shape == (0, 7, 7)
    for bad in (0, (3,), (3, 0), "3"):
        with pytest.raises(KernelAtlasError, match="size must be"):
            res.kernels(bad)


def test_readme_python_snippet_runs(tmp_path, monkeypatch, efficientnet_lite0_path,
                                    pp_lcnet_path, one_torch_thread) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the snippet writes report/
    result = doctest.testfile(
        str(README),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
        report=True,
    )
    assert result.attempted >= 8, result
    assert result.failed == 0, result
    assert (tmp_path / "report" / "summary.json").is_file()


def test_every_python_snippet_of_the_docs_defines_what_it_uses() -> None:
    """The Python blocks of each docs/*.md, run in order as a notebook would, use no name they
    do not define or import (ruff's F821): atlas.md used ``normalize`` and ``kernels``,
    autoencoder.md ``kernels``, ``z`` and ``null_kernels``, training.md ``torch``,
    ``plot_coverage``, ``loader`` and ``ax`` without them. (README's is run as a doctest.)"""
    import re
    import subprocess
    import sys

    docs = sorted((README.parent / "docs").glob("*.md"))
    failures = []
    for doc in docs:
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
        if not blocks:
            continue
        run = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821",
             "--output-format", "concise", "--stdin-filename", f"{doc.stem}.py", "-"],
            input="\n".join(blocks), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if run.returncode != 0:
            failures.append(f"{doc.name}: {run.stdout.strip() or run.stderr.strip()}")
    assert len(docs) >= 10 and failures == [], "\n".join(failures)
