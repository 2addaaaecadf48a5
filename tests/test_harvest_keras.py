"""Keras as people save it (nested models, Keras 3 names, optimizer state) and the Keras
reader's confinement and limits: only the model's own file, budget charged before
decompressing, a bounded walk, and a forked child that cannot outlive its parent."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from kernelatlas.errors import FormatError, TensorTooLargeError, UnsafeFileError
from kernelatlas.harvest import harvest, keras_h5
from kernelatlas.limits import ENV_MAX_SOURCE_BYTES
from tests.hostile.makers import _adam_moments, keras3_nested, write_keras3_h5, write_keras3_real

COUNTS = {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
NAMES = ["backbone/block_1_depthwise", "backbone/block_2_depthwise", "backbone/neck/sep_1x5",
         "head_dw"]  # fmt: skip


@pytest.fixture(scope="module")
def module_ref(tiny_dscnn):
    return harvest(tiny_dscnn)


@pytest.mark.parametrize("writer", [write_keras3_h5, write_keras3_real], ids=["h5", "keras"])
def test_keras3_nested_model_with_optimizer_state(writer, module_ref, tiny_dscnn, tmp_path):
    """A Functional backbone (with a Functional neck) inside a model, Keras 3 variable names
    (``kernel``), classes only in the config, Adam moments of depthwise shape beside it."""
    path = writer(tiny_dscnn, tmp_path / ("m.h5" if writer is write_keras3_h5 else "m.keras"))
    res = harvest(path)
    assert res.format == "keras" and res.counts() == COUNTS and dict(res.skipped) == {"1x1": 1}
    assert [lk.layer for lk in res.layers] == NAMES
    assert [lk.stride for lk in res.layers] == [1, 2, 1, 1]
    assert [lk.dilation for lk in res.layers] == [1, 1, 1, 2]
    for got, want in zip(res.layers, module_ref.layers, strict=True):
        np.testing.assert_array_equal(got.weights, want.weights)
    moments = [m for m in _adam_moments(keras3_nested(tiny_dscnn)[1]).values() if m.ndim == 4]
    flat = {m.tobytes() for m in moments}
    assert not any(np.moveaxis(lk.weights, 0, -1).tobytes() in flat for lk in res.layers)


def test_weights_only_keras2_file_uses_the_depthwise_kernel_name(module_ref, tiny_dscnn, tmp_path):
    """No model_config: the Keras 2 variable name ``depthwise_kernel`` (which only depthwise
    kernels carry) decides; a Keras 3 ``kernel`` is not guessed at."""
    from tests.hostile.makers import write_h5

    path = write_h5(tiny_dscnn, tmp_path / "w.h5")
    with h5py.File(path, "a") as f:
        del f.attrs["model_config"]
    res = harvest(path)
    assert res.counts() == {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
    assert [lk.stride for lk in res.layers] == [0, 0, 0, 0]  # unknown without the config


def _one_layer_h5(path: Path, make_dataset) -> Path:
    """A Keras 2 .h5 whose only depthwise kernel is made by ``make_dataset(group, name)``."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dw"]
        g = f.create_group("dw")
        g.attrs["weight_names"] = [b"dw/depthwise_kernel:0"]
        make_dataset(g, "dw/depthwise_kernel:0")
    return path


