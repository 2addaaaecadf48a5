"""The shipped reference autoencoders: provenance, spectra, and analyze's use of them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from kernelatlas.autoencoder import KernelAutoencoder
from kernelatlas.autoencoder.reference import (
    MIN_REFERENCE_KERNELS,
    PooledBank,
    eligibility,
    has_reference,
    load_reference,
    pool_sources,
    reference_dir,
    reference_index,
    reference_provenance,
    reference_sizes,
    train_reference,
    write_references,
)
from kernelatlas.errors import KernelAtlasError
from kernelatlas.harvest import get_source, list_sources
from kernelatlas.pipeline import AnalysisConfig, analyze
from kernelatlas.taxonomy import FIRST_DERIVATIVE, SECOND_DERIVATIVE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = reference_sizes()


def test_references_ship_for_3x3_and_5x5():
    assert {(3, 3), (5, 5)} <= set(SIZES)
    idx = reference_index()
    assert set(idx["sources"]) <= set(list_sources())
    for key, left in idx["not_shipped"].items():
        assert key not in idx["references"] and left["reason"]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reference_provenance_matches_its_files_and_the_registry(size):
    prov = reference_provenance(size)
    d = reference_dir() / f"ae_{size[0]}x{size[1]}"
    for name, digest in prov["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["fitted"]["n_train"] == prov["bank"]["trained_on"] >= MIN_REFERENCE_KERNELS
    assert prov["bank"]["models"] == len(prov["sources"]) >= 3
    assert sum(s["kernels"] for s in prov["sources"]) == prov["bank"]["kernels"]
    assert prov["seed"] == cfg["params"]["seed"] and prov["command"]
    for s in prov["sources"]:  # each training source is a registry entry, same file
        info = get_source(s["name"])
        assert s["sha256"] == info.sha256
        assert info.expected_counts[tuple(size)] == (s["layers"], s["kernels"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reference_spectra_name_derivative_segments(size):
    ae = load_reference(size, device="cpu")
    seg = ae.segments_
    mass = seg.groupby("family")["mass"].sum()
    assert np.isclose(mass.sum(), 1.0)
    # Not only `center`: derivative segments hold real kernels.
    assert mass.get(FIRST_DERIVATIVE, 0.0) > 0.05, seg
    assert mass.get("center", 0.0) > 0.1
    assert (mass.get(FIRST_DERIVATIVE, 0) + mass.get(SECOND_DERIVATIVE, 0)) > 0.1


def test_load_reference_errors():
    assert not has_reference(11)
    with pytest.raises(KernelAtlasError, match="no reference autoencoder for 11x11"):
        load_reference(11)


def _ae_rows(summary: dict, source: str) -> dict:
    keys = ("ae_coverage", "ae_null_coverage", "agreement", "agreement_kernels",
            "agreement_both_classified", "coverage")  # fmt: skip
    return {
        (m["kh"], m["kw"]): {k: m[k] for k in keys}
        for m in summary["models"]
        if m["source"] == source
    }


def test_same_model_same_ae_figures_alone_and_in_company(tmp_path: Path):
    import pandas as pd

    cfg = AnalysisConfig(quiet=True, method="both", fit=False, init_baseline=False, figures=False)
    a = analyze(["mediapipe/hand_recrop"], tmp_path / "alone", cfg)
    b = analyze(
        ["mediapipe/face_detection_short_range", "mediapipe/hand_recrop"], tmp_path / "b", cfg
    )
    assert _ae_rows(a.summary, "mediapipe/hand_recrop") == _ae_rows(
        b.summary, "mediapipe/hand_recrop"
    )
    cols = ["ae_latent", "ae_distance", "ae_family"]
    ka = pd.read_parquet(a.kernels_path, columns=["source", *cols])
    kb = pd.read_parquet(b.kernels_path, columns=["source", *cols])
    kb = kb[kb["source"] == "mediapipe/hand_recrop"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ka, kb)
    for r in b.summary["autoencoder"]["by_size"]:
        assert r["autoencoder"] == "reference" and r["note"] is None
        assert r["reference"]["sources"] == [
            s["name"] for s in reference_provenance((r["kh"], r["kw"]))["sources"]
        ]
    assert "reference (" in (tmp_path / "b" / "index.html").read_text()


def test_size_without_reference_falls_back_and_says_so(tmp_path: Path):
    from kernelatlas.atlas.evaluation import synthetic_kernels

    x, _ = synthetic_kernels(4, 4, 60, noise=0.2, seed=0)
    np.save(tmp_path / "k4.npy", x)
    assert not has_reference(4)
    cfg = AnalysisConfig(quiet=True, method="autoencoder", fit=False, init_baseline=False,
                         figures=False, ae_epochs=2)  # fmt: skip
    res = analyze([str(tmp_path / "k4.npy")], tmp_path / "o", cfg)
    (r,) = res.summary["autoencoder"]["by_size"]
    assert r["autoencoder"] == "run" and r["reference"] is None and r["trained_on"] == 180
    assert r["note"].startswith("no reference autoencoder for 4x4")
    assert "depend on what else is in the run" in r["note"]
    assert res.summary["config"]["ae"] == "reference"
    assert "no reference autoencoder for 4x4" in (tmp_path / "o" / "index.html").read_text()


def test_ae_train_keeps_per_run_training(tmp_path: Path):
    cfg = AnalysisConfig(quiet=True, method="autoencoder", fit=False, init_baseline=False,
                         figures=False, ae="train", ae_epochs=2)  # fmt: skip
    res = analyze(["mediapipe/hand_recrop"], tmp_path / "t", cfg)
    (r,) = res.summary["autoencoder"]["by_size"]
    assert r["autoencoder"] == "run" and r["trained_on"] == 112
    # 2 epochs of 112 kernels at batch 4096: 2 steps, said (the figures are a floor)
    assert r["note"].startswith("the 3x3 autoencoder trained for only 2 optimiser steps")
    assert "raise --ae-epochs" in r["note"]
    with pytest.raises(KernelAtlasError, match="ae must be one of"):
        analyze(["mediapipe/hand_recrop"], tmp_path / "x", cfg, ae="banana")


def test_training_is_bit_for_bit_and_writes_loadable_package_data(tmp_path: Path):
    banks = pool_sources(["mediapipe/hand_recrop", "mediapipe/selfie_segmentation"])
    bank = banks[(3, 3)]
    assert [s["name"] for s in bank.sources] == [
        "mediapipe/hand_recrop",
        "mediapipe/selfie_segmentation",
    ]
    assert bank.kernels.shape == (112 + 232, 3, 3)
    assert "fewer than" in eligibility(bank)
    recipe = dict(hidden=16, epochs=2, batch_size=64, seed=0, null_size=2000)
    runs = []
    for i in range(2):
        ae, prov = train_reference(bank, recipe=recipe, command="test")
        out = write_references({(3, 3): (ae, prov)}, {}, tmp_path / f"r{i}",
                               sources=["a", "b"], command="test")  # fmt: skip
        runs.append(out / "ae_3x3")
    for f in ("model.safetensors", "config.json", "provenance.json"):
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f
    back = KernelAutoencoder.load(runs[0], device="cpu")
    assert back.n_train_ == prov["bank"]["trained_on"]
    assert prov["bank"]["sha256"] == PooledBank(3, 3, bank.kernels.copy()).sha256
