"""TFLite written by the tests with ``flatbuffers`` (no TensorFlow): int8 with per-channel
scales and zero points, directly on the op and behind DEQUANTIZE; fp16; strides."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.errors import FormatError
from kernelatlas.harvest import harvest
from tests.hostile.makers import tflite_bytes, tflite_sparse


def test_int8_per_channel_scales_and_zero_points(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 3, 5, 16)).astype(np.float32)  # [1, kh, kw, C]
    scale = (np.abs(w).reshape(-1, 16).max(0) / 100).astype(np.float32)
    zero = rng.integers(-20, 20, 16)
    q = np.clip(np.round(w / scale) + zero, -128, 127).astype(np.int8)
    layers = [
        {"w": q, "scale": scale, "zero": zero, "stride": 2},  # int8 on the op itself
        {"w": q, "scale": scale, "zero": zero, "dequant": True, "dilation": 3},  # weight-only
        {"w": w.astype(np.float16), "dequant": True},
        {"w": q[:, :1, :1], "scale": scale, "zero": zero},  # 1x1: skipped
    ]
    path = tmp_path / "int8.tflite"
    path.write_bytes(tflite_bytes(layers))
    res = harvest(path)
    assert res.counts() == {(3, 5): (3, 48)} and res.skipped_1x1 == 1
    want = np.moveaxis(((q.astype(np.float32) - zero.astype(np.float32)) * scale)[0], -1, 0)
    np.testing.assert_array_equal(res.layers[0].weights, want)
    np.testing.assert_array_equal(res.layers[1].weights, want)
    np.testing.assert_allclose(want, np.moveaxis(w[0], -1, 0), atol=float(scale.max()))
    assert [lk.dtype for lk in res.layers] == ["int8", "int8", "float16"]
    assert [lk.stride for lk in res.layers] == [2, 1, 1]
    assert [lk.dilation for lk in res.layers] == [1, 3, 1]
    assert all(lk.bn_folded for lk in res.layers)
    # per-channel along another axis than the last would be wrong for a depthwise kernel:
    # the quantized dimension is honoured as the file states it
    other = [{"w": q, "scale": scale[:3], "zero": zero[:3], "quant_dim": 1}]
    (tmp_path / "dim1.tflite").write_bytes(tflite_bytes(other))
    got = harvest(tmp_path / "dim1.tflite").layers[0].weights
    z3 = zero[:3].astype(np.float32).reshape(1, 3, 1, 1)
    want1 = (q.astype(np.float32) - z3) * scale[:3].reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(got, np.moveaxis(want1[0], -1, 0))


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """TFLite's INT4 layout: two signed values a byte, the first in the low nibble."""
    flat = np.append(q.ravel(), 0) if q.size % 2 else q.ravel()
    lo, hi = flat[0::2].astype(np.uint8) & 0x0F, flat[1::2].astype(np.uint8) & 0x0F
    return (lo | (hi << 4)).astype(np.uint8)


def test_int4_weights_read_and_unread_types_counted(shipped, tmp_path):
    """Real MediaPipe kernels quantised to int4 per channel (ai-edge-quantizer's layout) are
    read; a weight of a type that is not decoded (BFLOAT16) is counted, never dropped in
    silence (both gave a layer-less read before, with no word about it)."""
    real = harvest(shipped("mediapipe/hand_recrop")).layers[0].weights  # [C, kh, kw]
    c, kh, kw = real.shape
    w = np.moveaxis(real, 0, -1)[None]  # [1, kh, kw, C]
    scale = (np.abs(w).reshape(-1, c).max(0) / 7 + 1e-12).astype(np.float32)
    q = np.clip(np.round(w / scale), -8, 7).astype(np.int8)
    assert q.min() < 0 < q.max()
    layers = [
        {"w": _pack_int4(q), "shape": w.shape, "ttype": 17, "scale": scale},
        {"w": _pack_int4(q[..., :5]), "shape": (1, kh, kw, 5), "ttype": 17,
         "scale": scale[:5], "dequant": True},  # odd count: the last byte half used
        {"w": np.zeros((1, kh, kw, c), np.uint16), "shape": w.shape, "ttype": 18},
    ]  # fmt: skip
    path = tmp_path / "int4.tflite"
    path.write_bytes(tflite_bytes(layers))
    res = harvest(path)
    want = np.moveaxis((q.astype(np.float32) * scale)[0], -1, 0)
    np.testing.assert_array_equal(res.layers[0].weights, want)
    np.testing.assert_array_equal(res.layers[1].weights, want[:5])
    np.testing.assert_allclose(want, real, atol=float(scale.max()) / 2 + 1e-7)
    assert [lk.dtype for lk in res.layers] == ["int4", "int4"]
    assert res.skipped == {"BFLOAT16 weights, a type not read": 1}


def test_sparse_weights_behind_densify_and_runtime_weights_counted(shipped, tmp_path):
    """Real MediaPipe kernels, pruned and stored with TFLite's sparsity encoding behind
    DENSIFY (the layout of the converter's sparse models: three dense dimensions, channels
    CSR; also channel blocks, and uint8/uint16 indices), fp16 through DENSIFY + DEQUANTIZE,
    are read exactly; a filter computed at run time is counted. Before, these layers were
    dropped without a word (zero kernels, "no depthwise convolution found")."""
    real = harvest(shipped("mediapipe/hand_recrop")).layers[0].weights  # [C, kh, kw]
    w = np.moveaxis(real, 0, -1)[None].copy()  # [1, kh, kw, C]
    w[np.abs(w) < np.median(np.abs(w))] = 0  # pruned: half the weights are zero
    c = w.shape[-1]
    assert c % 4 == 0
    w16 = w.astype(np.float16)
    layers = [
        {"w": w, "sparse": tflite_sparse(w), "stride": 2},
        {"w": w16, "sparse": tflite_sparse(w16, block=4, index_kind=3), "dequant": True},
        {"w": w, "sparse": tflite_sparse(w, block=2, index_kind=2)},
        {"w": w, "runtime": True},
    ]
    path = tmp_path / "sparse.tflite"
    path.write_bytes(tflite_bytes(layers))
    res = harvest(path)
    assert res.counts() == {real.shape[1:]: (3, 3 * c)}
    assert res.skipped == {"weights not constant": 1}
    np.testing.assert_array_equal(res.layers[0].weights, np.moveaxis(w[0], -1, 0))
    np.testing.assert_array_equal(
        res.layers[1].weights, np.moveaxis(w16[0], -1, 0).astype(np.float32)
    )
    np.testing.assert_array_equal(res.layers[2].weights, res.layers[0].weights)
    assert [lk.dtype for lk in res.layers] == ["float32", "float16", "float32"]
    assert res.layers[0].stride == 2
    # a sparse tensor whose segments do not add up is one line, not a wrong kernel
    bad = tflite_sparse(w)
    bad["dims"][-1] = ("csr", bad["dims"][-1][1][:-1], bad["dims"][-1][2], 1)
    (tmp_path / "bad.tflite").write_bytes(tflite_bytes([{"w": w, "sparse": bad}]))
    with pytest.raises(FormatError, match="inconsistent sparsity parameters"):
        harvest(tmp_path / "bad.tflite")
