"""Pickles that would run code when loaded: refused in every container, never executed."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from kernelatlas.errors import KernelAtlasError, UnsafeFileError
from kernelatlas.harvest import harvest
from kernelatlas.harvest.torch_pickle import open_torch_file


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Popen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


class _Write:
    """Writes the marker through builtins.open + a method call (no os import)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


PAYLOADS = [_System, _Popen, _Write]


def _files(tmp_path, payload, tiny_dscnn):
    marker = tmp_path / "MARKER"
    evil = payload(marker)
    sd = dict(tiny_dscnn.state_dict())
    out = {}
    torch.save({"model": evil}, tmp_path / "zip.pt")
    out["zip.pt"] = tmp_path / "zip.pt"
    # hidden deep inside a real-looking nested checkpoint
    torch.save({"epoch": 3, "state_dict": {**sd, "extra": {"hook": [evil]}}}, tmp_path / "nest.pth")
    out["nest.pth"] = tmp_path / "nest.pth"
    torch.save({"state_dict": evil}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    out["legacy.pt"] = tmp_path / "legacy.pt"
    with open(tmp_path / "plain.bin", "wb") as f:  # a bare pickle named like a HF .bin
        pickle.dump({"state_dict": sd["3.weight"].numpy(), "x": evil}, f, protocol=4)
    out["plain.bin"] = tmp_path / "plain.bin"
    torch.save({"state_dict": evil}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    out["legacy.bin"] = tmp_path / "legacy.bin"
    np.save(tmp_path / "obj.npy", np.array([evil], dtype=object), allow_pickle=True)
    out["obj.npy"] = tmp_path / "obj.npy"
    np.savez(tmp_path / "obj.npz", ok=np.zeros((4, 3, 3), np.float32), bad=np.array([evil], object))
    out["obj.npz"] = tmp_path / "obj.npz"
    # a .keras archive whose weights member is a pickle instead of HDF5
    buf = io.BytesIO()
    pickle.dump(evil, buf)
    with zipfile.ZipFile(tmp_path / "evil.keras", "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", buf.getvalue())
    out["evil.keras"] = tmp_path / "evil.keras"
    return marker, out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
def test_code_running_pickles_are_refused(payload, tmp_path, tiny_dscnn):
    marker, files = _files(tmp_path, payload, tiny_dscnn)
    assert not marker.exists()
    for name, path in files.items():
        if name == "evil.keras":  # not a pickle reader at all: an HDF5 error, nothing run
            with pytest.raises(KernelAtlasError):
                harvest(path)
        else:
            with pytest.raises(UnsafeFileError, match="refused") as info:
                harvest(path)
            assert "\n" not in str(info.value) and str(path) in str(info.value), name
        assert not marker.exists(), f"{name}: the payload ran"


# --------------------------------------------------------------------------------------
# The placeholder design, attacked directly. Pickles are written opcode by opcode so that
# each one reaches the unpickler exactly as an attacker would write it. `evilmod` is a
# real importable module whose import (or any call into it) writes the marker: it never
# appears, so nothing was imported, called, built or set.
def _op_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_tuple(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


_EVILMOD = """
import pathlib
MARKER = pathlib.Path({marker!r})
MARKER.write_text("imported")


def run(*args):
    MARKER.write_text("called")


class Thing:
    def __init__(self, *a, **k):
        MARKER.write_text("constructed")

    def __new__(cls, *a, **k):
        MARKER.write_text("new")
        return object.__new__(cls)

    def __setstate__(self, state):
        MARKER.write_text("setstate")

    def __setitem__(self, k, v):
        MARKER.write_text("setitem")

    def append(self, v):
        MARKER.write_text("append")

    def extend(self, v):
        MARKER.write_text("extend")
"""


@pytest.fixture
def evilmod(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "evilmod.py").write_text(_EVILMOD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evilmod", None)


def _placeholder_attacks(marker) -> dict[str, bytes]:
    m = str(marker)
    thing, run = _op_global("evilmod", "Thing"), _op_global("evilmod", "run")
    getattr_ = _op_global("builtins", "getattr")
    path = _op_global("pathlib", "Path")
    attrgetter = _op_global("operator", "attrgetter")
    return {
        "reduce": _pickle(run + _op_tuple(_op_str(m)) + b"R"),
        "newobj": _pickle(thing + _op_tuple(_op_str(m)) + b"\x81"),
        "newobj_ex": b"\x80\x04" + thing + _op_tuple() + b"}" + b"\x92" + b".",
        "build": _pickle(thing + b")\x81" + b"}" + _op_str("x") + _op_str(m) + b"s" + b"b"),
        "build_on_reduce": _pickle(thing + b")R" + _op_str("state") + b"b"),
        "setitems_appends": _pickle(thing + b")R" + b"(" + _op_str("k") + _op_str("v") + b"u"
                                    + b"(" + _op_str("v") + b"e" + _op_str("w") + b"a"),
        "inst": b"(" + _op_str(m) + b"ievilmod\nThing\n.",
        "obj": _pickle(b"(" + thing + _op_str(m) + b"o"),
        "reduce_on_result": _pickle(run + b")R" + _op_tuple(_op_str(m)) + b"R"),
        # getattr(pathlib.Path(marker), "touch")() would create the file
        "getattr_chain": _pickle(getattr_ + _op_tuple(path + _op_tuple(_op_str(m)) + b"R",
                                                      _op_str("touch")) + b"R" + b")R"),
        "getattr_of_module": _pickle(getattr_ + _op_tuple(_op_global("evilmod", "run"),
                                                          _op_str("__call__")) + b"R"
                                     + _op_tuple(_op_str(m)) + b"R"),
        # operator.attrgetter("touch")(pathlib.Path(marker))()
        "attrgetter_chain": _pickle(attrgetter + _op_tuple(_op_str("touch")) + b"R"
                                    + _op_tuple(path + _op_tuple(_op_str(m)) + b"R") + b"R"
                                    + b")R"),
        # deep in nested containers: dict -> list -> tuple -> set-like placeholder
        "nested": _pickle(b"}" + _op_str("state_dict") + b"]" + _op_tuple(
            _op_global("builtins", "set") + _op_tuple(b"]" + run + _op_tuple(_op_str(m))
                                                      + b"R" + b"a") + b"R") + b"a" + b"s"),
    }  # fmt: skip


def _zip_checkpoint(tmp_path, name: str, data_pkl: bytes):
    path = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.filterwarnings("ignore:.*no depthwise convolution")
def test_placeholders_never_import_call_build_or_set(evilmod, tmp_path):
    marker = evilmod
    for name, data in _placeholder_attacks(marker).items():
        for path in (tmp_path / f"{name}.pt", _zip_checkpoint(tmp_path, f"zip_{name}", data)):
            if path.suffix == ".pt" and not path.exists():
                path.write_bytes(data)
            if path.suffix == ".pt" and path.parent == tmp_path and not name.startswith("zip"):
                # the bare pickle parses: every attack ends as inert records, not an error
                from kernelatlas.harvest.torch_pickle import Opaque, walk

                obj = open_torch_file(path).obj
                assert any(isinstance(o, Opaque) for o in walk(obj)), name
            try:
                res = harvest(path)
            except KernelAtlasError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc), (name, str(exc))
            else:
                assert res.layers == [], name
            assert not marker.exists(), f"{name}: {marker.read_text()}"
            assert "evilmod" not in sys.modules, f"{name}: evilmod was imported"
    import evilmod as _  # noqa: F401  (the module is importable: the test can fail)

    assert marker.read_text() == "imported"


def test_code_running_globals_anywhere_are_unsafe(tmp_path):
    """os/subprocess/exec/torch.load globals: refused as unsafe in every container and
    position, whatever the protocol."""
    marker = tmp_path / "MARKER"
    payloads = {
        "system": _pickle(_op_global("os", "system") + _op_tuple(_op_str(f"touch {marker}")) + b"R"),
        "py2_name": _pickle(_op_global("commands", "getoutput") + _op_tuple(_op_str("id")) + b"R"),
        "eval": _pickle(_op_global("__builtin__", "eval") + _op_tuple(_op_str("1")) + b"R"),
        "torch_load": _pickle(_op_global("torch", "load") + _op_tuple(_op_str("x.pt")) + b"R"),
        "in_torch_reduce": _pickle(_op_global("torch._utils", "_rebuild_parameter")
                                   + _op_tuple(_op_global("subprocess", "Popen")
                                               + _op_tuple(_op_str("id")) + b"R") + b"R"),
        "inst_opcode": b"(" + _op_str(str(marker)) + b"ios\nsystem\n.",
    }  # fmt: skip
    payloads["protocol5"] = pickle.dumps(_System(marker), protocol=5)
    # out-of-band data (NEXT_BUFFER) before the payload: the parse stops there, the scan
    # still finds the global
    payloads["protocol5_oob"] = pickle.dumps(
        [pickle.PickleBuffer(bytearray(b"abc")), _System(marker)], protocol=5,
        buffer_callback=lambda b: False,
    )  # fmt: skip
    payloads["corrupt_tail"] = pickle.dumps(_System(marker), protocol=4)[:-1] + b"\xff"
    for name, data in payloads.items():
        for path in (tmp_path / f"{name}.pt", _zip_checkpoint(tmp_path, f"zip_{name}", data)):
            if not path.exists():
                path.write_bytes(data)
            with pytest.raises(UnsafeFileError, match="refused, its pickle calls") as info:
                harvest(path)
            assert "\n" not in str(info.value) and str(path) in str(info.value), name
    torch.save({"model": _System(marker)}, tmp_path / "p5.pt", pickle_protocol=5)
    with pytest.raises(UnsafeFileError):
        harvest(tmp_path / "p5.pt")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_with_payloads_runs_nothing(tmp_path, tiny_dscnn):
    """A real TorchScript archive whose code files would write the marker if run, and
    whose constants.pkl carries a payload: the code is never run, the payload refused."""
    marker = tmp_path / "MARKER"
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(tiny_dscnn), good)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    code = [n for n in members if n.endswith(".py") and "/code/" in n]
    assert code
    for n in code:  # TorchScript source with Python that would run on exec
        members[n] += f"\nimport os\nos.system('touch {marker}')\n".encode()
    with zipfile.ZipFile(tmp_path / "code.pt", "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    res = harvest(tmp_path / "code.pt")
    assert [lk.layer for lk in res.layers] == ["3", "9", "12", "14"] and not marker.exists()
    const = next(n for n in members if n.endswith("constants.pkl"))
    members[const] = pickle.dumps(_System(marker), protocol=2)
    with zipfile.ZipFile(tmp_path / "const.pt", "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(UnsafeFileError, match="os.system|posix.system"):
        harvest(tmp_path / "const.pt")
    assert not marker.exists()
