"""Pickles that would run code when loaded: refused in every container, never executed."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from kernelatlas.errors import KernelAtlasError, UnsafeFileError
from kernelatlas.harvest import harvest


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
