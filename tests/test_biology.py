"""The biology comparison: cited reference table, statistics with known values, real data."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from kernelatlas.atlas import functional as F
from kernelatlas.atlas.functional import gaussian_basis
from kernelatlas.biology import (
    COMPARE_COLUMNS,
    NULL_SOURCE,
    REFERENCE_COLUMNS,
    STAT_COLUMNS,
    STATISTICS,
    compare,
    kernel_statistics,
    label_kernels,
    null_statistics,
    reference,
    sources,
)
from kernelatlas.biology import statistics as S
from kernelatlas.biology.comparison import _published
from kernelatlas.biology.literature import CITATION_COLUMNS, DOI_PATTERN
from kernelatlas.errors import KernelAtlasError
from kernelatlas.taxonomy import PATTERN_FAMILIES

# statistics in the reference table that no compared statistic reads (context for the docs)
_CONTEXT_ONLY = {"dog_model", "gabor_model"}


# --------------------------------------------------------------------------- reference
def test_every_reference_value_has_a_full_citation() -> None:
    ref = reference()
    assert tuple(ref.columns) == REFERENCE_COLUMNS
    assert len(ref) >= 10 and ref["ref_id"].nunique() >= 8
    for _, row in ref.iterrows():
        for col in CITATION_COLUMNS:
            assert str(row[col]).strip(), f"{row['ref_id']}: empty {col}"
        assert DOI_PATTERN.match(row["doi"]), f"{row['ref_id']}: malformed DOI {row['doi']!r}"
        assert 1950 <= row["year"] <= 2026, row["ref_id"]
        assert row["claim"].strip(), f"{row['ref_id']}: no claim in words"
        if row["value_kind"] == "qualitative":
            assert np.isnan(row["value"]), f"{row['ref_id']}: a number in a qualitative row"
        else:
            assert np.isfinite(row["value"]), f"{row['ref_id']}: {row['value_kind']} without value"
            # a number says where it stands and what page it was read on
            assert row["location"].strip() and row["verified_from"].strip(), row["ref_id"]
        if row["value_kind"] == "lower_bound":
            assert row["note"].strip(), f"{row['ref_id']}: a bound without its conversion"
        if not row["doi_verified"]:
            assert row["note"].strip(), f"{row['ref_id']}: unverified DOI without a note why"
    # one citation per paper: rows of one ref_id agree on every citation column
    cites = ref.groupby("ref_id")[list(CITATION_COLUMNS[:7])].nunique()
    assert (cites == 1).all().all(), cites[(cites != 1).any(axis=1)]
    # every row is compared with something, or is context the docs use
    used = {r for s in STATISTICS.values() for r in s.references}
    assert set(ref["statistic"]) <= used | _CONTEXT_ONLY
    # the one number this release maps onto a statistic is the one in the abstract
    ck = ref[(ref["ref_id"] == "croner_kaplan_1995") & (ref["statistic"] == "surround_weight")]
    assert ck["value"].tolist() == [0.55]


def test_published_value_from_point_estimates_only() -> None:
    ref = reference()
    sw, card = STATISTICS["surround_weight"], STATISTICS["cardinal_bias"]
    # a qualitative statistic takes no number, even from a numeric row (hammond_1974's bound)
    value, relation, refs = _published(card, ref)
    assert np.isnan(value) and relation == "qualitative"
    assert "hammond_1974" in refs and "li_peterson_freeman_2003" in refs
    # several point estimates: their median, numeric rows listed first
    extra = ref[ref["ref_id"] == "croner_kaplan_1995"].assign(ref_id="other", value=0.75)
    bound = extra.assign(ref_id="bound", value=5.0, value_kind="lower_bound")
    value, relation, refs = _published(sw, pd.concat([ref, extra, bound]))
    assert value == pytest.approx(0.65) and relation == "="
    assert refs.split(";")[:2] == ["croner_kaplan_1995", "other"] and "bound" in refs
    assert _published(sw, ref.iloc[:0]) == (pytest.approx(np.nan, nan_ok=True), "", "")


def test_sources_one_row_per_paper() -> None:
    src = sources()
    assert src["ref_id"].is_unique and len(src) == reference()["ref_id"].nunique()
    assert src.set_index("ref_id").loc["ringach_2002", "statistics"] == "symmetry, rf_shape"


# --------------------------------------------------------------------------- statistics
def _dog(kh: int, s1: float, s2: float, a: float, polarity: float = 1.0) -> np.ndarray:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    g1 = gaussian_basis(kh, kh, t(s1), t(0.0), t(0.0), order=0)["G"][0].numpy()
    g2 = gaussian_basis(kh, kh, t(s2), t(0.0), t(0.0), order=0)["G"][0].numpy()
    return polarity * (g1 - a * g2)


def test_opponent_ratio_known_values() -> None:
    blob = _dog(5, 0.8, 2.0, 0.0)
    dog = _dog(21, 0.5, 2.5, 0.5)  # rs / rc = 5 and +-4 rs of support: nothing cut off
    small = _dog(5, 0.5, 2.5, 0.5)  # the same DoG cut to 5x5 loses most of its surround
    r = S.opponent_ratio(np.stack([blob, -blob]))
    assert r.tolist() == [0.0, 0.0]
    big = S.opponent_ratio(np.stack([dog, -dog]))
    assert big[0] == pytest.approx(big[1]) and 0.4 < big[0] <= 0.5  # <= a, near it at rs/rc = 5
    assert S.opponent_ratio(small[None])[0] < 0.5 * big[0]
    assert np.isnan(S.opponent_ratio(np.zeros((1, 3, 3))))[0]


def test_symmetry_phase_known_values() -> None:
    first = F.first_derivative_pattern(5, 5, 1.0, [0.0, 45.0, 200.0])
    bar = F.second_derivative_pattern(5, 5, 1.0, [0.0, 70.0], kind="bar")
    forward = np.array([[[0, 0, 0], [0, -1, 1], [0, 0, 0]]], dtype=np.float32)
    assert S.symmetry_phase(first) == pytest.approx([90, 90, 90], abs=1e-3)
    assert S.symmetry_phase(bar) == pytest.approx([0, 0], abs=1e-3)
    # half a pixel off centre: even energy 1.5, odd 0.5 -> atan(sqrt(1/3)) = 30 deg
    assert S.symmetry_phase(forward)[0] == pytest.approx(30.0)


@pytest.mark.parametrize("family", ["first_derivative", "second_derivative"])
def test_elongation_recovers_the_grid(family: str) -> None:
    g = S.elongation_grid(7, 7)
    pairs = [(3, 9), (6, 6), (9, 4), (2, 12)]
    ori = [20.0, 95.0, 160.0, 300.0]
    k = np.stack(
        [
            S.anisotropic_pattern(7, 7, family, g[i], g[j], o, 0.4, -0.3)
            for (i, j), o in zip(pairs, ori)
        ]
    )
    r, edge = S.elongation(k, [family] * 4, ori, [0.4] * 4, [-0.3] * 4)
    assert r == pytest.approx([g[j] / g[i] for i, j in pairs])
    assert not edge.any()
    # pixel-integrated isotropic atlas patterns are isotropic for the grid search too
    iso = (
        F.first_derivative_pattern(5, 5, 1.1, [0.0, 33.0])
        if family == "first_derivative"
        else F.second_derivative_pattern(5, 5, 1.1, [0.0, 33.0], kind="bar")
    )
    assert S.elongation(iso, [family] * 2, [0.0, 33.0])[0] == pytest.approx([1.0, 1.0])
    # other families and missing orientations give NaN
    r, _ = S.elongation(k[:2], ["center", family], [20.0, np.nan])
    assert np.isnan(r).all()


def test_cardinal_sign_and_axis() -> None:
    o = np.array([0.0, 10.0, 22.0, 23.0, 45.0, 80.0, 95.0, 135.0, 179.0, 270.0, 315.0, np.nan])
    assert S.cardinal_sign(o)[:-1].tolist() == [1, 1, 1, -1, -1, 1, 1, -1, 1, 1, -1]
    assert np.isnan(S.cardinal_sign(o)[-1])
    assert S.axis_orientation([10.0, 190.0, 359.0]).tolist() == [10.0, 10.0, 179.0]
    rng = np.random.default_rng(0)
    assert abs(S.cardinal_sign(rng.uniform(0, 360, 40_000)).mean()) < 0.02  # uniform -> 0


# --------------------------------------------------------------------------- compare
def _toy_table() -> pd.DataFrame:
    """5x5 kernels with known statistics: 6 edges, 2 bars, 3 DoGs, 2 unclassified."""
    g = S.elongation_grid(5, 5)
    su, sv = g[5], g[8]  # elongation g[8] / g[5]
    edges = [
        S.anisotropic_pattern(5, 5, "first_derivative", su, sv, o)
        for o in (0, 90, 180, 270, 45, 10)
    ]
    bars = [S.anisotropic_pattern(5, 5, "second_derivative", su, sv, o) for o in (0, 135)]
    dogs = [_dog(5, 0.6, 1.2, 0.3), _dog(5, 0.6, 1.2, 0.3, -1.0), _dog(5, 0.8, 1.6, 0.3)]
    rng = np.random.default_rng(3)
    noise = list(rng.standard_normal((2, 5, 5)))
    fam = (
        ["first_derivative"] * 6 + ["second_derivative"] * 2 + ["center"] * 3 + ["unclassified"] * 2
    )
    w = edges + bars + dogs + noise
    return pd.DataFrame(
        {"source": "toy.npy", "model": "toy", "kh": 5, "kw": 5, "family": fam,
         "classified": [f != "unclassified" for f in fam],
         "weights": [np.asarray(k, np.float32).reshape(-1) for k in w]}
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy_compare() -> tuple[pd.DataFrame, pd.DataFrame]:
    table = _toy_table()
    stats = kernel_statistics(table)
    return compare(table, null=False, statistics={"kernels": stats}), stats


def test_compare_toy_table_known_values(toy_compare) -> None:
    out, stats = toy_compare
    assert tuple(out.columns) == COMPARE_COLUMNS and tuple(stats.columns) == STAT_COLUMNS
    assert len(stats) == 11  # the classified kernels only
    assert list(out["statistic"]) == list(STATISTICS)
    row = out.set_index("statistic")
    g = S.elongation_grid(5, 5)

    def val(name: str) -> float:
        return float(row.loc[name, "kernels_value"])

    assert row.loc["cardinal_bias", "kernels_n"] == 8
    assert val("cardinal_bias") == pytest.approx((6 - 2) / 8)  # 45 and 135 are oblique
    assert val("odd_share") == pytest.approx(6 / 8)
    assert (
        val("share_center") == pytest.approx(3 / 11) and row.loc["share_center", "kernels_n"] == 11
    )
    assert val("phase") == pytest.approx(90.0, abs=0.01) and val("phase_purity") == 1.0
    # drawn on the grid; read from the fits' own sigma_u / sigma_v (pixel-integrated model)
    assert val("elongation") == pytest.approx(g[8] / g[5], rel=0.01)
    assert val("surround_ratio") == pytest.approx(2.0, rel=0.1)
    assert 0.0 <= val("opponent_ratio") < 0.3  # <= a = 0.3, lowered by the 5x5 support
    assert row.loc["surround_weight", "published_value"] == 0.55
    assert "croner_kaplan_1995" in row.loc["surround_weight", "published_refs"]
    assert row.loc["opponent_ratio", "published_relation"] == "<="
    assert (out["null_n"] == 0).all() and out["null_value"].isna().all()  # null=False
    # lo <= value <= hi wherever there is a value
    v, lo, hi = out["kernels_value"], out["kernels_lo"], out["kernels_hi"]
    assert ((lo <= v + 1e-12) & (v <= hi + 1e-12))[v.notna()].all()


def test_compare_pairs_init_by_model_and_refuses_bad_tables(toy_compare) -> None:
    table = _toy_table()
    init = table.copy()
    init["classified"] = [True] * 6 + [False] * 7  # the init twin: 6 edges classified
    out = compare(table, init=init, null=False, statistics={"kernels": toy_compare[1]})
    row = out.set_index("statistic")
    assert row.loc["odd_share", "init_n"] == 6 and row.loc["odd_share", "init_value"] == 1.0
    with pytest.raises(KernelAtlasError, match="weights"):
        compare(table.drop(columns=["weights"]), null=False)
    with pytest.raises(KernelAtlasError, match="cannot read"):
        compare("/nonexistent/kernels.parquet", null=False)


def test_null_statistics_rest_on_the_calibrated_share() -> None:
    null = null_statistics(3, 3, n=4000, n_null=2000, null_fpr=0.01, fits=False)
    assert set(null["model"]) == {NULL_SOURCE} and set(null["family"]) <= set(PATTERN_FAMILIES)
    assert 10 <= len(null) <= 100  # about 1% of 4,000 classified
    again = null_statistics(3, 3, n=4000, n_null=2000, null_fpr=0.01, fits=False)
    pd.testing.assert_frame_equal(null, again)  # deterministic given the seed


def test_figures_draw_on_an_ax(toy_compare) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kernelatlas.biology.figures import (
        plot_distribution_row,
        plot_family_orders,
        plot_statistic,
    )

    out, stats = toy_compare
    fig, axes = plt.subplots(1, 7)
    plot_statistic(axes[0], out, "surround_weight")
    assert any(line.get_linestyle() == "--" for line in axes[0].get_lines())  # the published line
    plot_statistic(axes[1], out, "cardinal_bias")
    assert len(axes[1].containers) == 1  # trained only: no null, no init in this table
    plot_distribution_row(axes[2:], stats.assign(group="kernels"))
    assert axes[5].patches, "elongation histogram is empty"
    plt.close(fig)
    fig, ax = plt.subplots()
    plot_family_orders(ax, out)
    assert len(ax.patches) == 6  # 3 families x (trained, null)
    plt.close(fig)


# --------------------------------------------------------------------------- real data
def test_compare_on_a_real_model_is_fast_and_finds_the_cardinal_bias() -> None:
    """EfficientNet-Lite0's 5x5 kernels (real ImageNet weights): the trained edges and bars
    lie along the pixel axes far more than the null's (docs/biology.md: 0.75 vs 0.04)."""
    from kernelatlas.harvest import harvest

    res = harvest("efficientnet_lite0")
    k = np.concatenate([layer.weights for layer in res.layers if layer.weights.shape[1:] == (5, 5)])
    table = label_kernels(k, source="efficientnet_lite0", model="EfficientNet-Lite0", n_null=5000)
    assert len(table) == 6336
    # fits=False: the atlas's orientations, for the kernels and the null alike (fast)
    out = compare(table, n_biology_null=6000, n_null=5000, max_kernels=1500, fits=False)
    row = out.set_index("statistic")
    assert row.loc["cardinal_bias", "kernels_n"] > 200 and row.loc["cardinal_bias", "null_n"] > 10
    assert row.loc["cardinal_bias", "kernels_value"] > 0.4
    assert row.loc["cardinal_bias", "kernels_value"] > row.loc["cardinal_bias", "null_value"] + 0.3
    # the trained centre kernels are mostly one-signed blobs: far less opponent weight than the null's
    assert (
        row.loc["opponent_ratio", "kernels_value"] < 0.5 * row.loc["opponent_ratio", "null_value"]
    )
    assert np.isnan(row.loc["surround_ratio", "kernels_value"])  # no fits, no DoG parameters


