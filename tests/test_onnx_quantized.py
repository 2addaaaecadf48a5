"""ONNX files as onnxruntime's quantizer and optimizer write them, made from a real model.

PP-LCNet (``pp_lcnet_orientation``, fetched through the cache) is rewritten the way
``onnxruntime.quantization`` does (static QOperator: ``QLinearConv``, int8 per channel;
dynamic: ``ConvInteger``, uint8 per tensor, its output times ``Mul(input_scale,
weight_scale)``) and the way a session saved at ``ORT_ENABLE_EXTENDED`` (``FusedConv``) or
``ORT_ENABLE_ALL`` (``com.microsoft.nchwc`` convs with CPU-blocked weights) writes it. The
layouts were checked on the files onnxruntime 1.32 itself writes for this model (same
counts, kernels within half a quantisation step).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kernelatlas.harvest import harvest  # noqa: E402

COUNTS = {(3, 3): (6, 432), (5, 5): (7, 2048)}


def _harvest(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return harvest(path)


@pytest.fixture(scope="module")
def real(pp_lcnet_path):
    model = onnx.load(str(pp_lcnet_path))
    ref = _harvest(pp_lcnet_path)
    assert ref.counts() == COUNTS
    return model, ref


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _rewrite(model, convert) -> onnx.ModelProto:
    """``model`` with every Conv replaced by ``convert(conv, weight, inits) -> nodes``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            nodes.extend(convert(node, w, m.graph.initializer))
        else:
            nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _qlinear(node, w, inits):
    """onnxruntime's static QOperator conv: int8 weights, one scale per output channel."""
    n = node.output[0]
    s = np.maximum(np.abs(w).reshape(len(w), -1).max(1), 1e-12) / 127
    q = np.clip(np.round(w / s[:, None, None, None]), -127, 127).astype(np.int8)
    inits.extend([
        numpy_helper.from_array(q, f"{n}_wq"),
        numpy_helper.from_array(s.astype(np.float32), f"{n}_ws"),
        numpy_helper.from_array(np.zeros(len(w), np.int8), f"{n}_wz"),
        numpy_helper.from_array(np.float32(0.05), f"{n}_xs"),
        numpy_helper.from_array(np.uint8(128), f"{n}_xz"),
    ])  # fmt: skip
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return [
        helper.make_node("QuantizeLinear", [node.input[0], f"{n}_xs", f"{n}_xz"], [f"{n}_xq"]),
        helper.make_node(
            "QLinearConv",
            [
                f"{n}_xq",
                f"{n}_xs",
                f"{n}_xz",
                f"{n}_wq",
                f"{n}_ws",
                f"{n}_wz",
                f"{n}_xs",
                f"{n}_xz",
            ],
            [f"{n}_yq"],
            name=node.name,
            **attrs,
        ),  # fmt: skip
        helper.make_node("DequantizeLinear", [f"{n}_yq", f"{n}_xs", f"{n}_xz"], [n]),
    ]


