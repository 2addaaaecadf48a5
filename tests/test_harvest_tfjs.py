"""TF.js graph models, layers models and bare weight manifests, fp32 / float16 / uint8 /
uint16, written by the tests: exact kernel counts, values, strides; the folder works too."""

from __future__ import annotations

import numpy as np
import pytest

from kernelatlas.harvest import harvest
from tests.hostile.makers import depthwise_convs, keras_kernel, tfjs_dequantised, write_tfjs

COUNTS = {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
QUANTS = [None, "float16", "uint8", "uint16"]


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q or "float32")
@pytest.mark.parametrize("kind", ["graph", "layers", "weights"])
def test_tfjs_kinds_and_quantisations(kind, quant, tiny_dscnn, tmp_path):
    path = write_tfjs(tiny_dscnn, tmp_path / "m", kind=kind, quant=quant, shard_bytes=300)
    assert len(list(path.parent.glob("*.bin"))) > 3  # weights span several shards
    res = harvest(path.parent if kind != "weights" else path)
    assert res.format == "tfjs" and res.counts() == COUNTS and dict(res.skipped) == {"1x1": 1}
    assert {lk.dtype for lk in res.layers} == {quant or "float32"}
    convs = [c for _, c in depthwise_convs(tiny_dscnn) if c.kernel_size != (1, 1)]
    for lk, conv in zip(res.layers, convs, strict=True):
        k = tfjs_dequantised(keras_kernel(conv), quant)  # [kh, kw, C, mult]
        want = np.moveaxis(k.reshape(*k.shape[:2], -1), -1, 0)
        np.testing.assert_array_equal(lk.weights, want)
        if quant is None:  # lossless: exactly the module's kernels
            np.testing.assert_array_equal(lk.weights, conv.weight.detach().numpy()[:, 0])
    if kind == "weights":
        assert [lk.stride for lk in res.layers] == [0, 0, 0, 0]  # the manifest does not say
    else:
        assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
        assert [lk.dilation for lk in res.layers] == [1, 1, 1, 2]
    if kind == "layers":  # the nested Keras config names them; optimizer decoys never read
        assert [lk.layer for lk in res.layers][-1] == "head_dw"
        assert not any((lk.weights == 9.0).all() for lk in res.layers)


def test_manifest_path_and_folder_agree(tiny_dscnn, tmp_path):
    path = write_tfjs(tiny_dscnn, tmp_path / "m", kind="graph")
    a, b = harvest(path), harvest(path.parent)
    assert (
        [lk.layer for lk in a.layers]
        == [lk.layer for lk in b.layers]
        == ["dw0", "dw1", "dw2", "dw4"]
    )
