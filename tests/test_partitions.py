"""The unit of work and the local engine, on the shipped pp_lcnet_orientation kernels:
counts that add up to the whole-table counts, the atlas diagram's panel statistic, part files, the
weights accessor, the producer/consumer window, the fresh-init twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelatlas.engine import Engine, make_engine
from kernelatlas.engine.local import LocalEngine
from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest.zoo import init_twin
from kernelatlas.partitions import PartitionJob, PartsMerger, bank_partitions
from kernelatlas.report.diagram import diagram_columns, panel_means
from kernelatlas.report.summary import LAYER_KEYS, merge_counts, partial_counts
from kernelatlas.results import kernel_weights
from kernelatlas.taxonomy import PATTERN_FAMILIES


def _merged(bank, job, engine=None) -> tuple[PartsMerger, list]:
    merger = PartsMerger(Path(job.parts_dir))
    results = []
    with engine or LocalEngine() as e:
        for res in e.map_partitions((p, job) for p in bank_partitions(bank)):
            merger.add(res)
            results.append(res)
    merger.finish()
    return merger, results


def test_counts_and_statistic_add_up_to_the_whole_table(small_bank, models, tmp_path) -> None:
    parts = tmp_path / "kernels.parquet"
    parts.mkdir()
    (tmp_path / "bank").symlink_to(small_bank.path)  # an analysis folder: the parts beside the bank
    panels = tuple(tuple(c) for c in diagram_columns())
    job = PartitionJob(models, batch_size=128, parts_dir=str(parts), panels=panels)
    merger, results = _merged(small_bank, job)
    assert isinstance(make_engine("local"), Engine)
    assert [r.partition for r in results] == bank_partitions(small_bank)  # in bank order
    assert all(r.table is None and r.tmp_path for r in results)  # only counts came back
    table = pq.ParquetDataset(parts).read()
    assert table.num_rows == 2480 and sorted(p.name for p in parts.iterdir()) == [
        f"part-{i:06d}.parquet" for i in range(9)
    ]
    df = table.to_pandas()
    want = merge_counts([partial_counts(df)])
    got = merger.counts()
    for key in ("models", "layers"):
        assert got[key].equals(want[key]), key
    assert list(got["layers"].columns[: len(LAYER_KEYS)]) == LAYER_KEYS
    # the panel statistic equals the means read again from the whole table (weights from
    # the bank), over every registered family's panels
    assert set(merger.panel_stats) == {(3, 3), (5, 5)}
    columns = [list(c) for c in job.panels]
    assert {p.family for c in columns for p in c if p is not None} == set(PATTERN_FAMILIES)
    for (kh, kw), stats in merger.panel_stats.items():
        got_m, got_n = stats.means(columns)
        want_m, want_n = panel_means(tmp_path, kh, kw, columns)
        assert got_n == want_n and sum(map(sum, got_n)) > 0
        for gm, wm in zip(got_m, want_m, strict=True):
            for g, w in zip(gm, wm, strict=True):
                assert (g is None) == (w is None)
                if g is not None:
                    np.testing.assert_allclose(g, w, atol=1e-6)


def test_tables_back_and_weights_kept(small_bank, models, tmp_path) -> None:
    """Without a shared folder the tables travel back and the driver writes the same parts;
    with_weights keeps a copy of the weights, which the accessor then reads."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    job = PartitionJob(models, parts_dir=str(tmp_path / "a"), with_weights=True)
    _merged(small_bank, job)
    back = PartitionJob(models, parts_dir=None, with_weights=True)
    merger = PartsMerger(tmp_path / "b")
    with LocalEngine(threads=1) as e:
        for res in e.map_partitions((p, back) for p in bank_partitions(small_bank)):
            assert res.table is not None and res.tmp_path is None
            merger.add(res)
    merger.finish()
    a = pq.ParquetDataset(tmp_path / "a").read()
    b = pq.ParquetDataset(tmp_path / "b").read()
    assert a.equals(b) and "weights" in a.column_names
    # kernels.parquet's weights are lists of floats (the bank stores them as bytes)
    assert a.schema.field("weights").type == pa.list_(pa.float32())
    sel = a.filter(pa.compute.equal(a.column("kh"), 5))
    np.testing.assert_array_equal(
        kernel_weights(tmp_path / "a", sel.select(["kh", "kw", "weights"])),
        small_bank.kernels(5, 5),
    )


def test_kernel_weights_refuses_mixed_sizes_and_foreign_files(small_bank, models, tmp_path) -> None:
    run = tmp_path / "run"
    (run / "kernels.parquet").mkdir(parents=True)
    (run / "bank").symlink_to(small_bank.path)
    _merged(small_bank, PartitionJob(models, parts_dir=str(run / "kernels.parquet")))
    with pytest.raises(KernelAtlasError, match="one kernel size"):
        kernel_weights(run, np.arange(2480))
    table = pq.ParquetDataset(run / "kernels.parquet").read().slice(0, 3)
    bad = table.set_column(
        table.column_names.index("bank_file"), "bank_file", pa.array(["../x.parquet"] * 3)
    )
    with pytest.raises(KernelAtlasError, match="not a file of the run's bank"):
        kernel_weights(run, bad)
    with pytest.raises(KernelAtlasError, match="out of range"):
        kernel_weights(run, [10**6])


