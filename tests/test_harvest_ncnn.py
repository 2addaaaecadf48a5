"""ncnn (model.param + model.bin): a file from ncnn's own converter (pnnx), the weight
encodings and layer types of the .bin (rebuilt by ``tests/hostile/makers.py``), and hostile
inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernelatlas.cli import main
from kernelatlas.errors import FormatError, TensorTooLargeError
from kernelatlas.harvest import harvest
from kernelatlas.harvest import ncnn_ as ncnn_reader
from kernelatlas.harvest.formats import detect_format, is_weight_file
from tests.hostile.makers import depthwise_convs, ncnn_int8, write_ncnn

DATA = Path(__file__).parent / "data"


def test_pnnx_output_equals_the_modules_folded_kernels(tiny_dscnn):
    """``tests/data/ncnn/tiny_dscnn.ncnn.*`` is the tiny DS-CNN converted by pnnx 20261020
    (fp16, batch norms folded by the converter): its kernels are the module's BN-folded ones."""
    res = harvest(DATA / "ncnn" / "tiny_dscnn.ncnn.param")
    with pytest.warns(UserWarning, match="1 of 4 depthwise layers have no following BatchNorm"):
        ref = harvest(tiny_dscnn, fold_bn=True)  # its 1x5 layer has none
    assert res.format == "ncnn" and res.counts() == ref.counts()
    assert res.skipped == {"1x1": 1}
    assert [(lk.stride, lk.dilation) for lk in res.layers] == [
        (lk.stride, lk.dilation) for lk in ref.layers
    ]
    assert [lk.layer for lk in res.layers] == ["convdwrelu_0", "convdwrelu_1", "convdw_10",
                                               "convdw_12"]  # fmt: skip
    for a, b in zip(res.layers, ref.layers, strict=True):
        assert a.dtype == "float16" and not a.bn_folded
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-3 * np.abs(b.weights).max())


ENCODINGS = ("f32", "f16", "int8", "table")


