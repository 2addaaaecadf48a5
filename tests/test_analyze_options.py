"""Options say what they do: ``--null init`` calibrates on one half of the fresh-init
kernels and reports the other half; ``--fold-bn`` is applied the same way by ``harvest`` and
``analyze`` (the fresh-init twin is stated as unfolded, no raw warning); ``analyze`` takes
bank folders and globs like ``harvest``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernelatlas.atlas import Atlas
from kernelatlas.bank import KernelBank
from kernelatlas.harvest import HarvestResult, LayerKernels, harvest
from kernelatlas.null import split_halves
from kernelatlas.pipeline import INIT_FOLD_NOTE, analyze
from tests.hostile.cli import run_cli

SOURCE = "pp_lcnet_orientation"  # ONNX (folds batch norms); twin timm:lcnet_100@init


@pytest.fixture(scope="module")
def init_run(tmp_path_factory, pp_lcnet_path):
    out = tmp_path_factory.mktemp("nullinit") / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = analyze(
            [SOURCE], out, null="init", fold_bn=True, fit=False, figures=False, quiet=True, seed=3
        )
    return res, caught


def test_null_init_reports_the_held_out_half(init_run) -> None:
    res, _ = init_run
    twin = harvest("timm:lcnet_100@init")
    assert {t["null_kind"] for t in res.summary["thresholds"]} == {"init"}
    for m in res.summary["models"]:
        k = (m["kh"], m["kw"])
        calib, held = split_halves(twin.kernels(k), seed=3)
        assert abs(len(calib) - len(held)) <= 1 and len(held) >= 100
        atlas = Atlas(kernel_size=k, null_fpr=0.01, seed=3).fit(null=calib)
        rate = float(atlas.predict(held)["classified"].mean())
        assert m["null_coverage"] == pytest.approx(rate)  # the other half, not in-sample
        assert m["init_coverage"] is not None and m["coverage"] > m["init_coverage"] + 0.2
    html = (res.out / "index.html").read_text()
    assert "half of the fresh-init kernels" in html and "iid Gaussian kernels" not in html


def test_fold_bn_applies_to_the_model_and_states_the_twin(init_run) -> None:
    res, caught = init_run
    assert [str(w.message) for w in caught] == []  # no raw warning about the twin
    notes = res.summary["config"]["notes"]
    assert res.summary["config"]["fold_bn"] and notes[0] == INIT_FOLD_NOTE
    # 216 fresh-init 3x3 kernels calibrate: 2.2 of them set the threshold, which is said
    assert len(notes) == 2 and notes[1].startswith("the 3x3 calibration null (init) holds 216 ")
    assert "is set by 2.2 of them" in notes[1] and "coarse" in notes[1]
    folded = pd.read_parquet(res.out / "kernels.parquet", columns=["bn_folded", "source"])
    assert folded["bn_folded"].all() and set(folded["source"]) == {f"{SOURCE}+fold_bn"}
    assert list(res.harvest["status"].unique()) == ["harvested"]


def test_analyze_takes_a_bank_and_a_glob(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.save(tmp_path / "models" / f"{name}.npy", rng.standard_normal((40, 3, 3), np.float32))
    np.save(tmp_path / "c.npy", rng.standard_normal((40, 3, 3), np.float32))
    assert run_cli(["harvest", tmp_path / "c.npy", "--out", tmp_path / "bank"]).code == 0
    run = run_cli(
        ["analyze", "bank", "models/*.npy", "--out", "report", "--no-fit", "--quiet"], cwd=tmp_path
    )
    assert run.code == 0, run.stderr
    doc = json.loads((tmp_path / "report" / "summary.json").read_text())
    got = {(m["model"], m["kh"], m["kernels"]) for m in doc["models"]}
    assert got == {("a", 3, 40), ("b", 3, 40), ("c", 3, 40)}
    assert doc["config"]["sources"] == ["bank", "models/a.npy", "models/b.npy"]


def test_quiet_keeps_the_caveats_and_a_coarse_gaussian_null_says_raise_n_null(
    tmp_path: Path,
) -> None:
    """``--quiet`` silences progress only (README): it also hid the notes, such as that the
    threshold rests on one null kernel; and the note told a Gaussian-null run to "use --null
    gaussian, or more sources", where only --n-null (or --null-fpr) changes it."""
    np.save(tmp_path / "m.npy", np.random.default_rng(0).standard_normal((40, 3, 3), np.float32))
    run = run_cli(["analyze", "m.npy", "--out", "report", "--no-fit", "--no-init-baseline",
                   "--baselines", "gaussian", "--n-null", "1000", "--null-fpr", "0.001",
                   "--quiet"], cwd=tmp_path)  # fmt: skip
    assert run.code == 0, run.stderr
    notes = [ln for ln in run.lines if ln.startswith("kernelatlas: note:")]
    assert len(notes) == 1, run.lines
    assert (
        "(gaussian) holds 1,000 kernels: at --null-fpr 0.001 its threshold is set by 1.0"
        in notes[0]
    )
    assert notes[0].endswith("is coarse; raise --n-null to 10,000 or more, or --null-fpr"), notes


def test_a_glob_leaves_out_what_is_not_a_weight_file_and_says_so(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "notes").mkdir(parents=True)
    np.save(models / "a.npy", np.random.default_rng(0).standard_normal((40, 3, 3), np.float32))
    (models / "README.md").write_text("how I trained these")
    (models / "model.pdiparams").write_bytes(b"\x00paddle")
    (models / "empty.onnx").write_bytes(b"")  # claimed by its suffix: reading it says why
    run = run_cli(["harvest", "models/*", "--out", "bank", "--quiet"], cwd=tmp_path)
    assert run.code == 2 and "models/empty.onnx: empty file" in run.lines[-1], run.lines
    (models / "empty.onnx").unlink()
    run = run_cli(["harvest", "models/*", "--out", "bank", "--quiet"], cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert (
        "kernelatlas: note: 'models/*': left out 3 that are not weight files or model folders: "
        "README.md, model.pdiparams, notes/"
    ) in run.stderr
    (models / "a.npy").unlink()
    line = run_cli(["harvest", "models/*", "--out", "bank2"], cwd=tmp_path).one_line_error()
    assert "nothing kernelatlas reads matches 'models/*': 3 matched, none a weight file" in line


def test_a_folded_bank_is_not_analysed_unfolded(tmp_path: Path) -> None:
    layers = [LayerKernels("dw", 0, np.ones((4, 3, 3), np.float32), bn_folded=True)]
    KernelBank(tmp_path / "folded").add(HarvestResult("m.onnx+fold_bn", "m", "onnx", layers))
    line = run_cli(["analyze", tmp_path / "folded", "--out", tmp_path / "r"]).one_line_error()
    assert "harvested with --fold-bn" in line and "analyse it with --fold-bn" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded"]


@pytest.mark.parametrize(
    "argv,says",
    [
        (["analyze", "x.npy", "--ou", "o"], "unrecognized arguments: --ou; did you mean --out?"),
        (["analyze", "x.npy", "--outt=o"], "unrecognized arguments: --outt; did you mean --out?"),
        (["analyze", "x.npy"], "the following arguments are required: --out"),
        (["harvest", "x.npy", "-o", "b"], "the following arguments are required: --out"),
    ],
)
def test_a_misspelt_required_option_is_named_not_said_missing(argv, says, capsys):
    """``analyze M --ou O`` said '--out is required' (argparse checks the required options
    before the unknown ones): the option typed is what to name."""
    from kernelatlas.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and says in err, err