def test_the_producer_runs_at_most_a_window_ahead(small_bank, models, tmp_path) -> None:
    """Harvesting (the producer) overlaps with classifying, but never runs more than
    2 x threads partitions ahead of the results taken back: memory stays bounded."""
    drawn = []
    job = PartitionJob(models, parts_dir=str(tmp_path))

    def tasks():
        for part in bank_partitions(small_bank):
            drawn.append(part)
            yield part, job

    seen = [(r.partition, len(drawn)) for r in LocalEngine(threads=2).map_partitions(tasks())]
    assert [p for p, _ in seen] == bank_partitions(small_bank)
    assert all(n <= i + 1 + 4 for i, (_, n) in enumerate(seen)), seen
    assert seen[0][1] < len(seen)  # the first result came before the last task was drawn


def test_a_producer_error_reaches_the_caller() -> None:
    def tasks():
        raise KernelAtlasError("no depthwise kernels in any source")
        yield  # pragma: no cover

    with pytest.raises(KernelAtlasError, match="no depthwise kernels"):
        list(LocalEngine().map_partitions(tasks()))


def test_init_twin_comes_from_the_zoo_parser() -> None:
    assert init_twin("timm:mobilenetv3_small_050") == "timm:mobilenetv3_small_050@init"
    assert init_twin("timm:mobilenetv3_small_050?file=/w.pth") == "timm:mobilenetv3_small_050@init"
    assert init_twin("timm:mobilenetv3_small_050@init") is None
    assert init_twin("timm:mobilenetv3_small_050@init:3") is None  # was ...@init:3@init
    assert init_twin("efficientnet_lite0") == "timm:efficientnet_lite0@init"
    assert init_twin("/some/file.npy") is None
    from kernelatlas.pipeline import _harvest_init

    assert _harvest_init(["timm:mobilenetv3_small_050@init:3", "/x.npy"]) == {}


def test_partitions_collect_the_null_references_in_one_pass(small_bank, models, tmp_path) -> None:
    """The references the baselines are drawn from come back with the partitions: merged in
    any order they are the same, and the same as one pass over the bank (the phase sample:
    each live kernel whose row's seeded uniform is below sample_size / kernels)."""
    from kernelatlas.normalize import normalize
    from kernelatlas.null import ReferenceBuilder, _rng
    from kernelatlas.pipeline import AnalysisConfig, _null_references

    kinds = ("phase", "covariance", "covariance_layer")
    cfg = AnalysisConfig(n_null=150, seed=5)  # a sample of 300 per source and size
    job = PartitionJob(models, parts_dir=str(tmp_path), references=kinds,
                       reference_sample=2 * cfg.n_null, seed=cfg.seed)  # fmt: skip
    results = list(LocalEngine().map_partitions((p, job) for p in bank_partitions(small_bank)))
    forward, backward = PartsMerger(tmp_path), PartsMerger(tmp_path)
    for res in results:
        forward.add(res)
    for res in results[::-1]:
        backward.add(res)
    (source,) = small_bank.sources()
    for kh, kw in small_bank.shapes():
        a = forward.references[(kh, kw)].build()[source]
        b = backward.references[(kh, kw)].build()[source]
        once = _null_references(small_bank, kh, kw, {}, kinds, cfg)[source]
        for ref in (b, once):
            assert ref.count == a.count
            for name in ("moment", "layer_counts", "layer_moments", "sample"):
                np.testing.assert_array_equal(getattr(ref, name), getattr(a, name), name)
        k = small_bank.kernels(kh, kw)
        nz = normalize(k)
        live = ~nz.degenerate
        u = _rng(cfg.seed, "reference", "sample", source, kh, kw).random(len(k))
        np.testing.assert_array_equal(a.sample, k[live & (u < 300 / len(k))])
        assert 200 < len(a.sample) < 400 and a.count == live.sum()
        unit = nz.unit[live].reshape(live.sum(), -1).astype(np.float64)
        np.testing.assert_allclose(a.moment, unit.T @ unit / len(unit), atol=1e-12)
    with pytest.raises(KernelAtlasError, match="added twice"):
        forward.add(results[0])
    with pytest.raises(KernelAtlasError, match="other settings"):
        ReferenceBuilder(3, 3, kinds=["phase"], expected={}).merge(forward.references[(3, 3)])


def test_prediction_columns_to_arrow_as_from_pandas() -> None:
    """``_arrow``: strings (object, Arrow- and Python-backed) are pa.string() columns, NaN
    and None nulls, as ``pa.Table.from_pandas`` makes them."""
    import pandas as pd

    from kernelatlas.partitions import _arrow

    df = pd.DataFrame(
        {
            "family": np.array(["center", None, "shift"], dtype=object),
            "shape": pd.array(["bar", None, ""], dtype=pd.StringDtype("pyarrow")),
            "other": pd.array(["x", "y", None], dtype=pd.StringDtype("python")),
            "score": [0.5, np.nan, 1.0],
            "polarity": np.array([1, -1, 0], np.int8),
        }
    )
    want = pa.Table.from_pandas(df, preserve_index=False)
    got = pa.table(_arrow(df))
    for name in df.columns:
        w = want.column(name)
        w = w.cast(pa.string()) if pa.types.is_large_string(w.type) else w
        assert got.column(name).type == w.type and got.column(name).equals(w), name
    assert got.column("shape").null_count == 1 and got.column("score").null_count == 1
