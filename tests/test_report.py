"""The report: one self-contained page, the explorer's data, the seed's diagram, the figures'
defects (legend colours, label layout, layer bars, colliding model names), compare,
progress and the terminal table.

Most tests use one small analysis of three files of one model (``ds.pt``, ``ds.safetensors``,
``ds.onnx``: the same model name) whose depthwise kernels were set to known patterns.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from kernelatlas.atlas import functional as AF
from kernelatlas.errors import KernelAtlasError
from kernelatlas.pipeline import AnalysisConfig, analyze
from kernelatlas.progress import Progress, say_warnings_once
from kernelatlas.report import figures as F
from kernelatlas.report import load_summary
from kernelatlas.report.explorer import explorer_payload, layer_quotas
from kernelatlas.report.labels import source_labels
from kernelatlas.report.terminal import coverage_table
from kernelatlas.results import kernel_weights
from kernelatlas.taxonomy import FAMILY_INFO, PATTERN_FAMILIES
from tests.hostile.makers import write_checkpoint, write_onnx, write_safetensors


def _patterned_model(seed: int = 0) -> nn.Sequential:
    """A DS-CNN whose depthwise kernels are on/off DoGs, edges and noise (3x3 and 5x5)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 5, padding=2, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for idx, k in ((3, 3), (9, 5)):
            conv = model[idx]
            c = conv.weight.shape[0]
            pats = np.concatenate([
                AF.center_pattern(k, k, 0.8 * k / 3, polarity=1)[None].repeat(c // 4, 0)[:, 0],
                AF.center_pattern(k, k, 0.8 * k / 3, polarity=-1)[None].repeat(c // 4, 0)[:, 0],
                AF.first_derivative_pattern(k, k, 0.7 * k / 3, np.arange(c // 4) * 90.0),
            ])  # fmt: skip
            rng = np.random.default_rng(seed + k)
            w = conv.weight.detach().numpy()
            w[: len(pats), 0] = pats * rng.uniform(0.5, 2.0, (len(pats), 1, 1)) + 0.02 * rng.standard_normal(pats.shape)  # fmt: skip
            conv.weight.copy_(torch.from_numpy(w))
    return model.eval()


@pytest.fixture(scope="module")
def collide(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three files of one model analysed together (progress captured off a terminal)."""
    d = tmp_path_factory.mktemp("collide")
    m = _patterned_model()
    paths = [write_checkpoint(m, d / "ds.pt"), write_safetensors(m, d / "ds.safetensors"),
             write_onnx(m, d / "ds.onnx")]  # fmt: skip
    out = d / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = analyze([str(p) for p in paths], out,
                      AnalysisConfig(n_null=2000, init_baseline=False, quiet=False))  # fmt: skip
    return {"out": out, "paths": paths, "stderr": err.getvalue(), "summary": res.summary,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}  # fmt: skip


# --------------------------------------------------------------------------- the page


def test_page_is_one_self_contained_file(collide: dict) -> None:
    page = (collide["out"] / "index.html").read_text()
    imgs = re.findall(r"<img src=\"([^\"]+)\"", page)
    pngs = sorted(p.name for p in (collide["out"] / "figures").glob("*.png"))
    assert len(imgs) == len(pngs) >= 6
    for src in imgs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", page), "external resource"
    assert not re.search(r"(src|href)=['\"](https?:)?//", page), "network reference"
    # The files for those who keep the folder are linked, and the data is in the page.
    assert "href='kernels.parquet'" in page and "href='summary.json'" in page
    # ... and described as they are: without --with-weights the table holds no weights
    assert "with weights" not in page and "read with <code>kernelatlas.kernel_weights" in page
    assert 'id="ka-data"' in page and "explorer.js" not in page  # inline script, no file
    assert "nan%" not in page
    # The score is explained and the colour bar of the kernel figures is there.
    assert "<b>score</b>: for each pattern family, the best cosine similarity" in page


def test_explorer_data_matches_kernels_parquet(collide: dict) -> None:
    out = collide["out"]
    summary = load_summary(out)
    pay = explorer_payload(
        out / "kernels.parquet", summary, labels=source_labels(summary["models"])
    )
    table = pq.read_table(out / "kernels.parquet").to_pandas()
    assert pay["n"] == pay["total"] == len(table) and not pay["sampled"]
    assert pay["sampling"].startswith("every kernel")

    def col(name: str) -> np.ndarray:
        c = pay["columns"][name]
        raw = base64.b64decode(c["data"])
        dt = {"f32": "<f4", "i32": "<i4", "u32": "<u4", "i8": "i1", "u8": "u1", "bool": "u1", "u16": "<u2"}[c["type"]]  # fmt: skip
        a = np.frombuffer(raw, dtype=dt)
        return np.array(c["dict"], dtype=object)[a] if "dict" in c else a

    rows = col("row")
    assert (rows == np.arange(len(table))).all()
    sel = table.iloc[rows]
    assert (col("family") == sel["family"].to_numpy()).all()
    assert (col("channel") == sel["channel"].to_numpy()).all()
    assert (col("shape") == sel["shape"].fillna("").to_numpy()).all()
    np.testing.assert_allclose(col("score"), sel["score"], rtol=1e-6)
    np.testing.assert_allclose(col("fit_r2"), sel["fit_r2"], rtol=1e-6, equal_nan=True)
    layer = col("layer")
    lay = pay["layers"]
    assert [pay["sources"][lay["source"][i]]["source"] for i in layer] == list(sel["source"])
    assert [lay["layer"][i] for i in layer] == list(sel["layer"])
    # Weights at 8-bit precision, each kernel scaled to its own largest |weight|.
    q = np.frombuffer(base64.b64decode(pay["weights"]), dtype=np.int8).astype(float)
    # (kernels.parquet references the bank: the weights come through the one accessor)
    w = np.concatenate(
        [kernel_weights(out, sel.iloc[[i]]).reshape(-1) for i in range(len(sel))]
    ).astype(float)
    peak = np.repeat(col("peak"), [lay["kh"][i] * lay["kw"][i] for i in layer])
    np.testing.assert_allclose(q / 127 * peak, w, atol=float(peak.max()) / 127)
    # Sources keep their own labels although the three files share one model name.
    assert len({s["label"] for s in pay["sources"]}) == 3
    # The layer menu follows the network: within each source, increasing layer index.
    by_src = pd.DataFrame({"s": lay["source"], "i": lay["layer_index"]})
    assert all(g["i"].is_monotonic_increasing for _, g in by_src.groupby("s", sort=False))
    assert by_src["s"].is_monotonic_increasing  # sources one after the other


def test_stratified_sample_is_stated_and_per_layer(collide: dict) -> None:
    out = collide["out"]
    summary = load_summary(out)
    counts = np.array([r["kernels"] for r in summary["layers"]])
    limit = int(counts.sum() // 3)
    pay = explorer_payload(out / "kernels.parquet", summary, labels={}, limit=limit,
                           min_per_layer=4, seed=3)  # fmt: skip
    assert pay["sampled"] and pay["n"] <= limit and pay["total"] == counts.sum()
    assert (
        f"{pay['n']:,} of the {pay['total']:,}" in pay["sampling"] and "seed 3" in pay["sampling"]
    )
    kept = np.array(pay["layers"]["kept"])
    np.testing.assert_array_equal(kept, layer_quotas(counts, limit, 4))
    assert (kept >= np.minimum(counts, 4)).all() and (kept <= counts).all()
    share = kept / counts
    assert share.max() - share.min() < 0.2, share  # the same share of every layer
    rows = np.frombuffer(base64.b64decode(pay["columns"]["row"]["data"]), "<i4")
    assert (np.diff(rows) > 0).all()  # distinct rows, in file order


def test_layer_quotas() -> None:
    n = np.array([10, 1000, 3, 500, 87])
    assert (layer_quotas(n, 10_000) == n).all()
    q = layer_quotas(n, 400, min_per_layer=8)
    assert q.sum() <= 400 and (q >= np.minimum(n, 8)).all() and (q <= n).all()
    assert q[1] > q[3] > q[4]  # proportional above the floor
    assert q.sum() > 380  # the limit is used, not left idle


# --------------------------------------------------------------------------- sources apart


def test_sources_with_one_model_name_stay_apart(collide: dict) -> None:
    summary = collide["summary"]
    labels = source_labels(summary["models"])
    assert {m["model"] for m in summary["models"]} == {"ds"}
    assert sorted(labels.values()) == ["ds (ds.onnx)", "ds (ds.pt)", "ds (ds.safetensors)"]
    assert len(summary["models"]) == 6  # three sources x two sizes, never merged
    text = coverage_table(summary)
    head = text.splitlines()[0].split()
    assert head[:3] == ["model", "source", "size"]
    for p in collide["paths"]:
        assert str(p) in text, "a source is missing or cut"  # paths are > 28 characters
    # One panel per source in the layer figure, each with its own label.
    import matplotlib.pyplot as plt

    from kernelatlas.report.builtin_sections import layers_figure

    fig = layers_figure(plt, summary["layers"], labels)
    titles = sorted(a.get_title() for a in fig.axes if a.get_title())
    plt.close(fig)
    assert len(titles) == 3 and len({t.split(" (")[0] + t.split(")")[0] for t in titles}) == 3, (
        titles
    )
    assert all("(2 layers)" in t for t in titles)


def test_hundreds_of_sources_draw_their_first_ones_and_say_so(
    collide, tmp_path, monkeypatch
) -> None:
    """Per-source figures of many sources show the first ones (the tables keep every row):
    one panel per source of hundreds of sources took minutes and could not be read."""
    import copy

    from kernelatlas.report import builtin_sections as B
    from kernelatlas.report.sections import ReportContext

    base = collide["summary"]
    summary = copy.deepcopy(base)
    summary["models"], summary["layers"] = [], []
    for i in range(3):  # nine sources: three copies of each of the three
        for key in ("models", "layers"):
            for r in copy.deepcopy(base[key]):
                r["source"] = f"{r['source']}#{i}"
                summary[key].append(r)
    monkeypatch.setattr(B, "LAYERS_FIGURE_SOURCES", 4)
    monkeypatch.setattr(B, "COVERAGE_FIGURE_ROWS", 5)
    ctx = ReportContext(tmp_path, summary)
    (layers,) = B._layer_figures(ctx)
    (coverage,) = B._coverage_figures(ctx)
    assert "the first 4 of 9 sources; the table below lists every layer" in layers.caption
    assert "the first 5 of 18 model rows; the table lists every one" in coverage.caption
    assert (tmp_path / "figures" / "layers.png").stat().st_size > 5000
    assert B.models_table(ctx).count("<tr") >= 18  # the table: every row


def test_terminal_table_never_cuts_names() -> None:
    long = "A-Model-Name-Longer-Than-Twenty-Eight-Characters"
    rows = [{"source": "a/x.onnx", "model": long, "kh": 3, "kw": 3, "kernels": 12_345, "degenerate": 0,
             "classified": 10, "coverage": 0.5, "null_coverage": None, "init_coverage": float("nan"),
             "family_shares": {f: 0.1 for f in PATTERN_FAMILIES}}]  # fmt: skip
    text = coverage_table(
        {"models": rows, "layers": [], "config": {"null": "gaussian", "null_fpr": 0.01}}
    )
    assert long in text and "a/x.onnx" in text and "12,345" in text
    assert "nan" not in text


def _ae_summary(method: str) -> dict:
    row = {"source": "a.onnx", "model": "a", "kh": 3, "kw": 3, "kernels": 2_624, "degenerate": 0,
           "classified": 10, "coverage": 0.25, "null_coverage": 0.011, "init_coverage": 0.012,
           "ae_coverage": 0.375, "ae_null_coverage": 0.0105, "agreement": 0.4251,
           "agreement_both_classified": 0.919,
           "family_shares": {f: 0.1 for f in PATTERN_FAMILIES}}  # fmt: skip
    cfg = {"null": "gaussian", "null_fpr": 0.01, "method": method}
    return {"models": [row], "layers": [], "config": cfg}


def test_terminal_table_skipped_sizes_never_widen_a_column() -> None:
    """A size that is not analysed is one line whose reason runs on after the counts; it
    widened the last column to the reason's length (every header and value shifted)."""
    doc = _ae_summary("both")
    doc["skipped"] = [{"source": "t.npy", "model": "t", "kh": 2, "kw": 2, "layers": 1,
                       "kernels": 8, "reason": "2x2: fewer than 3 taps " + "x" * 80}]  # fmt: skip
    lines = coverage_table(doc).splitlines()
    assert len(lines[0]) == len(lines[1]) == len(lines[2])  # header, rule, model row
    assert lines[2].endswith("42.5% (91.9%)")
    assert lines[3].startswith("t") and "not analysed (1 layer): 2x2: fewer" in lines[3]


@pytest.mark.parametrize("method", ["autoencoder", "both"])
def test_terminal_table_shows_the_autoencoder(method: str) -> None:
    lines = coverage_table(_ae_summary(method)).splitlines()
    head = [h.strip() for h in lines[0].split("  ") if h.strip()]
    ae, atlas = head.index("AE classified"), head.index("atlas classified")
    assert head[ae : ae + 3] == ["AE classified", "AE null", "agreement (both)"]
    assert (ae < atlas) == (method == "autoencoder")  # the method asked for comes first
    cells = [c.strip() for c in lines[2].split("  ") if c.strip()]
    assert cells[ae : ae + 3] == ["37.5%", "1.1%", "42.5% (91.9%)"]
    assert cells[atlas] == "25.0%" and "2,624" in cells
    assert "AE classified: the autoencoder" in lines[-1] and "agreement:" in lines[-1]
    plain = coverage_table(_ae_summary("atlas") | {"models": [
        {k: v for k, v in _ae_summary("atlas")["models"][0].items() if not k.startswith(("ae_", "agree"))}
    ]})  # fmt: skip
    assert "AE" not in plain and "agreement" not in plain


# --------------------------------------------------------------------------- figures


def test_ae_spectrum_legend_uses_registry_colours() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    segments = [{"start": 0.0, "end": 0.4, "family": "center"},
                {"start": 0.4, "end": 0.5, "family": "unclassified"},
                {"start": 0.5, "end": 1.0, "family": "first_derivative"}]  # fmt: skip
    decoded = np.random.default_rng(0).standard_normal((16, 3, 3)).astype(np.float32)
    fig, (a1, a2) = plt.subplots(2, 1)
    F.plot_ae_spectrum(a1, a2, segments, decoded, np.random.default_rng(1).uniform(0, 1, 200))
    leg = a2.get_legend()
    got = {t.get_text(): h.get_facecolor() for t, h in zip(leg.get_texts(), leg.legend_handles)}
    plt.close(fig)
    assert set(got) == {"center", "unclassified", "first derivative"}
    for f in ("center", "unclassified", "first_derivative"):
        assert got[f.replace("_", " ")] == to_rgba(F.FAMILY_COLORS[f]), f


def test_spectrum_doc_runs_of_one_name() -> None:
    from kernelatlas.report.spectra import spectrum_doc

    z = np.linspace(0, 1, 512)
    fam = np.where(z < 0.3, "center", np.where(z < 0.35, "unclassified", "first_derivative"))
    spec = pd.DataFrame({"z": z, "family": fam, "label": fam})
    dec = np.random.default_rng(0).standard_normal((512, 5, 5))
    doc = spectrum_doc(spec, dec, 5, 5)
    segs = doc["segments"]
    assert [s["family"] for s in segs] == ["center", "unclassified", "first_derivative"]
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == 1.0
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
    assert segs[0]["end"] == pytest.approx(0.3, abs=1 / 511)
    assert len(doc["decoded"]) == len(doc["decoded_z"]) == 16 and len(doc["decoded"][0]) == 25
    np.testing.assert_allclose(doc["decoded"][-1], dec[-1].ravel(), atol=1e-5)


def _extents(artists, renderer):
    return [a.get_window_extent(renderer) for a in artists]


@pytest.mark.parametrize("n", [8, 14])  # 0.1.0: labels overprinted at 8, the legend hid bars
def test_coverage_chart_labels_and_legend_never_overlap(n: int) -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    models = pd.DataFrame({
        "source": [f"src/{i}/model_{i}.onnx" for i in range(n)],
        "model": [f"Some-Long-Model-Name-{i:02d}" for i in range(n)],
        "kh": 3, "kw": 3, "coverage": rng.uniform(0.6, 1.0, n),  # a top bar near 100%
        "null_coverage": 0.01, "init_coverage": 0.02, "ae_coverage": rng.uniform(0, 1, n),
    })  # fmt: skip
    models.loc[0, "coverage"] = 1.0
    fig, ax = plt.subplots(figsize=(8.5, 0.8 + 0.22 * n * 2))
    F.plot_coverage(ax, models)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = _extents(ax.get_yticklabels(), r)
    for a, b in zip(labels, labels[1:]):
        assert not a.overlaps(b), "tick labels overprint"
    leg = ax.get_legend().get_window_extent(r)
    for bar in _extents(ax.patches, r):
        assert not leg.overlaps(bar), "the legend hides a bar"
    plt.close(fig)


def test_layer_bars_one_per_layer_never_stretched() -> None:
    import matplotlib.pyplot as plt

    # Layers of two sizes interleaved (as in EfficientNet): each must get its own slot.
    sizes = [3, 3, 5, 5, 5, 3, 5, 3]
    layers = pd.DataFrame({
        "source": "m", "model": "m", "kh": sizes, "kw": sizes, "layer_index": range(len(sizes)),
        "depth": np.linspace(0, 1, len(sizes)), "share_center": 0.5, "share_unclassified": 0.5,
    })  # fmt: skip
    fig, ax = plt.subplots()
    F.plot_layer_shares(ax, layers)
    fig.canvas.draw()
    bars = [p for p in ax.patches if p.get_height() > 0 and p.get_facecolor()[:3] == plt.matplotlib.colors.to_rgb(F.FAMILY_COLORS["center"])]  # fmt: skip
    plt.close(fig)
    assert len(bars) == len(sizes)
    widths = {round(b.get_width(), 9) for b in bars}
    assert widths == {0.8}
    xs = sorted(b.get_x() for b in bars)
    assert all(b - a >= 0.8 for a, b in zip(xs, xs[1:])), "bars overlap"


def test_figures_draw_without_library_warnings(collide: dict) -> None:
    assert not collide["warnings"], "a library warning leaked"
    assert "note while drawing" not in collide["stderr"]
    # A library warning raised while drawing is said once, in kernelatlas's words.
    import matplotlib.pyplot as plt

    out = io.StringIO()
    with say_warnings_once(Progress(stream=out, quiet=True), "drawing figures") as said:
        for _ in range(3):
            fig, ax = plt.subplots()
            ax.legend()  # nothing to put in it
            plt.close(fig)
    assert len(said) == 1 and said[0].endswith("(3 times)") and "No artists with labels" in said[0]
    assert out.getvalue().startswith("kernelatlas: note while drawing figures:")  # even when quiet


def test_diagram_on_off_rows_from_the_registry(collide: dict) -> None:
    from kernelatlas.report.diagram import (
        diagram_columns,
        diagram_patterns,
        panel_means,
        panel_sigma,
    )

    cols = diagram_columns()
    assert {c[0].family for c in cols} == set(PATTERN_FAMILIES)
    shapes = {c[0].shape for c in cols if c[0].family == "second_derivative"}
    assert shapes == {"bar", "cross"}  # bars and crosses told apart
    pats = diagram_patterns(cols)
    for col, (on, off) in zip(cols, pats):
        info = FAMILY_INFO[col[0].family]
        if info.has_polarity:
            assert (col[0].polarity, col[1].polarity) == (1, -1)
            assert float((on * off).sum()) == pytest.approx(-1.0, abs=1e-5)  # off = -on
        elif info.orientation_period == 360.0:
            assert (col[1].orientation - col[0].orientation) % 360 == 180
            assert float((on * off).sum()) == pytest.approx(-1.0, abs=1e-3)
        assert "σ=" in col[0].title(2.0)
        if info.orientation_period:
            assert "θ=" in col[0].title(2.0)
        if col[0].family == "shift":  # drawn at its own scale: one off-centre tap
            assert panel_sigma("shift", 2.0) <= 0.5 and float((on**2).max()) > 0.8
            mid = on.shape[0] // 2
            assert abs(on[mid, mid]) < 0.2
        else:
            assert panel_sigma(col[0].family, 2.0) == 2.0
    # Your means: the on-centre panel holds only on-centre kernels, the off-centre one only
    # off-centre kernels (never averaged together), with their counts.
    means, ns = panel_means(collide["out"] / "kernels.parquet", 3, 3, cols)
    c = next(i for i, col in enumerate(cols) if col[0].family == "center")
    df = pd.read_parquet(collide["out"] / "kernels.parquet", columns=["kh", "family", "polarity", "classified"])  # fmt: skip
    sel = (df["kh"] == 3) & (df["family"] == "center") & df["classified"]
    assert ns[c] == [
        int((sel & (df["polarity"] == 1)).sum()),
        int((sel & (df["polarity"] == -1)).sum()),
    ]
    assert min(ns[c]) >= 9  # 4 of each per file, three files (and maybe some noise)
    dog = AF.center_pattern(3, 3, 0.8, polarity=1)[0]
    on, off = (m / np.linalg.norm(m) for m in means[c])
    assert float((on * dog).sum()) > 0.9 and float((off * dog).sum()) < -0.9
    # One labelled figure: the generated rows, your rows per size, n on every panel, a colour bar.
    import matplotlib.pyplot as plt

    from kernelatlas.report.diagram import plot_diagram

    fig = plot_diagram(plt, cols, pats, {"3x3": (means, ns)})
    grid = fig.axes[0]  # every panel on one axes (one image each), then the colour bar
    titles = [t.get_text() for t in grid.texts]
    labels = [a.get_ylabel() for a in fig.axes]
    plt.close(fig)
    assert len(fig.axes) == 2
    n_panels = sum(p is not None for col in cols for p in col)
    assert sum("n=" in t for t in titles) == n_panels  # n on each of your panels
    drawn = sum(n > 0 for col in ns for n in col)
    assert len(grid.images) == n_panels + drawn  # the generated rows, and your non-empty panels
    assert sum(t == "none" for t in titles) == n_panels - drawn
    assert any("weight / max |weight|" in lab for lab in labels)


def test_panel_stats_equals_each_kernel_put_in_its_panels() -> None:
    """The vectorised panel sums equal a kernel-by-kernel assignment by the panel's rule
    (same family, shape and polarity, orientation within the half width modulo the period),
    boundary orientations (in two panels) and unknown names included."""
    from kernelatlas.normalize import normalize
    from kernelatlas.report.diagram import diagram_columns, panel_stats, unit_kernels

    cols = diagram_columns()
    flat = [p for c in cols for p in c if p is not None]
    rng = np.random.default_rng(3)
    n = 3000
    k = rng.standard_normal((n, 5, 5)).astype(np.float32)
    pick = [flat[i] for i in rng.integers(0, len(flat), n)]
    fam = np.array([p.family for p in pick], dtype=object)
    fam[:50] = "unclassified"
    shape = np.array([p.shape or "x" for p in pick], dtype=object)
    step = np.array([FAMILY_INFO[p.family].orientation_period or 360.0 for p in pick]) / 8
    ori = rng.uniform(0, 360, n)
    ori[::7] = np.round(ori[::7] / step[::7]) * step[::7]  # on bin boundaries
    pol = rng.choice([-1, 1], n).astype(float)
    got = panel_stats(k, fam, shape, ori, pol, cols)
    unit = unit_kernels(k).astype(np.float64)
    want_sums, want_n = np.zeros_like(got.sums), np.zeros_like(got.counts)
    for i in range(n):  # kernels, on purpose: the definition, one by one
        for j, p in enumerate(flat):
            per = FAMILY_INFO[p.family].orientation_period or 360.0
            if fam[i] != p.family or (p.shape is not None and shape[i] != p.shape):
                continue
            if p.polarity and pol[i] != p.polarity:
                continue
            if p.orientation is not None:
                if abs((ori[i] - p.orientation + per / 2) % per - per / 2) > p.half_width:
                    continue
            want_sums[j] += unit[i]
            want_n[j] += 1
    assert want_n.sum() > n - 50  # boundary kernels counted twice
    np.testing.assert_array_equal(got.counts, want_n)
    np.testing.assert_allclose(got.sums, want_sums, atol=1e-9)
    # the unit kernels are normalize's (as the atlas sees them), handed over or made here
    np.testing.assert_array_equal(unit, normalize(k).unit)
    given = panel_stats(normalize(k), fam, shape, ori, pol, cols)
    np.testing.assert_array_equal(given.sums, got.sums)
    np.testing.assert_array_equal(given.counts, got.counts)
    empty = panel_stats(np.zeros((0, 5, 5)), [], None, [], [], cols)
    assert empty.sums.shape == got.sums.shape and not empty.counts.any()


# --------------------------------------------------------------------------- compare


def test_compare_flags_incomparable_runs_and_never_writes_nan(
    collide: dict, tmp_path: Path
) -> None:
    from kernelatlas.report.compare import compare

    a = collide["out"]
    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("bank"))
    doc = json.loads((b / "summary.json").read_text())
    doc["config"]["null_fpr"] = 0.05
    doc["kernelatlas_version"] = "0.0.9"
    (b / "summary.json").write_text(json.dumps(doc))
    out = compare([a, b], tmp_path / "cmp", labels=["a", "b"])
    res = json.loads((out / "comparison.json").read_text())
    assert res["comparable"] is False and len(res["differences"]) == 2
    assert any("false-positive rate" in d and "0.05" in d for d in res["differences"])
    page = (out / "index.html").read_text()
    assert "id='ka-incomparable'" in page and "kernelatlas version: a = " in page
    assert "nan%" not in page and "nan" not in re.sub(r"<[^>]+>", "", page).split()
    assert page.count("data:image/png;base64,") == 3 and 'src="figures/' not in page
    assert len(res["rows"]) == 12  # 2 runs x 3 sources x 2 sizes, sources kept apart
    with pytest.raises(KernelAtlasError, match="not comparable"):
        compare([a, b], tmp_path / "cmp2", labels=["a", "b"], strict=True)
    same = compare([a, a], tmp_path / "cmp3", labels=["x", "y"], strict=True)
    assert json.loads((same / "comparison.json").read_text())["comparable"] is True


# --------------------------------------------------------------------------- progress


def test_progress_off_a_terminal_is_plain_lines(collide: dict) -> None:
    text = collide["stderr"]
    assert "\r" not in text and "\x1b[" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("kernelatlas: ") for ln in lines), lines
    for stage in ("calibrate 3x3", "calibrate 5x5", "classify and fit", "figures"):
        done = (f"kernelatlas: {stage}: done", f"kernelatlas: {stage} (from the cache): done")
        assert any(ln.startswith(done) for ln in lines), stage


def test_progress_counts_one_unit_in_the_singular() -> None:
    out = io.StringIO()
    p = Progress(stream=out, tty=False, interval=0)
    for total in (1, 2):
        with p.stage("baseline figures", total, "figure") as st:
            st.update(total)
    text = out.getvalue()
    assert "baseline figures: 1 figure\n" in text and "(1 figure, " in text, text
    assert "baseline figures: 2 figures\n" in text and "(2 figures, " in text, text
    assert "1 figures" not in text


def test_calibration_and_training_advance_their_bars() -> None:
    from kernelatlas.atlas import Atlas
    from kernelatlas.autoencoder import KernelAutoencoder

    out = io.StringIO()
    p = Progress(stream=out, tty=False, interval=0)
    with p.stage("calibrate 3x3", 1000, "kernel", counts="score") as st:
        Atlas(kernel_size=3, n_null=1000, batch_size=256).fit()
    assert st.n == 1000
    pct = re.findall(r"calibrate 3x3: (\d+)% ", out.getvalue())
    assert len(set(pct)) >= 3, out.getvalue()  # it moved between the start and the end
    k = np.random.default_rng(0).standard_normal((300, 3, 3)).astype(np.float32)
    with p.stage("autoencoder 3x3", 4, "epoch", counts="ae_epoch") as st:
        KernelAutoencoder(3, hidden=8, epochs=4, name_spectrum=False).fit(k)
    assert st.n == 4
    assert re.search(r"autoencoder 3x3: 50% \(2/4 epochs", out.getvalue())
    # Work of another kind is not counted by a stage (nested work never counts twice).
    with p.stage("classify", 10, "kernel", counts="fit") as st:
        Atlas(kernel_size=3, n_null=500).fit()
    assert st.n == 0


def test_quiet_silences_progress_only(
    collide: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from kernelatlas.cli import main

    out = tmp_path / "q"
    src = str(collide["paths"][0])
    assert (
        main(["analyze", src, "--out", str(out), "--quiet", "--no-fit", "--no-init-baseline"]) == 0
    )
    cap = capsys.readouterr()
    assert "kernelatlas: calibrate" not in cap.err and "%" not in cap.err
    assert cap.out.splitlines()[0].split()[:3] == ["model", "source", "size"]
    assert src in cap.out and f"report: {(out / 'index.html').resolve()}" in cap.out


def test_summary_layers_in_network_order() -> None:
    """Layers by index, not by name (EfficientNet-Lite0 was listed #0, #1, #15, #2, ...)."""
    from kernelatlas.report.summary import merge_counts, partial_counts

    idx = [0, 1, 15, 2, 10, 3]
    rows = pd.DataFrame({"source": "m", "model": "m", "kh": 3, "kw": 3,
                         "layer": [f"_blocks.{i}._depthwise" for i in idx], "layer_index": idx,
                         "depth": [i / 15 for i in idx], "family": "center", "classified": True})  # fmt: skip
    merged = merge_counts([partial_counts(rows.iloc[:3]), partial_counts(rows.iloc[3:])])
    assert merged["layers"]["layer_index"].tolist() == sorted(idx)


def test_compare_family_labels_never_overlap(collide: dict, tmp_path: Path, monkeypatch) -> None:
    """The families figure of `compare`: one readable label per (run, source, size) row."""
    from kernelatlas.report.compare import compare
    from kernelatlas.report.sections import ReportContext

    seen: dict[str, list] = {}
    save = ReportContext.save

    def spy(self, fig, file, caption):
        if file == "families.png":
            fig.canvas.draw()
            r = fig.canvas.get_renderer()
            seen["boxes"] = [t.get_window_extent(r) for t in fig.axes[0].get_yticklabels()]
        return save(self, fig, file, caption)

    monkeypatch.setattr(ReportContext, "save", spy)
    a = collide["out"]
    compare([a, a], tmp_path / "cmp", labels=["a run with a long name", "another run"])
    boxes = seen["boxes"]
    assert len(boxes) == 12  # 2 runs x 3 sources x 2 sizes
    assert not any(b.overlaps(c) for i, b in enumerate(boxes) for c in boxes[i + 1 :])


def test_page_pass_started_before_the_baselines_reads_what_the_report_reads(collide: dict) -> None:
    """The page's pass over the kernels (explorer sample, biology sample and comparison)
    started from a summary without baselines, as the analysis starts it beside them, gives
    what the report computes on its own from the final summary."""
    from kernelatlas import report

    out = collide["out"]
    summary = load_summary(out)
    ctx = report._context(out, summary)
    own = report._biology(ctx).result().doc()
    early = json.loads(json.dumps(summary))
    for m in early["models"]:  # what the baselines add is not there yet
        for key in ("baselines", "excess", "strongest_baseline", "null_coverage"):
            m[key] = None
    early["thresholds"], early["biology"] = [], None
    (payload, stash), pending = report.start_page(out, early).result()
    assert json.dumps(payload) == json.dumps(ctx.cache["explorer"][0])
    assert own == pending.result().doc() and own["rows"]
    assert stash["weights"]
    for key in ("weights", "extra"):  # the kept kernels and the biology sample's weights
        mine, theirs = stash[key], ctx.cache["explorer"][1][key]
        assert sorted(mine) == sorted(theirs)
        for size in mine:
            assert all(np.array_equal(x, y) for x, y in zip(mine[size], theirs[size], strict=True))


def test_early_figures_are_drawn_while_the_baselines_are_measured(
    collide: dict, tmp_path: Path
) -> None:
    """With ``final``, the figures of the sections that need no baseline (layers, atlas,
    examples) are drawn before the complete summary is asked for, the others after; the
    page, summary.json and figures are those of the report drawn from the final summary."""
    from kernelatlas.report import start_page, write_report

    run = tmp_path / "run"
    shutil.copytree(collide["out"], run)
    shutil.rmtree(run / "figures")
    summary = load_summary(run)
    summary.pop("biology")
    early = json.loads(json.dumps(summary))
    for m in early["models"]:
        m["baselines"] = m["excess"] = None
    seen = []

    def final() -> dict:
        seen.extend(sorted(p.name for p in (run / "figures").glob("*.png")))
        return json.loads(json.dumps(summary))

    write_report(run, early, page=start_page(run, early), final=final)
    assert "layers.png" in seen and "atlas.png" in seen and "examples_3x3.png" in seen
    assert "coverage.png" not in seen and not any(s.startswith("biology") for s in seen)
    for name in ("summary.json", "index.html"):
        a = (collide["out"] / name).read_text().replace(str(collide["out"]), "")
        assert a == (run / name).read_text().replace(str(run), ""), name
    for png in (collide["out"] / "figures").glob("*.png"):
        assert png.read_bytes() == (run / "figures" / png.name).read_bytes(), png.name


# --------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_explorer_controls_keyboard_history_and_phone_in_chromium(
    collide: dict, tmp_path: Path
) -> None:
    """The page (moved alone) as a user drives it in Chromium: the layer filter, a layer row
    opening its kernels and Back undoing it, the kernels and the table headers from the
    keyboard, and nothing wider than a 390 px phone; no console error or warning."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from tests.browser import chromium, missing, open_report, phone

    if missing():
        pytest.fail(missing())
    run = collide["out"]
    page = tmp_path / "moved" / "r.html"
    page.parent.mkdir()
    shutil.copy(run / "index.html", page)
    table = pq.read_table(run / "kernels.parquet", columns=["source", "layer"]).to_pandas()
    layers = load_summary(run)["layers"]
    driver = chromium(tmp_path)
    try:
        open_report(driver, page)

        def rows() -> list[int]:
            return driver.execute_script(
                "var e = window.kernelatlas.explorer;"
                "return Array.from(e.matches()).map(i => e.kernelInfo(i).row)"
            )

        def kernels_of(i: int) -> list[int]:
            sel = (table["source"] == layers[i]["source"]) & (table["layer"] == layers[i]["layer"])
            return list(np.flatnonzero(sel.to_numpy()))

        # The layer list filters (it put back the previous choice, so it never did).
        Select(driver.find_element("id", "ka-f-layer")).select_by_value("1")
        assert rows() == kernels_of(1)
        Select(driver.find_element("id", "ka-f-layer")).select_by_value("")
        assert len(rows()) == len(table)

        # A layer row opens its kernels; Back gives the filter and the scroll back.
        row = driver.find_elements("css selector", "#ka-layer-table tbody tr.pick")[2]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
        y = driver.execute_script("return window.scrollY")
        row.click()
        picked = int(row.get_attribute("data-layer"))
        assert rows() == kernels_of(picked)
        top = "return document.getElementById('ka-explorer').getBoundingClientRect().top"
        assert abs(driver.execute_script(top)) <= 2  # scrolled to the explorer
        driver.back()
        driver.execute_script("return 1")  # let popstate run
        assert len(rows()) == len(table)
        assert abs(driver.execute_script("return window.scrollY") - y) <= 2

        # The kernels from the keyboard: Tab reaches the grid, arrows move, Enter pins.
        grid = driver.find_element("id", "ka-grid")
        assert grid.get_attribute("tabindex") == "0"
        driver.execute_script("arguments[0].focus()", grid)
        grid.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        dl = driver.find_element("id", "ka-dl")
        assert int(dl.get_attribute("data-row")) == rows()[2]
        grid.send_keys(Keys.ENTER)
        assert driver.execute_script("return window.kernelatlas.explorer.state.pinned") == 2
        # ... and the table headers sort from it.
        th = driver.find_element("css selector", "#ka-layer-table thead th:nth-child(6)")
        assert th.get_attribute("tabindex") == "0"
        th.send_keys(Keys.ENTER)
        assert th.get_attribute("aria-sort") == "ascending"

        # A phone: nothing is wider than the screen (wide tables scroll in their own box).
        phone(driver)
        open_report(driver, page)
        over = driver.execute_script(
            "var W = document.documentElement.clientWidth;"
            "return [document.documentElement.scrollWidth, W]"
        )
        assert over[0] <= over[1], over
        logs = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not logs, logs
    finally:
        driver.quit()


def test_a_tiny_false_positive_rate_is_written_in_plain_digits() -> None:
    """``--null-fpr 1e-9`` read "1e-07% false positives" in the terminal and on the page."""
    from kernelatlas.report.labels import percent
    from kernelatlas.report.terminal import coverage_table

    assert [percent(r) for r in (0.01, 0.005, 1e-9, 0.0123456)] == [
        "1%", "0.5%", "0.0000001%", "1.23%"
    ]  # fmt: skip
    text = coverage_table({"config": {"null": "gaussian", "null_fpr": 1e-9}, "models": []})
    assert "(0.0000001% false positives)" in text and "e-0" not in text, text
