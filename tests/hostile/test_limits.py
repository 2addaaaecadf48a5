"""Absurd declared sizes are refused before allocation; KERNELATLAS_MAX_TENSOR_BYTES caps
every reader; files whose declared shapes do not match their data are refused."""

from __future__ import annotations

import json
import pickle
import struct
import time
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest
import torch

from kernelatlas.errors import FormatError, KernelAtlasError
from kernelatlas.harvest import harvest
from kernelatlas.limits import (
    DEFAULT_MAX_TENSOR_BYTES,
    ENV_MAX_TENSOR_BYTES,
    TensorTooLargeError,
    max_tensor_bytes,
)

from .makers import SEED_NAMES, tflite_bytes

HUGE = [10**6, 1, 1000, 1000]  # 10^12 elements: 4 TB as float32


def _refused_cheaply(path, error, match):
    """Harvest ``path``: ``error`` raised within 5 s and under 64 MB of traced allocation."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(error, match=match) as info:
            harvest(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t < 5
    assert peak < 64 * 2**20, peak
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def _safetensors(path, shape, data_bytes, dtype="F32"):
    header = {"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, data_bytes]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * min(data_bytes, 4096))
    return path


def test_safetensors_absurd_and_lying_headers(tmp_path):
    _refused_cheaply(_safetensors(tmp_path / "a.safetensors", HUGE, 4 * 10**12), FormatError,
                     "truncated or corrupt")  # fmt: skip
    # shape larger than the data it points to
    _refused_cheaply(_safetensors(tmp_path / "b.safetensors", [8, 1, 3, 3], 40), FormatError,
                     "corrupt")  # fmt: skip


def test_npy_header_lying_or_absurd(tmp_path):
    def npy(path, shape, n_bytes):
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
            )
            f.write(b"\0" * n_bytes)
        return path

    _refused_cheaply(npy(tmp_path / "huge.npy", HUGE, 64), TensorTooLargeError, "over the")
    _refused_cheaply(npy(tmp_path / "lie.npy", [8, 3, 3], 100), FormatError, "holds 100")
    # an .npz member (valid zip, valid CRC) whose header lies
    import zipfile

    npy(tmp_path / "m.npy", [9, 9, 9], 288)
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as zf:
        zf.write(tmp_path / "m.npy", "a.npy")
    _refused_cheaply(tmp_path / "lie.npz", FormatError, "needs 2,916 bytes but the file holds 288")
    npy(tmp_path / "m.npy", HUGE, 288)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "m.npy", "a.npy")
    _refused_cheaply(tmp_path / "huge.npz", TensorTooLargeError, "over the")


def test_onnx_initializer_dims_vs_data(tmp_path, tiny_dscnn):
    import onnx

    from .makers import onnx_model

    model = onnx_model(tiny_dscnn)
    w = next(i for i in model.graph.initializer if i.name == "w12")
    del w.dims[:]
    w.dims.extend(HUGE)
    onnx.save(model, tmp_path / "huge.onnx")
    _refused_cheaply(tmp_path / "huge.onnx", TensorTooLargeError, "w12")
    del w.dims[:]
    w.dims.extend([32, 1, 3, 5])  # 480 values declared, 160 stored
    onnx.save(model, tmp_path / "lie.onnx")
    _refused_cheaply(tmp_path / "lie.onnx", FormatError, "needs 1,920 bytes but the file holds 640")


def test_onnx_external_data_only_beside_the_model(tmp_path, tiny_dscnn):
    import onnx

    from .makers import onnx_model

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(160, np.float32).tobytes())
    sub = tmp_path / "models"
    sub.mkdir()
    for loc, match in (("../secret.bin", "not a file beside"), (str(secret), "not a file beside"),
                       ("missing.bin", "is missing")):  # fmt: skip
        model = onnx_model(tiny_dscnn)
        w = next(i for i in model.graph.initializer if i.name == "w12")
        w.ClearField("raw_data")
        w.data_location = onnx.TensorProto.EXTERNAL
        w.external_data.add(key="location", value=loc)
        onnx.save(model, sub / "m.onnx")
        _refused_cheaply(sub / "m.onnx", FormatError, match)
    # a well-formed external file beside the model is read (a correct result)
    (sub / "w12.bin").write_bytes(tiny_dscnn[12].weight.detach().numpy().tobytes())
    w.external_data[0].value = "w12.bin"
    onnx.save(model, sub / "m.onnx")
    res = harvest(sub / "m.onnx")
    np.testing.assert_array_equal(res.layers[2].weights, tiny_dscnn[12].weight.detach()[:, 0])


def test_tflite_buffer_shorter_than_shape_and_absurd_shape(tmp_path):
    w = np.ones((1, 3, 3, 8), np.float32)
    (tmp_path / "short.tflite").write_bytes(tflite_bytes([{"w": w, "shape": [1, 3, 3, 16]}]))
    _refused_cheaply(
        tmp_path / "short.tflite", FormatError, "needs 576 bytes but the file holds 288"
    )
    (tmp_path / "huge.tflite").write_bytes(
        tflite_bytes([{"w": w, "shape": [1, 10**4, 10**4, 10**3]}])
    )
    _refused_cheaply(tmp_path / "huge.tflite", TensorTooLargeError, "over the")
    (tmp_path / "neg.tflite").write_bytes(tflite_bytes([{"w": w, "shape": [1, -3, -3, 8]}]))
    _refused_cheaply(tmp_path / "neg.tflite", FormatError, "negative dimension")


def test_h5_dataset_declaring_a_huge_shape(tmp_path):
    import h5py

    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # chunked, never written: tiny file, 4 TB declared
        f.attrs["layer_names"] = [b"dw"]
        g = f.create_group("dw")
        g.attrs["weight_names"] = [b"dw/depthwise_kernel:0"]
        g.create_dataset("dw/depthwise_kernel:0", shape=(1000, 1000, 10**6, 1), dtype="f4",
                         chunks=(3, 3, 8, 1))  # fmt: skip
    assert path.stat().st_size < 100_000
    _refused_cheaply(path, TensorTooLargeError, "over the")
    with h5py.File(path, "w") as f:  # a string dataset where a kernel should be
        f.attrs["layer_names"] = [b"dw"]
        g = f.create_group("dw")
        g.attrs["weight_names"] = [b"dw/depthwise_kernel:0"]
        g.create_dataset("dw/depthwise_kernel:0", data=np.array([b"abc"] * 9).reshape(3, 3, 1, 1))
    _refused_cheaply(path, FormatError, "not numeric")


def test_legacy_checkpoint_declaring_a_huge_storage(tmp_path):
    """A legacy torch pickle whose storage claims 4 TB: refused before torch allocates it."""

    class _Storage:
        pass

    class _Tensor:
        def __init__(self, storage):
            self.storage = storage

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (self.storage, 0, tuple(HUGE), (10**6, 10**6, 1000, 1), False, OrderedDict()))  # fmt: skip

    storage = _Storage()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", 10**12)
            return None

    path = tmp_path / "huge.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
            pickle.dump(header, f, protocol=2)
        _Pickler(f, protocol=2).dump({"state_dict": {"dw.weight": _Tensor(storage)}})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 9) + b"\0" * 36)
    _refused_cheaply(path, TensorTooLargeError, "storage of 1000000000000")


@pytest.mark.parametrize("key", sorted(SEED_NAMES))
def test_max_tensor_bytes_caps_every_reader(key, seeds, monkeypatch):
    """The seeds' largest depthwise kernel is 32x5x5 float32 = 3,200 bytes."""
    monkeypatch.setenv(ENV_MAX_TENSOR_BYTES, "3000")
    with pytest.raises(TensorTooLargeError, match=ENV_MAX_TENSOR_BYTES) as info:
        harvest(seeds[key])
    assert "\n" not in str(info.value)
    monkeypatch.setenv(ENV_MAX_TENSOR_BYTES, "4K")
    assert harvest(seeds[key]).layers


