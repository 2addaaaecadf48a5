"""Every reader yields identical kernels for the same small DS-CNN (see conftest.tiny_dscnn)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kernelatlas.harvest import harvest

DW = ["3", "9", "12", "14"]  # depthwise module paths kept (13 is 1x1)


def _kernels(res) -> list[np.ndarray]:
    return [lk.weights for lk in res.layers]


def _assert_same(a, b, **tol) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, **tol) if tol else np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tiny_dscnn):
    return harvest(tiny_dscnn)


def test_module_reader(reference, tiny_dscnn):
    res = reference
    assert [lk.layer for lk in res.layers] == DW
    assert [lk.layer_index for lk in res.layers] == [0, 1, 2, 3]
    assert [lk.shape for lk in res.layers] == [(3, 3), (5, 5), (1, 5), (3, 3)]
    assert [lk.weights.shape[0] for lk in res.layers] == [8, 32, 32, 32]  # multiplier 2 kept
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
    assert [lk.dilation for lk in res.layers] == [1, 1, 1, 2]
    assert res.skipped_1x1 == 1 and res.format == "module"
    np.testing.assert_array_equal(
        res.layers[1].weights, tiny_dscnn[9].weight[:, 0].detach().numpy()
    )
    assert not any(lk.bn_folded for lk in res.layers)


def test_fold_bn_uses_the_following_bn(reference, tiny_dscnn):
    with pytest.warns(UserWarning, match="1 of 4 depthwise layers have no following"):
        folded = harvest(tiny_dscnn, fold_bn=True)
    assert [lk.bn_folded for lk in folded.layers] == [True, True, False, True]
    bn = tiny_dscnn[10]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(
        folded.layers[1].weights, reference.layers[1].weights * scale[:, None, None], rtol=1e-6
    )
    np.testing.assert_array_equal(folded.layers[2].weights, reference.layers[2].weights)
    assert folded.source.endswith("+fold_bn") and folded.source != reference.source


def test_fold_bn_falls_back_to_sequential_order_when_fx_fails(reference, tiny_dscnn, monkeypatch):
    import torch.fx

    def no_trace(*a, **k):
        raise RuntimeError("untraceable")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_trace)
    with pytest.warns(UserWarning):
        folded = harvest(tiny_dscnn, fold_bn=True)
    assert [lk.bn_folded for lk in folded.layers] == [True, True, False, True]


def test_grayscale_stem_is_not_depthwise():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.Conv2d(4, 8, 1)
    )
    assert [lk.layer for lk in harvest(model).layers] == ["1"]


def test_checkpoint_plain_and_nested(reference, tiny_dscnn, tmp_path):
    sd = tiny_dscnn.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "model_ema": sd, "optimizer": {"lr": 0.1}}, tmp_path / "nested.pth")
    torch.save({"state_dict": sd}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ("plain.pt", "nested.pth", "legacy.bin"):
        res = harvest(tmp_path / name)
        assert res.format == "checkpoint"
        assert [lk.layer for lk in res.layers] == DW
        assert res.skipped_1x1 == 1
        _assert_same(_kernels(res), _kernels(reference))
    assert "nested under 'model_ema'" in harvest(tmp_path / "nested.pth").notes[0]


def test_checkpoint_grayscale_stem_rule(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.Conv2d(4, 4, 3, groups=4),
        torch.nn.Conv2d(4, 4, 5, groups=4),
    )
    torch.save(model.state_dict(), tmp_path / "gray.pt")
    res = harvest(tmp_path / "gray.pt")
    assert [lk.layer for lk in res.layers] == ["1", "2"]
    assert any("skipped 0.weight" in n for n in res.notes)
    assert [lk.layer for lk in harvest(model).layers] == ["1", "2"]  # module reader agrees


def test_safetensors(reference, tiny_dscnn, tmp_path):
    save_file(tiny_dscnn.state_dict(), tmp_path / "m.safetensors")
    res = harvest(tmp_path / "m.safetensors")
    assert res.format == "safetensors" and [lk.layer for lk in res.layers] == DW
    _assert_same(_kernels(res), _kernels(reference))
    save_file({k: v.half() for k, v in tiny_dscnn.state_dict().items()}, tmp_path / "h.safetensors")
    half = harvest(tmp_path / "h.safetensors")
    assert half.layers[0].dtype == "float16"
    _assert_same(_kernels(half), _kernels(reference), rtol=2e-3, atol=1e-3)


def test_arrays(reference, tmp_path):
    np.savez(tmp_path / "k.npz", **{lk.layer: lk.weights for lk in reference.layers})
    res = harvest(tmp_path / "k.npz")
    assert [lk.layer for lk in res.layers] == DW and res.format == "numpy"
    _assert_same(_kernels(res), _kernels(reference))
    np.save(tmp_path / "one.npy", reference.layers[1].weights[:, None])  # [N,1,kh,kw]
    one = harvest(tmp_path / "one.npy")
    assert one.layers[0].layer == "one"
    _assert_same(_kernels(one), [reference.layers[1].weights])


def _keras_kernel(w: torch.Tensor, mult: int) -> np.ndarray:
    """PyTorch [C*mult,1,kh,kw] -> Keras [kh,kw,C,mult]."""
    co, _, kh, kw = w.shape
    return w.detach().numpy()[:, 0].reshape(co // mult, mult, kh, kw).transpose(2, 3, 0, 1)


def _keras_layers(model):
    out = []
    for name in DW:
        conv = model[int(name)]
        mult = conv.out_channels // conv.in_channels
        out.append(
            (f"dw{name}", _keras_kernel(conv.weight, mult), list(conv.stride), list(conv.dilation))
        )
    return out


def test_keras2_h5(reference, tiny_dscnn, tmp_path):
    layers = _keras_layers(tiny_dscnn)
    path = tmp_path / "k2.h5"
    with h5py.File(path, "w") as f:
        cfg = {"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Conv2D", "config": {"name": "stem", "strides": [1, 1]}},
            *({"class_name": "DepthwiseConv2D", "config": {"name": n, "strides": s, "dilation_rate": d}}
              for n, _, s, d in layers)]}}  # fmt: skip
        f.attrs["model_config"] = json.dumps(cfg)
        mw = f.create_group("model_weights")
        names = ["stem"] + [n for n, *_ in layers]
        mw.attrs["layer_names"] = [n.encode() for n in names]
        g = mw.create_group("stem")
        g.attrs["weight_names"] = [b"stem/kernel:0"]
        g.create_dataset("stem/kernel:0", data=np.zeros((3, 3, 1, 4), np.float32))  # looks dw-ish
        for n, k, _, _ in layers:
            g = mw.create_group(n)
            g.attrs["weight_names"] = [f"{n}/depthwise_kernel:0".encode(), f"{n}/bias:0".encode()]
            g.create_dataset(f"{n}/depthwise_kernel:0", data=k)
            g.create_dataset(f"{n}/bias:0", data=np.zeros(k.shape[2] * k.shape[3], np.float32))
    res = harvest(path)
    assert res.format == "keras" and [lk.layer for lk in res.layers] == [n for n, *_ in layers]
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
    assert [lk.dilation for lk in res.layers] == [1, 1, 1, 2]
    _assert_same(_kernels(res), _kernels(reference))


def test_keras3_archive(reference, tiny_dscnn, tmp_path):
    layers = _keras_layers(tiny_dscnn)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("layers/stem/vars").create_dataset("0", data=np.zeros((3, 3, 3, 8), "f4"))
        for n, k, _, _ in layers:
            v = f.create_group(f"layers/{n}/vars")
            v.create_dataset("0", data=k)
            v.create_dataset("1", data=np.zeros(k.shape[2] * k.shape[3], np.float32))
    cfg = {"class_name": "Sequential", "config": {"name": "m", "layers": [
        {"class_name": "Conv2D", "config": {"name": "stem"}},
        *({"class_name": "DepthwiseConv2D", "config": {"name": n, "strides": s, "dilation_rate": d}}
          for n, _, s, d in layers)]}}  # fmt: skip
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(cfg))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        zf.writestr("model.weights.h5", buf.getvalue())
    res = harvest(path)
    assert [lk.layer for lk in res.layers] == [n for n, *_ in layers]
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
    _assert_same(_kernels(res), _kernels(reference))
    # a bare Keras 3 weights file has no layer types: refused with the fix
    bare = tmp_path / "m.weights.h5"
    bare.write_bytes(buf.getvalue())
    from kernelatlas.errors import FormatError

    with pytest.raises(FormatError, match=r"pass the \.keras archive"):
        harvest(bare)


def _export_onnx(model, path) -> str:
    """torch.onnx.export (legacy exporter: the default one needs onnxscript, not installed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 16, 16), str(path), dynamo=False)
    return "torch.onnx.export"


