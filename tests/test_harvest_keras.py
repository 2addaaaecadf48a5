"""Keras as people save it (nested models, Keras 3 names, optimizer state) and the Keras
reader's confinement and limits: only the model's own file, budget charged before
decompressing, a bounded walk, and a forked child that cannot outlive its parent."""

from __future__ import annotations

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
