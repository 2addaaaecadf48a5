"""PyTorch 2 exported programs (``torch.export.save``, ``.pt2``): read as JSON and raw bytes
(never a pickle), the same kernels as the module they were exported from."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kernelatlas.errors import FormatError, UnsafeFileError
from kernelatlas.harvest import harvest
from kernelatlas.harvest.formats import detect_format


def _export(model: torch.nn.Module, path: Path, size: int = 16) -> Path:
    ep = torch.export.export(model.eval(), (torch.randn(1, 3, size, size),))
    torch.export.save(ep, str(path))
    return path


def test_an_exported_program_gives_the_modules_kernels(tiny_dscnn, tmp_path) -> None:
    path = _export(tiny_dscnn, tmp_path / "m.pt2")
    assert detect_format(path) == "pt2"
    ref, got = harvest(tiny_dscnn), harvest(path)
    assert got.counts() == ref.counts() and got.skipped == ref.skipped
    for a, b in zip(ref.layers, got.layers, strict=True):
        assert (a.layer, a.stride, a.dilation) == (b.layer, b.stride, b.dilation)
        np.testing.assert_array_equal(a.weights, b.weights)
    assert all(lk.dtype == "float32" and not lk.bn_folded for lk in got.layers)


def test_real_mobilenet_v2_exported(shipped, tmp_path) -> None:
    """torchvision's MobileNetV2 with its real ImageNet weights (the registry source),
    exported: 17 layers / 7,136 kernels, bit for bit the module's."""
    import torchvision

    m = torchvision.models.mobilenet_v2()
    ref = harvest("mobilenet_v2")
    from kernelatlas.harvest.checkpoint import load_state_dict

    state, _ = load_state_dict(shipped("mobilenet_v2"))
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    got = harvest(_export(m, tmp_path / "mnv2.pt2", 32))
    assert got.counts() == ref.counts() == {(3, 3): (17, 7136)}
    for a, b in zip(ref.layers, got.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data/weights/model_weights_config.json"):
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(info, data)
    return dst


def test_pickled_or_broken_tensors_are_refused(tiny_dscnn, tmp_path) -> None:
    path = _export(tiny_dscnn, tmp_path / "m.pt2")

    def pickled(doc):
        for entry in doc["config"].values():
            entry["use_pickle"] = True
        return doc

    with pytest.raises(UnsafeFileError, match="stored as a pickle, which kernelatlas never loads"):
        harvest(_rewrite(path, tmp_path / "p.pt2", pickled))

    def escaping(doc):
        for entry in doc["config"].values():
            entry["path_name"] = "../../etc/passwd"
        return doc

    with pytest.raises(FormatError, match="is not a file name"):
        harvest(_rewrite(path, tmp_path / "e.pt2", escaping))

    def oversized(doc):
        for entry in doc["config"].values():
            entry["tensor_meta"]["storage_offset"] = {"as_int": 10**6}
        return doc

    with pytest.raises(FormatError, match="runs past"):
        harvest(_rewrite(path, tmp_path / "o.pt2", oversized))
    (tmp_path / "t.pt2").write_bytes(path.read_bytes()[:300])
    with pytest.raises(FormatError, match=r"\.pt2"):
        harvest(tmp_path / "t.pt2")


def test_a_big_endian_archive_reads_the_same(tiny_dscnn, tmp_path) -> None:
    path = _export(tiny_dscnn, tmp_path / "m.pt2")
    big = tmp_path / "big.pt2"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(big, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/weights/weight_" in info.filename:  # float32 tensors, bytes swapped
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(info, data)
    for a, b in zip(harvest(path).layers, harvest(big).layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
