from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kernelatlas
from kernelatlas.atomic import MARKER
from kernelatlas.bank import (
    BANK_COLUMNS,
    BANK_SCHEMA,
    STORAGE_SCHEMA,
    KernelBank,
    weight_lists,
    weights_array,
)
from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import HarvestResult, LayerKernels


def _result(source: str = "syn", seed: int = 0) -> HarvestResult:
    rng = np.random.default_rng(seed)
    layers = [
        LayerKernels("a", 0, rng.standard_normal((4, 3, 3)).astype(np.float32), 1, 1),
        LayerKernels("b", 1, rng.standard_normal((6, 5, 5)).astype(np.float32), 2, 1),
        LayerKernels("c", 2, rng.standard_normal((3, 1, 5)).astype(np.float32), 1, 2),
    ]
    return HarvestResult(source, "Syn", "numpy", layers)


def test_to_table_schema_rows_and_depth():
    res = _result()
    t = res.to_table()
    assert tuple(t.column_names) == BANK_COLUMNS
    assert t.num_rows == 13
    df = t.to_pandas()
    assert df["depth"].tolist() == [0.0] * 4 + [0.5] * 6 + [1.0] * 3
    assert df["channel"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert df.loc[df.layer == "c", ["kh", "kw", "dilation"]].drop_duplicates().values.tolist() == [
        [1, 5, 2]
    ]
    got = weights_array(t.filter(pa.compute.equal(t["layer"], "b"))["weights"], 5, 5)
    np.testing.assert_array_equal(got, res.layers[1].weights)


def test_single_layer_depth_is_zero_and_nonfinite_flagged():
    w = np.ones((3, 3, 3), np.float32)
    w[1, 0, 0] = np.nan
    w[2, 2, 2] = np.inf
    t = HarvestResult("x", "x", "numpy", [LayerKernels("l", 0, w)]).to_table()
    assert t["depth"].to_pylist() == [0.0, 0.0, 0.0]
    assert t["nonfinite"].to_pylist() == [False, True, True]
    got = weights_array(t["weights"], 3, 3)
    assert np.isnan(got[1, 0, 0]) and np.isinf(got[2, 2, 2])  # kept, not cleaned


def test_add_read_roundtrip_no_duplicates_and_version(tmp_path):
    bank = KernelBank(tmp_path / "bank")
    assert len(bank) == 0 and bank.shapes() == [] and bank.counts().empty
    res = _result()
    assert bank.add(res) == 13
    assert bank.add(res) == 0  # re-harvesting adds nothing
    assert bank.add(_result("other", seed=1).to_table()) == 13
    assert len(bank) == 26 and bank.has_source("syn") and not bank.has_source("nope")
    assert sorted(bank.sources()) == ["other", "syn"]
    assert bank.shapes() == [(1, 5), (3, 3), (5, 5)]
    counts = bank.counts()
    assert list(counts.columns) == ["source", "model", "kh", "kw", "layers", "kernels"]
    row = counts[(counts.source == "syn") & (counts.kh == 5)].iloc[0]
    assert (row.layers, row.kernels) == (1, 6)
    k = bank.kernels(3, 3)
    assert k.shape == (8, 3, 3) and k.dtype == np.float32
    df = bank.read(kh=5, kw=5, columns=["source", "channel", "weights"])
    assert list(df.columns) == ["source", "channel", "weights"] and len(df) == 12
    syn = df[df.source == "syn"]
    np.testing.assert_array_equal(weights_array(syn["weights"], 5, 5), res.layers[1].weights)
    for f in bank.files():
        meta = pq.read_schema(f).metadata
        assert meta[b"kernelatlas_version"].decode() == kernelatlas.__version__
    # pandas reads the directory directly
    assert len(pd.read_parquet(bank.path)) == 26


def test_iter_batches_streams_in_small_batches(tmp_path):
    bank = KernelBank(tmp_path)
    bank.add(_result())
    batches = list(bank.iter_batches(kh=5, kw=5, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    assert all(set(b["kh"]) == {5} for b in batches)
    allb = list(bank.iter_batches(columns=["layer"]))
    assert sum(len(b) for b in allb) == 13 and list(allb[0].columns) == ["layer"]
    with pytest.raises(KernelAtlasError, match="unknown bank columns"):
        list(bank.iter_batches(columns=["nope"]))


def test_weights_array_rejects_mixed_sizes_and_handles_slices(tmp_path):
    t = _result().to_table()
    with pytest.raises(KernelAtlasError, match="select one kernel size"):
        weights_array(t["weights"], 3, 3)
    sliced = t["weights"].combine_chunks().slice(1, 2)
    np.testing.assert_array_equal(weights_array(sliced, 3, 3), _result().layers[0].weights[1:3])
    obj = pd.Series(list(_result().layers[0].weights.reshape(4, 9)))
    np.testing.assert_array_equal(weights_array(obj, 3, 3), _result().layers[0].weights)


def test_interrupted_write_leaves_nothing_visible(tmp_path, monkeypatch):
    bank = KernelBank(tmp_path)

    def boom(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(KeyboardInterrupt):
        bank.add(_result())
    assert bank.files() == [] and [p.name for p in tmp_path.iterdir()] == [MARKER]
    monkeypatch.undo()
    (tmp_path / ".leftover.parquet.123.tmp").write_bytes(b"junk")  # a killed writer's temp
    assert bank.add(_result()) == 13 and len(bank) == 13


def test_bad_bank_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(KernelAtlasError, match="is a file"):
        KernelBank(f)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(KernelAtlasError, match="not a kernel bank file"):
        KernelBank(tmp_path).kernels(3, 3)
    with pytest.raises(KernelAtlasError, match="HarvestResult or a pyarrow.Table"):
        KernelBank(tmp_path / "b").add([1, 2])
    with pytest.raises(KernelAtlasError, match="lacks bank columns"):
        KernelBank(tmp_path / "b").add(pa.table({"source": ["s"]}))


def test_counts_from_footers_match_a_row_scan_and_ignore_damaged_ones(tmp_path):
    """counts()/shapes() read each file's layer counts; a file without them (an older
    bank) or with counts that do not add up to its rows is counted row by row instead."""
    bank = KernelBank(tmp_path / "bank")
    bank.add(_result("one", 0))
    bank.add(_result("two", 1))
    want, shapes = bank.counts(), bank.shapes()
    assert want["kernels"].sum() == 26 and shapes == [(1, 5), (3, 3), (5, 5)]
    assert bank._layer_counts(bank.files()[0]) is not None
    one, two = bank.files()
    meta = dict(pq.read_schema(one).metadata)
    stripped = {k: v for k, v in meta.items() if k != b"kernelatlas_layer_counts"}
    pq.write_table(pq.read_table(one).replace_schema_metadata(stripped), one)
    meta2 = dict(pq.read_schema(two).metadata)
    lying = {**meta2, b"kernelatlas_layer_counts": meta2[b"kernelatlas_layer_counts"].replace(
        b"[4, 6, 3]", b"[40, 6, 3]")}  # fmt: skip
    assert lying != meta2
    pq.write_table(pq.read_table(two).replace_schema_metadata(lying), two)
    assert bank._layer_counts(one) is None and bank._layer_counts(two) is None
    pd.testing.assert_frame_equal(bank.counts(), want)
    assert bank.shapes() == shapes


def test_weights_are_writable_unless_a_view_is_asked_for(tmp_path):
    bank = KernelBank(tmp_path / "bank")
    bank.add(_result())
    k = bank.kernels(3, 3)
    k -= k.mean()  # the public readers hand out arrays of one's own
    column = pq.read_table(bank.files()[0]).column("weights").combine_chunks().slice(0, 4)
    view = weights_array(column, 3, 3, writable=False)
    stored = np.frombuffer(column.buffers()[2], np.uint8)
    assert not view.flags.writeable and np.shares_memory(view, stored)
    own = weights_array(column, 3, 3)
    assert own.flags.writeable and not np.shares_memory(own, view)
    np.testing.assert_array_equal(own, view)
    lists = weight_lists(column).chunk(0)  # the list view of the same bytes
    assert np.shares_memory(lists.values.to_numpy(), stored)
    np.testing.assert_array_equal(weights_array(lists, 3, 3), view)


def test_bank_files_store_weights_as_bytes_and_read_as_lists(tmp_path):
    bank = KernelBank(tmp_path / "bank")
    res = _result()
    bank.add(res)
    schema = pq.read_schema(bank.files()[0])
    assert schema.field("weights").type == STORAGE_SCHEMA.field("weights").type == pa.large_binary()
    table = bank._table(None, None, None)
    assert table.schema.equals(BANK_SCHEMA)  # readers see list<float>
    want = res.to_table()
    assert table.column("weights").to_pylist() == want.column("weights").to_pylist()
    # sliced chunks of either type, with rows of mixed sizes
    stored = pq.read_table(bank.files()[0]).column("weights").combine_chunks()
    for sl in [(0, 13), (3, 7), (10, 3), (13, 0)]:
        got = weight_lists(stored.slice(*sl))
        assert got.to_pylist() == want.column("weights").combine_chunks().slice(*sl).to_pylist()
    # a bank table given back to add() (lists or stored bytes) is written alike
    other = KernelBank(tmp_path / "other")
    other.add(pq.read_table(bank.files()[0]))
    np.testing.assert_array_equal(other.kernels(5, 5), res.layers[1].weights)


def test_banks_written_before_read_alike_and_mixed(tmp_path):
    """Files of kernelatlas < 0.2 hold list<float> weights: read as they are, beside new
    ones, in file order."""
    bank = KernelBank(tmp_path / "bank")
    bank.add(_result("b-new", seed=1))
    old = _result("a-old", seed=0)
    t = old.to_table()
    meta = {b"kernelatlas_source": b"a-old", **(t.schema.metadata or {})}
    pq.write_table(t.replace_schema_metadata(meta), bank.file_for("a-old"))
    bank.add(_result("c-new", seed=2))
    assert [pq.read_schema(f).field("weights").type for f in bank.files()] == [
        pa.list_(pa.float32()), pa.large_binary(), pa.large_binary()
    ]  # fmt: skip
    want = np.concatenate(
        [_result(s, seed=i).layers[1].weights for i, s in enumerate(["a", "b", "c"])]
    )
    np.testing.assert_array_equal(bank.kernels(5, 5), want)
    df = bank.read(kh=5, kw=5)
    assert df["source"].tolist() == ["a-old"] * 6 + ["b-new"] * 6 + ["c-new"] * 6
    np.testing.assert_array_equal(weights_array(df["weights"], 5, 5), want)
    batches = list(bank.iter_batches(kh=5, kw=5, batch_size=4))
    np.testing.assert_array_equal(
        np.concatenate([weights_array(b["weights"], 5, 5) for b in batches]), want
    )
    assert bank.counts()["kernels"].tolist() == [3, 4, 6] * 3  # (1x5, 3x3, 5x5)