def test_a_kernels_file_reads_like_its_dataframe(tmp_path, toy_compare) -> None:
    """From a file only the classified rows' weights are loaded; same statistics, same sample."""
    table = _toy_table()
    table.to_parquet(tmp_path / "kernels.parquet")
    pd.testing.assert_frame_equal(kernel_statistics(tmp_path), toy_compare[1])
    a = kernel_statistics(tmp_path / "kernels.parquet", max_kernels=4, fits=False)
    b = kernel_statistics(table, max_kernels=4, fits=False)
    assert len(a) == 4
    pd.testing.assert_frame_equal(a, b)


def test_a_bounded_sample_per_size_is_shared_equally(tmp_path) -> None:
    """``max_per_size``: every (source, model) of a size gets the same quota (or all it has),
    together within the bound, the same rows from a file as from its DataFrame; without it
    the sample is the per-model one."""
    from kernelatlas.biology.comparison import _quotas

    assert _quotas(np.array([5, 100, 100]), None, 85).tolist() == [5, 40, 40]
    assert _quotas(np.array([5, 100, 100]), 30, 85).tolist() == [5, 30, 30]
    assert _quotas(np.array([5, 10]), None, 100).tolist() == [5, 10]
    toy = _toy_table()
    table = pd.concat(
        [toy.assign(source=f"m{i}.npy", model=f"m{i}") for i in range(3)] + [toy.iloc[:3]],
        ignore_index=True,
    )  # three models of 11 classified kernels, and toy.npy with 3
    table.to_parquet(tmp_path / "kernels.parquet")
    a = kernel_statistics(table, max_per_size=15, fits=False, seed=4)
    b = kernel_statistics(tmp_path, max_per_size=15, fits=False, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("model").size().to_dict() == {"m0": 4, "m1": 4, "m2": 4, "toy": 3}
    full = kernel_statistics(table, fits=False)
    assert full.groupby("model").size().to_dict() == {"m0": 11, "m1": 11, "m2": 11, "toy": 3}


def test_the_null_statistics_come_from_the_user_cache(tmp_path, monkeypatch) -> None:
    """The null's statistics depend only on the settings: written once under
    ``<cache>/biology``, read back the same; an entry that does not read back is recomputed."""
    from kernelatlas.biology import group_statistics

    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path))
    kw = {"sizes": [(5, 5)], "n_biology_null": 3000, "n_null": 2000, "fits": False}
    first = group_statistics(None, **kw)["null"]
    (entry,) = (tmp_path / "biology").iterdir()
    assert len(first) > 5 and set(first["source"]) == {"<null>"}
    pd.testing.assert_frame_equal(group_statistics(None, **kw)["null"], first)
    entry.write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(group_statistics(None, **kw)["null"], first)
    assert entry.read_bytes()[:4] == b"PAR1"  # rewritten
    other = group_statistics(None, **{**kw, "seed": 1})["null"]
    assert len(list((tmp_path / "biology").iterdir())) == 2 and not other.equals(first)
    # other code of the same version (a development install): its own entry, never this one
    import kernelatlas.biology.comparison as comparison

    code = tmp_path / "statistics_v2.py"
    code.write_text("# one version of the code\n")
    monkeypatch.setattr(comparison, "_BIOLOGY_CODE", (*comparison._BIOLOGY_CODE, str(code)))
    group_statistics(None, **kw)
    assert len(list((tmp_path / "biology").iterdir())) == 3
    code.write_text("# the same file, changed\n")
    group_statistics(None, **kw)
    assert len(list((tmp_path / "biology").iterdir())) == 4