def test_max_tensor_bytes_parsing(monkeypatch):
    monkeypatch.delenv(ENV_MAX_TENSOR_BYTES, raising=False)
    assert max_tensor_bytes() == DEFAULT_MAX_TENSOR_BYTES == 2 * 1024**3
    for raw, want in (("1024", 1024), ("512M", 512 * 2**20), ("4g", 4 * 2**30), ("2GiB", 2**31)):
        monkeypatch.setenv(ENV_MAX_TENSOR_BYTES, raw)
        assert max_tensor_bytes() == want
    for raw in ("abc", "-5", "0", "1.5G"):
        monkeypatch.setenv(ENV_MAX_TENSOR_BYTES, raw)
        with pytest.raises(KernelAtlasError, match=ENV_MAX_TENSOR_BYTES):
            max_tensor_bytes()


def test_onnx_identity_cycle_and_bad_operands(tmp_path, tiny_dscnn):
    """Constant folding through a cycle of Identity nodes ends; broadcasting errors are ours."""
    import onnx
    from onnx import helper, numpy_helper

    from .makers import onnx_model

    model = onnx_model(tiny_dscnn)
    conv = next(n for n in model.graph.node if n.name == "conv12")
    conv.input[1] = "loop_a"
    model.graph.node.extend([helper.make_node("Identity", ["loop_b"], ["loop_a"]),
                             helper.make_node("Identity", ["loop_a"], ["loop_b"])])  # fmt: skip
    onnx.save(model, tmp_path / "cycle.onnx")
    res = harvest(tmp_path / "cycle.onnx")  # the weight is not constant: layer not harvested
    assert [lk.layer for lk in res.layers] == ["conv3", "conv9", "conv14"]
    model = onnx_model(tiny_dscnn)
    conv = next(n for n in model.graph.node if n.name == "conv12")
    conv.input[1] = "prod"
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((3, 2), np.float32), "m1"),
                                    numpy_helper.from_array(np.ones((4, 5), np.float32), "m2")])  # fmt: skip
    model.graph.node.extend([helper.make_node("Mul", ["m1", "m2"], ["prod"])])
    onnx.save(model, tmp_path / "mul.onnx")
    _refused_cheaply(tmp_path / "mul.onnx", FormatError, "incompatible shapes")


