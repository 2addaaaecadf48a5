"""ONNX depthwise weights stored in another layout and reordered in the graph, made from a
real model: PP-LCNet (``pp_lcnet_orientation``) with its kernels stored as ``[kh, kw, C, 1]``
behind a ``Transpose`` (TensorFlow's layout, as tf2onnx writes it unfolded), as ``[C, kh, kw]``
behind ``Reshape`` (with ONNX's 0 and -1) or ``Unsqueeze``, inside a ``Constant`` behind
``Squeeze``, and fake-quantised (float -> ``QuantizeLinear`` -> ``DequantizeLinear``, as a
QAT export writes it); a weight fed at run time is counted. Before, each of these layers was
dropped without a word (a model of them only gave "no depthwise convolution found").
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
LAYOUTS = ("transpose", "reshape", "unsqueeze", "squeeze", "qdq")


def _quantized(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 per-channel fake quantisation of ``w`` [C, 1, kh, kw]: (scale, dequantised)."""
    scale = (np.abs(w).reshape(len(w), -1).max(1) / 127 + 1e-12).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None, None, None]), -128, 127)
    return scale, (q * scale[:, None, None, None]).astype(np.float32)


def _layout(kind: str, node, w: np.ndarray, inits) -> list:
    """Nodes that feed ``node`` its weight ``w`` through the layout ``kind``."""
    name = node.input[1]
    c, _, kh, kw = w.shape
    out = node.input[1] = f"{name}_{kind}"
    if kind == "transpose":  # stored [kh, kw, C, 1]
        inits.append(numpy_helper.from_array(w.transpose(2, 3, 0, 1).copy(), name))
        return [helper.make_node("Transpose", [name], [out], perm=[2, 3, 0, 1])]
    if kind == "reshape":  # stored [C, kh, kw]; shape [0, 1, kh, -1]
        inits.append(numpy_helper.from_array(w.reshape(c, kh, kw), name))
        shape = numpy_helper.from_array(np.array([0, 1, kh, -1], np.int64), f"{name}_shape")
        inits.append(shape)
        return [helper.make_node("Reshape", [name, shape.name], [out])]
    if kind == "unsqueeze":  # stored [C, kh, kw]; axes as an input (opset 13+)
        inits.append(numpy_helper.from_array(w.reshape(c, kh, kw), name))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), f"{name}_axes"))
        return [helper.make_node("Unsqueeze", [name, f"{name}_axes"], [out])]
    if kind == "squeeze":  # a Constant node [1, C, 1, kh, kw]
        value = numpy_helper.from_array(w[None], name)
        axes = numpy_helper.from_array(np.array([0], np.int64), f"{name}_axes")
        inits.append(axes)
        return [
            helper.make_node("Constant", [], [name], value=value),
            helper.make_node("Squeeze", [name, axes.name], [out]),
        ]
    scale, _ = _quantized(w)  # qdq: float weight, QuantizeLinear, DequantizeLinear
    inits.append(numpy_helper.from_array(w, name))
    inits.append(numpy_helper.from_array(scale, f"{name}_scale"))
    inits.append(numpy_helper.from_array(np.zeros(c, np.int8), f"{name}_zero"))
    q = [name, f"{name}_scale", f"{name}_zero"]
    return [
        helper.make_node("QuantizeLinear", q, [f"{name}_q"], axis=0),
        helper.make_node("DequantizeLinear", [f"{name}_q", *q[1:]], [out], axis=0),
    ]


def test_weights_behind_layout_ops_and_fake_quantisation(pp_lcnet_path, tmp_path):
    model = onnx.load(str(pp_lcnet_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = harvest(pp_lcnet_path)
    assert ref.counts() == COUNTS
    inits = {i.name: i for i in model.graph.initializer}
    nodes, kinds, k = [], [], 0
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "Conv" else None
        if w is None or group < 2 or w.shape[1] != 1:
            nodes.append(node)
            continue
        del model.graph.initializer[list(inits).index(node.input[1])]
        inits = {i.name: i for i in model.graph.initializer}
        kinds.append(LAYOUTS[k % len(LAYOUTS)])
        nodes += _layout(kinds[-1], node, w, model.graph.initializer)
        nodes.append(node)
        k += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    path = tmp_path / "layouts.onnx"
    onnx.save(model, str(path))
    res = harvest(path)
    assert res.counts() == COUNTS and not res.skipped
    for kind, got, want in zip(kinds, res.layers, ref.layers, strict=True):
        assert got.shape == want.shape and got.stride == want.stride
        if kind == "qdq":
            _, fake = _quantized(want.weights[:, None])
            np.testing.assert_array_equal(got.weights, fake[:, 0])
            assert np.abs(got.weights - want.weights).max() <= np.abs(want.weights).max() / 254
        else:
            np.testing.assert_array_equal(got.weights, want.weights)

    # a weight fed at run time (a graph input): counted, not silently dropped
    first = next(
        n for n in model.graph.node if n.op_type == "Conv" and n.input[1].endswith("_" + kinds[0])
    )
    c = ref.layers[0].weights.shape[0]
    first.input[1] = "runtime_w"
    model.graph.input.append(
        helper.make_tensor_value_info("runtime_w", TensorProto.FLOAT, [c, 1, 3, 3])
    )
    onnx.save(model, str(path))
    with pytest.warns(UserWarning, match="1 layer skipped .filters computed at run time"):
        res = harvest(path)
    assert res.skipped == {"weights not constant": 1}
    assert res.counts() == {(3, 3): (5, 432 - c), (5, 5): (7, 2048)}