def test_init_kernels_use_the_twins_the_analysis_harvested(tmp_path) -> None:
    """A twin harvested already is used as it is (no model is built again)."""
    from kernelatlas.biology.report import init_kernels
    from kernelatlas.harvest import harvest

    rng = np.random.default_rng(0)
    np.save(tmp_path / "twin.npy", rng.standard_normal((40, 5, 5)).astype(np.float32))
    res = harvest(str(tmp_path / "twin.npy"))
    table = init_kernels({"efficientnet_lite0": "Lite0"}, harvested={"efficientnet_lite0": res}, n_null=2000)  # fmt: skip
    assert len(table) == 40 and set(table["model"]) == {"Lite0"}
    np.testing.assert_array_equal(
        np.stack(table["weights"]).reshape(40, 5, 5), res.layers[0].weights
    )


def test_a_sample_from_part_files_is_the_sample_of_the_whole_table(tmp_path) -> None:
    """kernels.parquet as a folder of parts (as ``analyze`` writes it): a file holding two
    groups, a group spread over two files, a group first seen in the last file: the same
    rows and columns as the sample of the table in one DataFrame."""
    from kernelatlas.biology.comparison import _read, sample_kernels

    toy = _toy_table()
    m0, m1, m2 = (toy.assign(source=f"m{i}.npy", model=f"m{i}") for i in range(3))
    small = m0.assign(kh=3, kw=3, weights=[w[:9] for w in m0["weights"]])
    files = [pd.concat([m0, m1.iloc[:5]]), pd.concat([m2, m1.iloc[5:]]), small]
    (tmp_path / "kernels.parquet").mkdir()
    for i, f in enumerate(files):
        f.to_parquet(tmp_path / "kernels.parquet" / f"part-{i:05d}.parquet", index=False)
    table = pd.concat(files, ignore_index=True)
    want = _read(table, None, 4, 10)  # the DataFrame's sample (index: its rows)
    got = sample_kernels(tmp_path, max_kernels=None, seed=4, max_per_size=10)
    assert got["_row"].tolist() == want.index.tolist()
    assert got.groupby(["model", "kh"]).size().to_dict() == {
        ("m0", 3): 10,
        ("m0", 5): 3,
        ("m1", 5): 3,
        ("m2", 5): 3,
    }
    for c in ("source", "model", "kh", "kw", "family", "classified"):
        assert got[c].tolist() == want[c].tolist(), c
    every = sample_kernels(tmp_path, max_kernels=None, seed=4, max_per_size=None)
    assert every["_row"].tolist() == np.flatnonzero(table["classified"]).tolist()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_a_sample_from_many_part_files_keeps_few_files_open(tmp_path) -> None:
    """An analysis may write thousands of parts: the sample reads them one file at a time
    (here 120 parts under a limit of 40 more open files than the test holds)."""
    import resource

    from kernelatlas.biology.comparison import sample_kernels

    toy = _toy_table()
    (tmp_path / "kernels.parquet").mkdir()
    for i in range(120):
        part = toy.iloc[[i % len(toy)]].assign(source=f"m{i}.npy", model=f"m{i}")
        part.to_parquet(tmp_path / "kernels.parquet" / f"part-{i:05d}.parquet", index=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    try:
        got = sample_kernels(tmp_path, max_kernels=None, seed=0, max_per_size=None)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(got) == sum(bool(toy["classified"].iloc[i % len(toy)]) for i in range(120))


def test_mean_intervals_stay_inside_the_range_on_few_kernels() -> None:
    """Shares and the cardinal-bias index get a Wilson interval: the normal one left
    [-1, 1] (0.33 [-0.73, 1.40] on 3 fresh-init kernels) and had zero width at 0 and 1."""
    from kernelatlas.biology.comparison import _reduce

    def frame(orientations):
        return pd.DataFrame({"family": ["first_derivative"] * len(orientations),
                             "orientation": orientations})  # fmt: skip

    m, lo, hi, n = _reduce(STATISTICS["cardinal_bias"], frame([0.0, 90.0, 45.0]))
    assert n == 3 and m == pytest.approx(1 / 3) and -1.0 <= lo < m < hi <= 1.0
    m, lo, hi, _ = _reduce(STATISTICS["cardinal_bias"], frame([0.0, 90.0, 180.0]))
    assert m == 1.0 and -1.0 < lo < 1.0 and hi == pytest.approx(1.0)
    m, lo, hi, _ = _reduce(STATISTICS["odd_share"], frame([0.0, 10.0]))
    assert m == 1.0 and 0.0 < lo < 1.0 and hi == pytest.approx(1.0)


def test_the_sample_text_names_only_the_bounds_that_bind() -> None:
    """A per-model bound at or above the per-size one never binds: the page does not name it
    beside the one that does (it read '20,000 per model ... and 2,000 per kernel size')."""
    from kernelatlas.biology.report import _sample_text

    both = _sample_text({"max_kernels": 20_000, "max_per_size": 2_000})
    assert "2,000 per kernel size" in both and "20,000" not in both, both
    tight = _sample_text({"max_kernels": 500, "max_per_size": 2_000})
    assert "500 per model and size" in tight and "2,000 per kernel size" in tight, tight
    assert "500 per model" in _sample_text({"max_kernels": 500, "max_per_size": None})
    assert _sample_text({"max_kernels": None, "max_per_size": None}).startswith("Every")


def test_a_run_path_names_the_null_at_the_runs_rate(tmp_path, monkeypatch) -> None:
    """``compare(run)`` calibrates the null as the run calibrated its kernels (its
    summary.json's ``null_fpr``, ``n_null``, ``seed``), not at the 1% default: an analysis
    at ``--null-fpr 0.05`` compared at 1% gave a null of another selection, silently."""
    import json

    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    _toy_table().to_parquet(run / "kernels.parquet")
    cfg = {"null_fpr": 0.05, "n_null": 2000, "seed": 3}
    (run / "summary.json").write_text(json.dumps({"config": cfg}))
    kw = {"n_biology_null": 3000, "fits": False}
    got = compare(run, **kw).set_index("statistic").loc["share_center"]
    want = compare(_toy_table(), **kw, **cfg).set_index("statistic").loc["share_center"]
    default = compare(_toy_table(), **kw, n_null=2000).set_index("statistic").loc["share_center"]
    assert got["null_n"] == want["null_n"] and got["null_value"] == want["null_value"]
    assert got["null_n"] > 2.5 * default["null_n"]  # 5% of 3,000 kernels, not 1%
    explicit = compare(run / "kernels.parquet", **kw, null_fpr=0.01, n_null=2000, seed=0)
    assert explicit.set_index("statistic").loc["share_center", "null_n"] == default["null_n"]