# ----------------------------------------------------------------------------- TF.js
def _tfjs_variant(base, tmp_path, name, mutate):
    """A copy of the TF.js model folder ``base`` with ``mutate(doc, folder)`` applied."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(base, folder, symlinks=True)
    doc = json.loads((folder / "model.json").read_text())
    mutate(doc, folder)
    (folder / "model.json").write_text(json.dumps(doc))
    return folder / "model.json"


def test_tfjs_lying_manifests_and_escaping_shard_paths(tmp_path, tiny_dscnn):
    """Sizes are checked against the shards before any weight is read; a shard must be a
    regular file inside the model's folder; each refusal is one line."""
    import os

    from kernelatlas.errors import UnsafeFileError

    from .makers import write_tfjs

    base = write_tfjs(tiny_dscnn, tmp_path / "ok", kind="graph", quant="uint8").parent
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 8)

    def weight(doc, name):
        return next(w for w in doc["weightsManifest"][0]["weights"] if w["name"] == name)

    def shape(new):
        return lambda d, f: weight(d, "dw1/filter").__setitem__("shape", new)

    def path0(p):
        return lambda d, f: d["weightsManifest"][0]["paths"].__setitem__(0, p)

    def link_out(d, f):
        (f / "evil.bin").symlink_to(secret)
        d["weightsManifest"][0]["paths"][0] = "evil.bin"

    def fifo(d, f):
        os.mkfifo(f / "pipe.bin")
        d["weightsManifest"][0]["paths"][0] = "pipe.bin"

    def cut_shard(d, f):
        p = f / d["weightsManifest"][0]["paths"][-1]
        p.write_bytes(p.read_bytes()[:-5])

    cases = [
        ("bigger", shape([5, 5, 32, 2]), FormatError, "declares .* bytes but its shards hold"),
        ("huge", shape(HUGE), FormatError, "declares .* bytes but its shards hold"),
        ("negative", shape([5, -5, 16, 2]), FormatError, "not a tensor shape"),
        ("cut", cut_shard, FormatError, "but its shards hold"),
        ("dotdot", path0("../secret.bin"), UnsafeFileError, "outside the model's folder"),
        ("absolute", path0(str(secret)), UnsafeFileError, "outside the model's folder"),
        ("deep", path0("sub/../../secret.bin"), UnsafeFileError, "outside the model's folder"),
        ("link", link_out, UnsafeFileError, "outside the model's folder"),
        ("fifo", fifo, FormatError, "not a regular file"),
        ("missing", path0("nope.bin"), FormatError, "is missing"),
        ("noscale", lambda d, f: weight(d, "dw0/filter")["quantization"].pop("scale"),
         FormatError, "without scale"),
        ("dtype", lambda d, f: weight(d, "dw0/filter")["quantization"].update(dtype="int4"),
         FormatError, "unknown quantization"),
        ("nomanifest", lambda d, f: d.pop("weightsManifest"), FormatError, "without weightsManifest"),
    ]  # fmt: skip
    for name, mutate, error, match in cases:
        msg = _refused_cheaply(_tfjs_variant(base, tmp_path, name, mutate), error, match)
        assert "secret" not in name or "\\x00\\x01" not in msg
    deep = tmp_path / "nested" / "model.json"
    deep.parent.mkdir()
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _refused_cheaply(deep, FormatError, "nested too deep|not valid JSON")
    # the folder itself is accepted, and a manifest named otherwise is read by content
    assert harvest(base).layers and harvest(base / "model.json").layers