@pytest.mark.parametrize("weights", ENCODINGS)
def test_encodings_and_the_layers_between(tiny_dscnn, tmp_path, weights):
    """Every flagged encoding, with Convolution+bias, BatchNorm, Scale, PReLU and InnerProduct
    weights around the depthwise ones (the layout ncnn 1.0.20261020's runtime loads)."""
    path = write_ncnn(tiny_dscnn, tmp_path / "model.param", weights=weights)
    assert detect_format(path) == "ncnn"
    res = harvest(path)
    assert res.counts() == {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
    assert res.skipped == {"1x1": 1} and not res.notes
    assert [(lk.stride, lk.dilation) for lk in res.layers] == [(1, 1), (2, 1), (1, 1), (1, 2)]
    convs = [(c, c.weight.detach().numpy()[:, 0]) for _, c in depthwise_convs(tiny_dscnn)]
    convs = [(c, w) for c, w in convs if w.shape[1:] != (1, 1)]
    for lk, (conv, w) in zip(res.layers, convs, strict=True):
        if weights == "int8":  # exactly q / scale, one scale a group (multiplier 2 shares)
            q, scale = ncnn_int8(w, conv.in_channels)
            want = q / np.repeat(scale, len(w) // conv.in_channels)[:, None, None]
            np.testing.assert_allclose(lk.weights, want, rtol=1e-6)
        tol = {"f32": 0, "f16": 1e-3, "int8": 0.01, "table": 0.02}[weights]
        np.testing.assert_allclose(lk.weights, w, atol=tol * np.abs(w).max(), rtol=0)
        assert lk.dtype == {"f32": "float32", "f16": "float16", "int8": "int8",
                            "table": "uint8"}[weights]  # fmt: skip


def _model(tmp_path, lines: list[str], blob: bytes, name: str = "m") -> Path:
    path = tmp_path / f"{name}.param"
    path.write_text(f"7767517\n{len(lines)} {len(lines)}\n" + "\n".join(lines) + "\n")
    path.with_suffix(".bin").write_bytes(blob)
    return path


DW = "ConvolutionDepthWise dw 1 1 a b 0=4 1=3 6=36 7=4"
W36 = np.uint32(0).tobytes() + np.arange(36, dtype="<f4").tobytes()


def test_layer_tables_are_disjoint():
    """A type is either sized (34 built-in types load weights) or weightless (76), never both."""
    assert not set(ncnn_reader._LOADS) & ncnn_reader._NO_WEIGHTS
    assert len(ncnn_reader._LOADS) == 34 and len(ncnn_reader._NO_WEIGHTS) == 76


def test_unknown_layer_type_stops_the_walk(tmp_path):
    path = _model(tmp_path, [DW, "MyPlugin p 1 1 b c 0=7", DW.replace("dw ", "dw2 ")], W36 * 2)
    res = harvest(path)
    assert res.n_kernels == 4 and res.skipped == {ncnn_reader.AFTER_UNKNOWN: 1}
    assert "'MyPlugin'" in res.notes[0] and "cannot be located" in res.notes[0]
    np.testing.assert_array_equal(res.layers[0].weights.reshape(-1), np.arange(36))


def test_dynamic_weights_and_grouped_convs(tmp_path):
    path = _model(tmp_path, [DW + " 19=1", "ConvolutionDepthWise g 1 1 b c 0=4 1=3 6=72 7=2",
                             DW.replace("dw ", "dw2 ")], np.uint32(0).tobytes() + bytes(72 * 4)
                  + W36)  # fmt: skip
    res = harvest(path)
    assert res.counts() == {(3, 3): (1, 4)} and res.skipped == {ncnn_reader.NOT_CONSTANT: 1}
    assert res.layers[0].layer == "dw2"


def test_int8_without_scales_is_noted(tmp_path):
    q = np.arange(36, dtype=np.int8)
    blob = np.uint32(0x000D4B38).tobytes() + q.tobytes()
    res = harvest(_model(tmp_path, [DW], blob))
    assert res.layers[0].dtype == "int8" and "quantised units" in res.notes[0]
    np.testing.assert_array_equal(res.layers[0].weights.reshape(-1), q)


def test_a_bin_longer_than_the_weights_is_noted(tiny_dscnn, tmp_path):
    path = write_ncnn(tiny_dscnn, tmp_path / "model.param")
    assert not harvest(path).notes  # the walk ends exactly at the end of the .bin
    with open(path.with_suffix(".bin"), "ab") as f:
        f.write(bytes(8))
    res = harvest(path)
    assert res.n_kernels == 104 and "may not be this .param's" in res.notes[0]


def test_bin_beside_a_param_names_the_param(tiny_dscnn, tmp_path):
    path = write_ncnn(tiny_dscnn, tmp_path / "model.param")
    with pytest.raises(FormatError, match="the weights of the ncnn model model.param: harvest"):
        harvest(path.with_suffix(".bin"))


# -- hostile inputs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lines", "blob", "error", "match"),
    [
        ([DW.replace("6=36", "6=36000")], W36, FormatError, "run past the end of m.bin"),
        ([DW.replace("6=36", "6=-4")], W36, FormatError, "negative dimension"),
        ([DW.replace("6=36", "6=900000000000")], W36, TensorTooLargeError, "over the"),
        ([DW.replace("0=4", "0=x4")], W36, FormatError, "'x4' is not an integer"),
        (["ConvolutionDepthWise dw 1"], W36, FormatError, "layer line .* is corrupt"),
        ([DW + " 5"], W36, FormatError, "param '5' has no value"),
        ([DW + " k=1"], W36, FormatError, "param 'k=1' is corrupt"),
        ([DW], W36[:20], FormatError, "run past the end"),
        ([DW, "BatchNorm bn 1 1 b c 0=100000"], W36, FormatError, "BatchNorm 'bn'.*past the end"),
    ],
    ids=["size-past-end", "negative-size", "huge-size", "int-param", "short-line",
         "no-value", "bad-key", "truncated-bin", "later-layer-past-end"],
)  # fmt: skip
def test_corrupt_models_are_one_line(tmp_path, lines, blob, error, match):
    path = _model(tmp_path, lines, blob)
    with pytest.raises(error, match=match) as err:
        harvest(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_corrupt_headers(tmp_path, capsys):
    path = _model(tmp_path, [DW], W36)
    text = path.read_text()
    for bad, error, match in (
        (text.replace("1 1\n", "5 5\n", 1), FormatError, "declares 5 layers but holds 1"),
        (text.replace("1 1\n", "x 1\n", 1), FormatError, "line 2 is not 'layer_count blob"),
        (text.replace("1 1\n", "99999999 1\n", 1), TensorTooLargeError, "99,999,999 layers"),
    ):
        path.write_text(bad)
        with pytest.raises(error, match=match):
            harvest(path)
    path.write_bytes(b"7767517\n1 1\n\xff\xfe binary")
    with pytest.raises(FormatError, match="not a text .param"):
        harvest(path)
    (tmp_path / "other.param").write_text("not ncnn\n")  # claimed by its suffix, then refused
    with pytest.raises(FormatError, match="does not start with ncnn's magic 7767517"):
        harvest(tmp_path / "other.param")
    assert not is_weight_file(tmp_path / "other.param") and is_weight_file(path)  # wildcards
    path.write_text(text)
    path.with_suffix(".bin").unlink()
    assert main(["harvest", str(path), "--out", str(tmp_path / "bank")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its weights file m.bin is missing" in err[0]
    assert not (tmp_path / "bank").exists()


def test_param_size_limit(tmp_path, monkeypatch):
    path = _model(tmp_path, [DW], W36)
    monkeypatch.setattr(ncnn_reader, "MAX_PARAM_BYTES", 10)
    with pytest.raises(TensorTooLargeError, match="over the 10-byte limit"):
        harvest(path)