def _conv_integer(node, w, inits):
    """onnxruntime's dynamic conv: uint8 weights, one scale and zero point per tensor."""
    n = node.output[0]
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    s = (hi - lo) / 255
    z = np.uint8(np.round(-lo / s))
    q = np.clip(np.round(w / s) + z, 0, 255).astype(np.uint8)
    inits.extend([
        numpy_helper.from_array(q, f"{n}_wq"),
        numpy_helper.from_array(np.float32(s), f"{n}_ws"),
        numpy_helper.from_array(z, f"{n}_wz"),
    ])  # fmt: skip
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return [
        helper.make_node(
            "DynamicQuantizeLinear", [node.input[0]], [f"{n}_xq", f"{n}_xs", f"{n}_xz"]
        ),
        helper.make_node(
            "ConvInteger",
            [f"{n}_xq", f"{n}_wq", f"{n}_xz", f"{n}_wz"],
            [f"{n}_yi"],
            name=node.name,
            **attrs,
        ),  # fmt: skip
        helper.make_node("Cast", [f"{n}_yi"], [f"{n}_yc"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{n}_xs", f"{n}_ws"], [f"{n}_sm"]),
        helper.make_node("Mul", [f"{n}_yc", f"{n}_sm"], [n]),
    ], s


def _domain(domain, op_type):
    def convert(node, w, inits):
        if _group(node) < 2:
            return [node]
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.domain, new.op_type = domain, op_type
        return [new]

    return convert


def _save(model, path, *domains):
    for d in domains:
        model.opset_import.append(helper.make_opsetid(d, 1))
    onnx.save(model, str(path))
    return path


def test_qlinearconv_dequantised_per_channel(real, tmp_path):
    model, ref = real
    m = _rewrite(model, _qlinear)
    onnx.checker.check_model(m)
    res = _harvest(_save(m, tmp_path / "qop.onnx"))
    assert res.counts() == COUNTS
    assert {lk.dtype for lk in res.layers} == {"int8"}
    assert [lk.layer for lk in res.layers] == [lk.layer for lk in ref.layers]
    assert [lk.stride for lk in res.layers] == [lk.stride for lk in ref.layers]
    for got, want in zip(res.layers, ref.layers, strict=True):
        step = np.abs(want.weights).reshape(len(want.weights), -1).max(1) / 127
        assert np.all(np.abs(got.weights - want.weights) <= step[:, None, None] / 2 + 1e-7)


def test_conv_integer_scale_from_the_output_mul(real, tmp_path):
    model, ref = real
    steps = []

    def convert(node, w, inits):
        nodes, s = _conv_integer(node, w, inits)
        if _group(node) > 1 and w.shape[-1] > 1:
            steps.append(s)
        return nodes

    m = _rewrite(model, convert)
    onnx.checker.check_model(m)
    res = _harvest(_save(m, tmp_path / "dyn.onnx"))
    assert res.counts() == COUNTS
    assert {lk.dtype for lk in res.layers} == {"uint8"} and not res.notes
    for got, want, s in zip(res.layers, ref.layers, steps, strict=True):
        np.testing.assert_allclose(got.weights, want.weights, rtol=0, atol=s / 2 + 1e-6)


def test_conv_integer_without_its_scale_kept_in_quantised_units(real, tmp_path):
    model, ref = real

    def convert(node, w, inits):
        nodes, _ = _conv_integer(node, w, inits)
        return nodes[:3]  # no Mul by the scales: the output stays integer

    res = _harvest(_save(_rewrite(model, convert), tmp_path / "noscale.onnx"))
    assert res.counts() == COUNTS
    assert len(res.notes) == 13 and "quantised units" in res.notes[0]
    cos = [
        np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b)
        for got, want in zip(res.layers, ref.layers, strict=True)
        for a, b in zip(got.weights, want.weights, strict=True)
        if np.abs(b).max() > 0
    ]
    assert min(cos) > 0.99  # the shapes, up to the one scale of each layer


def test_fused_conv_read_nchwc_counted_not_read(real, tmp_path):
    model, ref = real
    fused = _rewrite(model, _domain("com.microsoft", "FusedConv"))
    res = _harvest(_save(fused, tmp_path / "fused.onnx", "com.microsoft"))
    assert res.counts() == COUNTS
    for got, want in zip(res.layers, ref.layers, strict=True):
        np.testing.assert_array_equal(got.weights, want.weights)
    nchwc = _rewrite(model, _domain("com.microsoft.nchwc", "Conv"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = harvest(_save(nchwc, tmp_path / "nchwc.onnx", "com.microsoft.nchwc"))
    assert res.layers == [] and res.skipped == {"nchwc": 13}
    said = [str(w.message) for w in caught]  # the skip, then no contradiction of it
    assert len(said) == 2 and "13 " in said[0], said
    assert said[1].endswith(
        "no depthwise kernels read: each depthwise layer was skipped (as said above); zero kernels"
    ), said


def _qdq_output(node, w, inits):
    """A QDQ file's activation fake-quantisation after each conv (Conv -> Q -> DQ -> BN)."""
    n = node.output[0]
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.output[0] = f"{n}_f"
    inits.extend([
        numpy_helper.from_array(np.float32(0.05), f"{n}_ys"),
        numpy_helper.from_array(np.uint8(128), f"{n}_yz"),
    ])  # fmt: skip
    return [
        new,
        helper.make_node("QuantizeLinear", [f"{n}_f", f"{n}_ys", f"{n}_yz"], [f"{n}_q"]),
        helper.make_node("DequantizeLinear", [f"{n}_q", f"{n}_ys", f"{n}_yz"], [n]),
    ]


def test_fold_bn_through_the_quantised_output(real, pp_lcnet_path, tmp_path):
    """The batch norm after a quantised conv's dequantised output is folded (it was not,
    silently: bn_folded=False with no warning)."""
    model, ref = real
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = harvest(pp_lcnet_path, fold_bn=True)
    assert all(lk.bn_folded for lk in want.layers)
    factors = []  # each channel's gamma / sqrt(var + eps), from the real model's fold
    for folded, plain in zip(want.layers, ref.layers, strict=True):
        flat_f, flat_p = (
            folded.weights.reshape(len(plain.weights), -1),
            plain.weights.reshape(len(plain.weights), -1),
        )
        i = np.abs(flat_p).argmax(1)
        rows = np.arange(len(i))
        factors.append(flat_f[rows, i] / np.where(flat_p[rows, i] == 0, 1, flat_p[rows, i]))
    files = {
        "qop": _rewrite(model, _qlinear),
        "dyn": _rewrite(model, lambda n, w, i: _conv_integer(n, w, i)[0]),
        "qdq": _rewrite(model, _qdq_output),
    }
    for name, m in files.items():
        path = _save(m, tmp_path / f"{name}.onnx")
        plain = _harvest(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every layer folds: no warning
            res = harvest(path, fold_bn=True)
        assert [lk.bn_folded for lk in res.layers] == [True] * 13, name
        for got, p, f in zip(res.layers, plain.layers, factors, strict=True):
            np.testing.assert_allclose(got.weights, p.weights * f[:, None, None], rtol=1e-5)


def test_fold_bn_warns_when_no_batch_norm_follows(real, tmp_path):
    model, _ = real
    fused = _rewrite(model, _domain("com.microsoft", "FusedConv"))
    path = _save(fused, tmp_path / "fused.onnx", "com.microsoft")
    with pytest.warns(UserWarning, match="13 of 13 depthwise layers have no following"):
        res = harvest(path, fold_bn=True)
    assert not any(lk.bn_folded for lk in res.layers)