# ----------------------------------------------------------------------------- ONNX budget
def test_onnx_mul_chain_is_folded_once_per_node(tmp_path, monkeypatch):
    """A tiny graph whose Mul chain reuses each output twice: 2**60 steps without
    memoisation; folded in 60 here, and a step bound stated in one line."""
    import onnx

    from kernelatlas.harvest import onnx_

    from .makers import onnx_mul_chain

    path = tmp_path / "chain.onnx"
    onnx.save(onnx_mul_chain(60), path)
    assert path.stat().st_size < 2000
    t = time.perf_counter()
    res = harvest(path)
    assert time.perf_counter() - t < 5
    assert res.counts() == {(3, 3): (1, 8)} and (res.layers[0].weights == 1).all()
    monkeypatch.setattr(onnx_, "MAX_FOLD_STEPS", 10)
    _refused_cheaply(path, FormatError, "more than 10 steps")


def test_onnx_broadcasts_and_shared_initializers_are_charged(tmp_path, monkeypatch):
    """Broadcasts are charged before they are computed, and every harvested layer is
    charged (an initializer shared by 300 convs is 300 layers): KERNELATLAS_MAX_SOURCE_BYTES
    refuses them with small peak memory."""
    import onnx

    from kernelatlas.limits import ENV_MAX_SOURCE_BYTES

    from .makers import onnx_broadcast, onnx_shared_initializer

    monkeypatch.setenv(ENV_MAX_SOURCE_BYTES, "24M")
    for name, model in (("bcast", onnx_broadcast(100, 2048, 32)),  # 8 MiB per conv
                        ("shared_bcast", onnx_broadcast(100, 2048, 32, shared=True)),
                        ("shared", onnx_shared_initializer(300, 1024, 8))):  # fmt: skip
        onnx.save(model, tmp_path / f"{name}.onnx")
        assert (tmp_path / f"{name}.onnx").stat().st_size < 400_000
        _refused_cheaply(tmp_path / f"{name}.onnx", TensorTooLargeError, ENV_MAX_SOURCE_BYTES)
    monkeypatch.setenv(ENV_MAX_SOURCE_BYTES, "128M")  # within budget: read, 300 layers
    assert harvest(tmp_path / "shared.onnx").counts() == {(8, 8): (300, 300 * 1024)}