def _refused(path: Path, error: type, match: str) -> str:
    with pytest.raises(error, match=match) as info:
        harvest(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_hdf5_never_reads_outside_the_model(tmp_path):
    """External raw storage, external links and virtual datasets: refused, one line; the
    secret's bytes never come back. A soft link inside the file is followed."""
    secret = tmp_path / "passwd"
    secret.write_bytes(np.arange(72, dtype=np.float32).tobytes())  # would parse as a kernel
    p = _one_layer_h5(tmp_path / "ext.h5", lambda g, n: g.create_dataset(
        n, shape=(3, 3, 8, 1), dtype="f4", external=[(str(secret), 0, 288)]))  # fmt: skip
    assert "passwd" in _refused(p, UnsafeFileError, "external file .*refused")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["k"] = np.ones((3, 3, 8, 1), np.float32)

    def link(g, n):
        g.create_group("dw")
        g["dw"]["depthwise_kernel:0"] = h5py.ExternalLink(str(other), "/k")

    _refused(_one_layer_h5(tmp_path / "link.h5", link), UnsafeFileError, "external link")

    def virtual(g, n):
        layout = h5py.VirtualLayout(shape=(3, 3, 8, 1), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "k", shape=(3, 3, 8, 1))
        g.create_group("dw").create_virtual_dataset("depthwise_kernel:0", layout)

    _refused(_one_layer_h5(tmp_path / "vds.h5", virtual), UnsafeFileError, "virtual dataset")

    def soft(g, n):
        g.create_dataset("real", data=np.full((3, 3, 8, 1), 2, np.float32))
        g.create_group("dw")["depthwise_kernel:0"] = h5py.SoftLink("/dw/real")

    res = harvest(_one_layer_h5(tmp_path / "soft.h5", soft))
    assert res.counts() == {(3, 3): (1, 8)} and (res.layers[0].weights == 2).all()


def test_compressed_members_are_charged_before_decompression(tmp_path, monkeypatch):
    """gzip HDF5 datasets, oversized chunks and deflated .keras members count by their
    uncompressed size against KERNELATLAS_MAX_SOURCE_BYTES, before anything is inflated."""
    monkeypatch.setenv(ENV_MAX_SOURCE_BYTES, "8M")
    gz = _one_layer_h5(tmp_path / "gz.h5", lambda g, n: g.create_dataset(
        n, data=np.zeros((64, 64, 1024, 1), np.float32), compression="gzip", chunks=(64, 64, 64, 1)))  # fmt: skip
    assert gz.stat().st_size < 200_000
    _refused(gz, TensorTooLargeError, ENV_MAX_SOURCE_BYTES)
    chunk = _one_layer_h5(tmp_path / "chunk.h5", lambda g, n: g.create_dataset(
        n, shape=(3, 3, 8, 1), maxshape=(None, None, 8, 1), chunks=(512, 512, 8, 1), dtype="f4",
        compression="gzip", fillvalue=1.0))  # fmt: skip
    _refused(chunk, TensorTooLargeError, "one chunk")
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            "config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        )
        zf.writestr("model.weights.h5", bytes(16 * 2**20))
    assert path.stat().st_size < 100_000
    _refused(path, TensorTooLargeError, "model.weights.h5 .uncompressed")


def _many_groups(path: Path, n: int, model) -> Path:
    """A valid Keras 2 .h5 with ``n`` empty layer groups besides the depthwise ones."""
    from tests.hostile.makers import write_h5

    write_h5(model, path)
    with h5py.File(path, "a") as f:
        mw = f["model_weights"]
        names = [n.encode() if isinstance(n, str) else bytes(n) for n in mw.attrs["layer_names"]]
        gid = mw.id
        for i in range(n):
            h5py.h5g.create(gid, b"pad%d" % i).close()
        names += [b"pad%d" % i for i in range(n)]
        del mw.attrs["layer_names"]
        for j in range(0, len(names), 5000):  # Keras splits long attributes (64 KB headers)
            mw.attrs[f"layer_names{j // 5000}"] = np.array(names[j : j + 5000], dtype="S")
    return path


@pytest.mark.timeout(120)
def test_200k_groups_are_read_and_the_walk_limit_is_stated(tmp_path, tiny_dscnn, monkeypatch):
    path = _many_groups(tmp_path / "big.h5", 200_000, tiny_dscnn)
    t = time.perf_counter()
    assert harvest(path).counts() == {(1, 5): (1, 32), (3, 3): (2, 40), (5, 5): (1, 32)}
    assert time.perf_counter() - t < 30  # never near the 60 s deadline
    monkeypatch.setattr(keras_h5, "MAX_HDF5_OBJECTS", 100_000)
    _refused(path, FormatError, r"more than 100,000 HDF5 groups")


_PARENT = """
import sys
from pathlib import Path
from kernelatlas.harvest import keras_h5
keras_h5._time_limit = lambda p: float(sys.argv[2])
print("ready", flush=True)
try:
    keras_h5.read_keras(Path(sys.argv[1]))
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""
HANG = Path(__file__).parent / "hostile" / "corpus" / "fuzz_keras_hang_ebf8a86a8c.h5"


def _child_of(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children()
        if kids:
            return kids[0].pid
        time.sleep(0.02)
    raise AssertionError("the reader never forked")


def _gone(pid: int, timeout: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(90)
def test_forked_child_has_its_own_deadline_and_dies_with_its_parent(tmp_path):
    """A libhdf5 read that loops: the child ends by itself though its parent is stopped
    (alarm/RLIMIT_CPU), dies when its parent is SIGKILLed (PR_SET_PDEATHSIG), and leaves no
    temporary file either way."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _PARENT, str(HANG)]
    stopped = subprocess.Popen([*cmd, "2"], env=env, stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([*cmd, "60"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        kid_a, kid_b = _child_of(stopped), _child_of(killed)
        os.kill(stopped.pid, signal.SIGSTOP)  # the parent can neither poll nor kill now
        os.kill(killed.pid, signal.SIGKILL)
        assert _gone(kid_b, 5), "the child outlived its SIGKILLed parent"
        assert _gone(kid_a, 10), "the child ran past its own deadline"
        os.kill(stopped.pid, signal.SIGCONT)
        out = stopped.communicate(timeout=30)[0]
        assert "did not finish reading it in 2 s" in out
    finally:
        for p in (stopped, killed):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait()
    assert list(tmp_path.iterdir()) == []  # anonymous temp file: nothing to clean


def _convnext_like(seed: int = 0) -> tuple[dict, list[tuple[str, np.ndarray | None]]]:
    """Keras's own ConvNeXt as ``keras.applications`` builds it (3.15): its depthwise convs
    are ``Conv2D(groups=channels)``, kernels ``[7, 7, 1, filters]``; beside them a stem
    Conv2D, a grouped conv that is not depthwise, and a weightless Activation."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    layers = [
        ("InputLayer", "input_layer", {}, None),
        ("Conv2D", "stem", {"groups": 1}, rng.standard_normal((4, 4, 3, 8)).astype(f32)),
        ("Conv2D", "block_0_depthwise_conv", {"groups": 8, "strides": [1, 1],
         "dilation_rate": [1, 1]}, rng.standard_normal((7, 7, 1, 8)).astype(f32)),
        ("Activation", "block_0_gelu", {}, None),
        ("Conv2D", "grouped", {"groups": 2}, rng.standard_normal((3, 3, 4, 8)).astype(f32)),
        ("Conv2D", "block_1_depthwise_conv", {"groups": 8, "strides": [2, 2],
         "dilation_rate": [1, 1]}, rng.standard_normal((7, 7, 1, 16)).astype(f32)),
    ]  # fmt: skip
    config = {"class_name": "Functional", "config": {"name": "convnext", "layers": [
        {"module": "keras.layers", "class_name": cls, "config": {"name": name, **cfg}}
        for cls, name, cfg, _ in layers]}}  # fmt: skip
    return config, [(name, w) for _, name, _, w in layers]


def test_keras_convnext_depthwise_convs_are_grouped_conv2d(tmp_path):
    """Real Keras 3 ConvNeXt-T files (.keras and legacy .h5 saved by keras 3.15 with the
    torch backend) gave 0 kernels and 'truncated or corrupt Keras file' (an empty
    ``weight_names`` attribute of a weightless layer); now 18 layers / 6,624 kernels,
    equal to Keras's own weights. Both layouts, rebuilt here without Keras."""
    config, weights = _convnext_like()
    names = ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"]  # Keras 3: by class and position
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for group, (_, w) in zip(names, [x for x in weights if x[1] is not None], strict=True):
            f.create_group(f"layers/{group}/vars").create_dataset("0", data=w)
    archive = tmp_path / "convnext.keras"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buf.getvalue())
    legacy = tmp_path / "convnext.h5"
    with h5py.File(legacy, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [name.encode() for name, _ in weights]
        for name, w in weights:
            g = mw.create_group(name)
            g.attrs["weight_names"] = [] if w is None else [f"{name}/kernel".encode()]
            if w is not None:
                g.create_dataset(f"{name}/kernel", data=w)
    want = {name: w[:, :, 0, :].transpose(2, 0, 1) for name, w in weights if "depthwise" in name}
    for path in (archive, legacy):
        res = harvest(path)
        assert [lk.layer for lk in res.layers] == list(want), path
        for lk in res.layers:
            np.testing.assert_array_equal(lk.weights, want[lk.layer])
        assert [lk.stride for lk in res.layers] == [1, 2]
    # a Keras 3 .h5 with no depthwise layer at all: said so, not "corrupt"
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {
            "name": "p", "layers": [{"class_name": "Activation", "config": {"name": "gelu"}}]}})  # fmt: skip
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"gelu"]
        mw.create_group("gelu").attrs["weight_names"] = []
    with pytest.warns(UserWarning, match="no depthwise convolution found"):
        assert harvest(plain).layers == []