def test_onnx_export_matches_folded_module(tiny_dscnn, tmp_path):
    _export_onnx(tiny_dscnn, tmp_path / "m.onnx")
    res = harvest(tmp_path / "m.onnx")
    assert res.format == "onnx" and res.skipped_1x1 == 1
    assert [lk.shape for lk in res.layers] == [(3, 3), (5, 5), (1, 5), (3, 3)]
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
    assert [lk.dilation for lk in res.layers] == [1, 1, 1, 2]
    with pytest.warns(UserWarning):
        folded = harvest(tiny_dscnn, fold_bn=True)
    # the exporter folds eval-mode batch norms into the convolutions
    _assert_same(_kernels(res), _kernels(folded), rtol=1e-5, atol=1e-6)


def test_onnx_unfolded_bn_constant_and_dequantize(reference, tiny_dscnn, tmp_path):
    """A graph built with onnx.helper: BN kept as a node, Constant + Cast, int8 DequantizeLinear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w3 = tiny_dscnn[3].weight.detach().numpy()
    w9 = tiny_dscnn[9].weight.detach().numpy()
    bn = tiny_dscnn[4]
    scale9 = np.abs(w9).reshape(32, -1).max(1) / 127
    q9 = np.round(w9 / scale9[:, None, None, None]).astype(np.int8)
    inits = [
        numpy_helper.from_array(w3.astype(np.float16), "w3_h"),
        numpy_helper.from_array(q9, "w9_q"),
        numpy_helper.from_array(scale9.astype(np.float32), "w9_s"),
        numpy_helper.from_array(np.zeros(32, np.int8), "w9_z"),
        *(numpy_helper.from_array(getattr(bn, a).detach().numpy(), f"bn_{a}")
          for a in ("weight", "bias", "running_mean", "running_var")),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["w3_h"], ["w3"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w3"], ["y3"], group=8, pads=[1, 1, 1, 1], name="dw3"),
        helper.make_node(
            "BatchNormalization",
            ["y3", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var"],
            ["b3"],
            epsilon=bn.eps,
        ),
        helper.make_node(
            "Constant",
            [],
            ["w1"],
            value=numpy_helper.from_array(np.ones((16, 8, 1, 1), np.float32)),
        ),  # fmt: skip
        helper.make_node("Conv", ["b3", "w1"], ["y1"]),
        helper.make_node("DequantizeLinear", ["w9_q", "w9_s", "w9_z"], ["w9"], axis=0),
        helper.make_node("Conv", ["y1", "w9"], ["y"], group=16, strides=[2, 2], name="dw9"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    path = tmp_path / "h.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    res = harvest(path)
    assert [lk.layer for lk in res.layers] == ["dw3", "dw9"]
    assert [lk.dtype for lk in res.layers] == ["float16", "int8"]
    assert [lk.stride for lk in res.layers] == [1, 2]
    np.testing.assert_allclose(
        res.layers[0].weights, reference.layers[0].weights, rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(res.layers[1].weights, w9[:, 0], atol=scale9.max() / 2 + 1e-7)
    with pytest.warns(UserWarning, match="fold_bn: 1 of 2 depthwise layers have no following"):
        folded = harvest(path, fold_bn=True)
    assert [lk.bn_folded for lk in folded.layers] == [True, False]
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(
        folded.layers[0].weights, res.layers[0].weights * s[:, None, None], rtol=1e-6
    )