def test_npz_deflated_member_charged_before_inflating(tmp_path, monkeypatch):
    from kernelatlas.limits import ENV_MAX_SOURCE_BYTES

    np.savez_compressed(tmp_path / "zeros.npz", k=np.zeros((4096, 64, 64), np.float32))
    assert (tmp_path / "zeros.npz").stat().st_size < 200_000  # 64 MiB inflated
    monkeypatch.setenv(ENV_MAX_SOURCE_BYTES, "8M")
    _refused_cheaply(tmp_path / "zeros.npz", TensorTooLargeError, r"'k.npy' \(uncompressed\)")


def test_fifos_devices_and_zip_member_paths(tmp_path):
    """FIFOs and devices (also behind a symlink) are refused before any read; zip members
    named with ``..`` are never extracted (names only) or refused."""
    import os
    import zipfile

    for name in ("pipe.h5", "pipe.npz", "pipe.json", "pipe.onnx"):
        os.mkfifo(tmp_path / name)
        _refused_cheaply(tmp_path / name, FormatError, "not a regular file")
    (tmp_path / "zero.tflite").symlink_to("/dev/zero")
    _refused_cheaply(tmp_path / "zero.tflite", FormatError, "not a regular file")
    with zipfile.ZipFile(tmp_path / "evil.keras", "w") as zf:
        zf.writestr("../config.json", "{}")
        zf.writestr("../model.weights.h5", b"\x89HDF")
    _refused_cheaply(tmp_path / "evil.keras", FormatError, "not a .keras archive")
    import io

    buf = io.BytesIO()
    np.save(buf, np.ones((4, 3, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as zf:
        zf.writestr("../../escape.npy", buf.getvalue())
    res = harvest(tmp_path / "evil.npz")  # the name is a label, nothing is written
    assert res.layers[0].layer == "../../escape" and not (tmp_path.parent / "escape.npy").exists()


# ------------------------------------------------------------------ torch files (#13)
def _torch_zip(path, data_pkl: bytes, records: dict[str, bytes], root: str = "archive"):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", data_pkl)
        for key, raw in records.items():
            zf.writestr(f"{root}/data/{key}", raw)
    return path


def _state_dict_pickle(shape, numel, key="0", stride=None) -> bytes:
    """data.pkl of ``{"dw.weight": tensor}`` whose storage ``key`` declares ``numel``."""

    class _Storage:
        pass

    storage = _Storage()
    stride = stride or tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))

    class _Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (storage, 0, tuple(shape), tuple(stride), False, OrderedDict()))  # fmt: skip

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, key, "cpu", numel) if obj is storage else None

    import io

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"dw.weight": _Tensor()})
    return buf.getvalue()


def test_torch_zip_declaring_huge_or_lying_storages(tmp_path):
    _refused_cheaply(_torch_zip(tmp_path / "huge.pt", _state_dict_pickle(HUGE, 10**12), {"0": b""}),
                     TensorTooLargeError, "storage of 1000000000000")  # fmt: skip
    # 8x3x3 floats declared, 10 bytes in the record
    _refused_cheaply(_torch_zip(tmp_path / "lie.pt", _state_dict_pickle([8, 1, 3, 3], 72),
                                {"0": b"\0" * 10}), FormatError, "its record holds 10")  # fmt: skip
    # a view past the end of its storage
    _refused_cheaply(_torch_zip(tmp_path / "past.pt", _state_dict_pickle([8, 1, 3, 3], 9),
                                {"0": b"\0" * 36}), FormatError, "runs past its storage")  # fmt: skip


