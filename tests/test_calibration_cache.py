"""The calibration cache: a second analysis skips calibration; stale or damaged entries are
never trusted; data-built nulls are keyed by their content."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kernelatlas.calibration as C
from kernelatlas.atlas import Atlas
from kernelatlas.pipeline import AnalysisConfig, analyze

N_NULL = 1000


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "calibrations"
    monkeypatch.setenv("KERNELATLAS_CALIBRATIONS", str(folder))
    return folder


def _entry(folder: Path) -> Path:
    [entry] = [p for p in folder.iterdir()]
    return entry


def test_second_calibration_comes_from_the_cache_and_predicts_the_same(cache: Path) -> None:
    first = C.calibrate(5, 5, null_fpr=0.01, n_null=N_NULL, seed=2)
    again = C.calibrate(5, 5, null_fpr=0.01, n_null=N_NULL, seed=2)
    assert not first.cached and again.cached and again.path == first.path
    assert again.atlas.thresholds_ == first.atlas.thresholds_
    assert again.heldout_rate == first.heldout_rate and 0 < first.heldout_rate <= 0.05
    fresh = Atlas(kernel_size=5, null_fpr=0.01, n_null=N_NULL, seed=2).fit()
    assert fresh.thresholds_ == again.atlas.thresholds_
    assert fresh.null_rate_ == again.atlas.null_rate_ and fresh.n_null_ == again.atlas.n_null_
    k = np.random.default_rng(0).standard_normal((300, 5, 5), dtype=np.float32)
    assert again.atlas.predict(k).equals(fresh.predict(k))
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temporary file left
    # every key field separates entries
    for other in ({"seed": 3}, {"null_fpr": 0.02}, {"n_null": N_NULL + 1}):
        kw = {"null_fpr": 0.01, "n_null": N_NULL, "seed": 2} | other
        assert not C.calibrate(5, 5, **kw).cached
    assert not C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL, seed=2).cached
    assert C.calibrate(5, 5, null_fpr=0.01, n_null=N_NULL, seed=2, refresh=True).cached is False


def test_an_unwritable_cache_is_said_once_and_costs_only_a_recalibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache that cannot be written (here a file where its folder goes: root ignores
    permissions) warns once, naming the variable, and the calibration still works."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a user's file\n")
    monkeypatch.setenv("KERNELATLAS_CALIBRATIONS", str(blocker / "calibrations"))
    monkeypatch.setattr(C, "_UNWRITABLE", set())
    with pytest.warns(UserWarning, match="KERNELATLAS_CALIBRATIONS") as said:
        first = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL, seed=2)
        again = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL, seed=2)
    assert len([w for w in said if "calibration cache" in str(w.message)]) == 1
    assert not first.cached and not again.cached
    assert again.atlas.thresholds_ == first.atlas.thresholds_
    assert blocker.read_text() == "a user's file\n"


def test_another_version_recalibrates(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
    monkeypatch.setattr(C, "__version__", "9.9.9")
    again = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
    assert not again.cached and len(list(cache.iterdir())) == 2


def _load_plugin(folder: Path, formula: str):
    """A user's plugin family (tests' Checker) defined in its own module file."""
    import importlib.util

    src = folder / "my_plugin.py"
    src.write_text(
        "from tests.test_family_registry import Checker\n\n"
        f"class MyChecker(Checker):\n    name = 'my_checker'\n    formula = {formula!r}\n"
    )
    spec = importlib.util.spec_from_file_location("my_plugin", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["my_plugin"] = module  # as `import my_plugin` would
    return module.MyChecker


def test_other_code_of_the_same_version_recalibrates(cache: Path, tmp_path: Path) -> None:
    """A development install or a user's plugin changes code, not the version: its
    thresholds are never taken for those of other code."""
    from kernelatlas.atlas.registry import register_family, unregister_family

    base = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
    register_family(_load_plugin(tmp_path, "p * (-1)^(i + j)"))
    try:
        first = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
        assert not first.cached and first.path != base.path
        assert "my_checker" in first.atlas.thresholds_
        assert C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL).cached
        unregister_family("my_checker")
        register_family(_load_plugin(tmp_path, "p * (-1)^(i + j + 1)"))  # its code changed
        again = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
        assert not again.cached and again.path not in (base.path, first.path)
    finally:
        unregister_family("my_checker")
        sys.modules.pop("my_plugin", None)
    assert C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL).cached  # the built-ins' entry


def _tamper(doc: dict, how: str) -> str:
    if how == "garbage":
        return "{not json"
    if how == "threshold out of range":
        doc["state"]["thresholds_"]["center"] = 5.0
    elif how == "threshold NaN":
        doc["state"]["thresholds_"]["center"] = float("nan")
    elif how == "another key":
        doc["key"]["seed"] = 99
    elif how == "extra family":
        doc["state"]["thresholds_"]["blob"] = 0.5
        doc["state"]["family_null_rates_"]["blob"] = 0.0
    elif how == "missing field":
        del doc["state"]["null_rate_"]
    elif how == "rate out of range":
        doc["heldout_rate"] = -1
    elif how == "not a dict":
        return "[1, 2]"
    return json.dumps(doc)


@pytest.mark.parametrize(
    "how",
    ["garbage", "threshold out of range", "threshold NaN", "another key", "extra family",
     "missing field", "rate out of range", "not a dict"],
)  # fmt: skip
def test_a_damaged_entry_is_ignored_and_rebuilt(cache: Path, how: str) -> None:
    first = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
    entry = _entry(cache)
    entry.write_text(_tamper(json.loads(entry.read_text()), how))
    again = C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL)
    assert not again.cached and again.atlas.thresholds_ == first.atlas.thresholds_
    assert C.calibrate(3, 3, null_fpr=0.01, n_null=N_NULL).cached  # rewritten, valid again


def test_a_null_built_from_data_is_keyed_by_its_content(cache: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((600, 3, 3), dtype=np.float32)
    b = a.copy()
    b[0, 0, 0] += 1.0
    kw = {"null_kind": "init", "null_fpr": 0.01, "n_null": N_NULL}
    first = C.calibrate(3, 3, null=a, heldout=a[:300], **kw)
    assert not first.cached and first.atlas.null_kind_ == "init"
    assert C.calibrate(3, 3, null=a.copy(), heldout=a[:300], **kw).cached
    assert not C.calibrate(3, 3, null=b, heldout=a[:300], **kw).cached  # one weight differs
    assert not C.calibrate(3, 3, null=a, heldout=a[:299], **kw).cached  # another held-out set
    assert C.calibrate(3, 3, null=a, heldout=a[:300], **kw).atlas.null_kind_ == "init"


def test_a_second_analysis_skips_calibration(cache: Path, tmp_path: Path, capsys) -> None:
    from kernelatlas.cli import main

    np.save(tmp_path / "k.npy", np.random.default_rng(1).standard_normal((500, 5, 5), np.float32))
    cfg = AnalysisConfig(quiet=True, fit=False, figures=False, init_baseline=False, n_null=N_NULL)
    first = analyze([tmp_path / "k.npy"], tmp_path / "a", cfg)
    second = analyze([tmp_path / "k.npy"], tmp_path / "b", cfg)
    assert [c["cached"] for c in first.timings["calibration"]] == [False]
    assert [c["cached"] for c in second.timings["calibration"]] == [True]
    assert second.summary["thresholds"] == first.summary["thresholds"]
    assert second.summary["models"] == first.summary["models"]
    lines, bars = [], []
    for out in ("c", "d"):  # the CLI shows the calibration's time and where it came from
        args = ["analyze", str(tmp_path / "k.npy"), "--out", str(tmp_path / out), "--no-fit",
                "--no-init-baseline"]  # fmt: skip
        assert main(args) == 0
        err = capsys.readouterr().err
        lines += [x for x in err.splitlines() if x.startswith("kernelatlas: time")]
        bars += [x for x in err.splitlines() if x.startswith("kernelatlas: calibrate 5x5")]
    assert len(lines) == 2 and all("calibrate" in x for x in lines), lines
    assert "(not cached yet)" in lines[0] and "(5x5 from the cache)" in lines[1], lines
    # the bar counts what is scored (the null and the held-out null: 40,000 of 40,000), and
    # a calibration from the cache says so (it counted the 64 kernels of the atlas's set-up)
    assert bars[0] == "kernelatlas: calibrate 5x5: 40,000 kernels", bars
    assert bars[1].startswith("kernelatlas: calibrate 5x5: done (40,000 kernels, "), bars
    assert bars[2:3] == ["kernelatlas: calibrate 5x5: 40,000 kernels"], bars
    assert bars[3].startswith("kernelatlas: calibrate 5x5 (from the cache): done ("), bars
    assert "kernels" not in bars[3], bars