def test_torch_member_paths_with_dotdot_are_refused(tmp_path):
    _refused_cheaply(_torch_zip(tmp_path / "key.pt", _state_dict_pickle([8, 1, 3, 3], 72,
                                key="../../etc/passwd"), {}), FormatError,
                     "is not a record name")  # fmt: skip
    _refused_cheaply(_torch_zip(tmp_path / "root.pt", _state_dict_pickle([8, 1, 3, 3], 72),
                                {"0": b"\0" * 288}, root="../up"), FormatError,
                     "points outside the archive")  # fmt: skip


def test_expanded_views_are_never_materialised(tmp_path):
    """A tiny .pt of stride-0 expand() views declaring GBs: skipped, nothing allocated."""
    base = torch.ones(1)
    sd = {"stem.weight": torch.ones(16, 3, 3, 3)}  # an RGB stem: no grayscale-stem rule
    sd |= {f"l{i}.weight": base.expand(10**6, 1, 7, 7) for i in range(64)}  # 64 x 196 MB
    torch.save(sd, tmp_path / "expand.pt")
    assert (tmp_path / "expand.pt").stat().st_size < 32_000
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match="no depthwise"):
            res = harvest(tmp_path / "expand.pt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.skipped == {"expanded view": 64} and peak < 16 * 2**20, peak


def test_views_sharing_a_storage_are_charged_to_the_source_budget(tmp_path, monkeypatch):
    """Many distinct views of one storage: each copy is charged before it is made."""
    from kernelatlas.limits import ENV_MAX_SOURCE_BYTES

    flat = torch.randn(256 * 49 + 64)
    sd = {"stem.weight": torch.ones(16, 3, 3, 3)}
    sd |= {f"l{i}.weight": flat[i : i + 256 * 49].view(256, 1, 7, 7) for i in range(64)}
    torch.save(sd, tmp_path / "shared.pt")  # one 50 kB storage, 64 views of 50 kB each
    assert len(harvest(tmp_path / "shared.pt").layers) == 64
    monkeypatch.setenv(ENV_MAX_SOURCE_BYTES, "1M")
    _refused_cheaply(tmp_path / "shared.pt", TensorTooLargeError, ENV_MAX_SOURCE_BYTES)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_file_truncated_while_read_is_an_error_not_a_crash(tmp_path, tiny_dscnn, legacy):
    """Weights are copied out with plain reads (no mmap): a file cut after it was opened
    gives a one-line FormatError, never SIGBUS."""
    from kernelatlas.harvest.checkpoint import read_torch_file
    from kernelatlas.harvest.torch_pickle import open_torch_file

    path = tmp_path / "m.pt"
    torch.save(tiny_dscnn.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    size = path.stat().st_size
    with open_torch_file(path) as tf:  # the pickle is parsed, no weight read yet
        with open(path, "r+b") as f:
            f.truncate(size // 3 if legacy else size - 2000)
        with pytest.raises(FormatError, match="truncated|corrupt|damaged") as info:
            read_torch_file(tf)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("legacy_header", [False, True], ids=["bare", "legacy"])
def test_pickle_opcodes_declaring_huge_lengths(tmp_path, legacy_header):
    """FRAME, BINBYTES8, BINUNICODE8, BYTEARRAY8 and LONG4 declaring up to 2**60 bytes in a
    few-byte pickle: nothing of that size is allocated, read from a file or from memory."""
    head = b""
    if legacy_header:
        head = b"".join(pickle.dumps(h, protocol=2) for h in
                        (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))  # fmt: skip
    bombs = {
        "frame": b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"N.",
        "bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.",
        "unicode8": b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.",
        "bytearray8": b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc.",
        "long4": b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"abc.",
    }
    for name, data in bombs.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(head + data)
        tracemalloc.start()
        try:
            try:
                harvest(path)
            except KernelAtlasError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, (name, peak)
