"""bench-train / bench-init end to end on real Fashion-MNIST (tiny, CPU): the JSON schema,
a verdict the JSON reproduces, resume, shards, the CLI, and the configuration checks."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import jsonschema
import pytest

from kernelatlas.cli import main
from kernelatlas.errors import KernelAtlasError
from kernelatlas.train.bench import (
    _applicable,
    finalize,
    json_schema,
    load_document,
    merge_documents,
    plan_settings,
    run_benchmark,
)
from kernelatlas.train.config import ArchConfig, BenchConfig, parse_regime, preset, regime_label
from kernelatlas.train.data import FASHION_MNIST_DIR

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make system installs it)",
)


def _tiny(**kw) -> BenchConfig:
    base = dict(
        name="tiny",
        datasets=("fashion_mnist",),
        regimes=(256,),
        archs=("convnext",),
        arch_configs={"convnext": ArchConfig(64, 0.2, 0.25)},
        schemes=("default", "structured"),
        seeds=2,
        steps=8,
        eval_every=4,
        batch_size=32,
        n_test=64,
        eval_batch_size=64,
    )
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory, one_torch_thread):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    out = tmp_path_factory.mktemp("bt")
    doc = run_benchmark(_tiny(), out, log=None)
    return out, doc


@needs_fashion
def test_tiny_benchmark_writes_the_schema_and_a_reproducible_verdict(tiny_doc):
    out, doc = tiny_doc
    saved = json.loads((out / "bench-train.json").read_text())
    jsonschema.validate(saved, json_schema())
    assert saved["complete"] and len(saved["runs"]) == 4
    for r in saved["runs"]:
        assert (r["dataset"], r["n_train"], r["arch"], r["regime"]) == (
            "fashion_mnist",
            256,
            "convnext",
            "256",
        )
        assert [p["step"] for p in r["curve"]] == [0, 4, 8]
        assert r["final_accuracy"] == r["curve"][-1]["accuracy"]
        assert 0.0 <= r["curve"][0]["coverage"] <= 1.0
    structured = [r for r in saved["runs"] if r["scheme"] == "structured"]
    default = [r for r in saved["runs"] if r["scheme"] == "default"]
    assert structured[0]["curve"][0]["coverage"] == 1.0  # DoG start, in the atlas
    assert structured[0]["trainable_params"] < default[0]["trainable_params"]
    # the verdict is computed from the runs: recomputing it from the saved curves gives it back
    stripped = copy.deepcopy(saved)
    for r in stripped["runs"]:
        r.update(steps_to_target=None, seconds_to_target=None, target=None)
    stripped.pop("summary"), stripped.pop("verdict")
    assert json.loads(json.dumps(finalize(stripped))) == saved
    md = (out / "bench-train.md").read_text()
    assert "### fashion_mnist / 256 (256 images) / convnext" in md and saved["rule"] in md
    assert (out / "bench-train.png").stat().st_size > 10_000
    assert (out / "bench-train-coverage.png").stat().st_size > 10_000


@needs_fashion
def test_resume_shards_and_merge(tiny_doc, tmp_path, one_torch_thread):
    out, full = tiny_doc
    with pytest.raises(KernelAtlasError, match="pass --resume"):
        run_benchmark(_tiny(), out, log=None)
    again = run_benchmark(_tiny(), out, resume=True, write_report=False, log=None)
    assert again["runs"] == full["runs"]  # nothing left to run
    with pytest.raises(KernelAtlasError, match="different configuration.*seeds 2 there, 3 here"):
        run_benchmark(_tiny(seeds=3), out, resume=True, log=None)  # says what differs
    # shards of (setting, seed) units, merged, give the same curves as one process
    docs = [
        run_benchmark(_tiny(), tmp_path / str(k), shard=(k, 2), write_report=False, log=None)
        for k in range(2)
    ]
    assert [len(d["runs"]) for d in docs] == [2, 2]
    merged = merge_documents(docs)

    def curves(d):
        return [
            (r["scheme"], r["seed"], [(p["step"], p["accuracy"], p["loss"]) for p in r["curve"]])
            for r in d["runs"]
        ]

    assert curves(merged) == curves(full)  # same seed, same run
    with pytest.raises(KernelAtlasError, match="two documents"):
        merge_documents([docs[0], docs[0]])
    # pieces of one grid (another dataset) merge; another budget does not
    piece = copy.deepcopy(docs[1])
    piece["config"]["datasets"] = ["animals"]
    assert merge_documents([docs[0], piece])["config"]["datasets"] == ["fashion_mnist", "animals"]
    piece["config"]["steps"] = 99
    with pytest.raises(KernelAtlasError, match="more than datasets/regimes/archs: steps"):
        merge_documents([docs[0], piece])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "bench-train.png").write_bytes(b"not ours")
    with pytest.raises(KernelAtlasError, match="not a kernelatlas output.*--force"):
        run_benchmark(_tiny(), foreign, log=None)
    with pytest.raises(KernelAtlasError, match="did not write it"):
        run_benchmark(_tiny(), foreign, force=True, log=None)
    assert (foreign / "bench-train.png").read_bytes() == b"not ours"
    (tmp_path / "alien.json").write_text('{"runs": []}')
    with pytest.raises(KernelAtlasError, match="not a kernelatlas.bench-train/1"):
        load_document(tmp_path / "alien.json")


@needs_fashion
def test_cli_bench_train_and_bench_init(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "o"
    args = [
        "--smoke",
        "--arch",
        "convnext",
        "--schemes",
        "default,master_key_frozen",
        "--seeds",
        "1",
        "--steps",
        "6",
        "--regime",
        "1k",
        "--n-test",
        "50",
    ]
    assert main(["bench-train", *args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "faster by the rule" in text
    doc = load_document(out / "bench-train.json")
    assert doc["config"]["name"] == "smoke" and doc["command"].startswith("kernelatlas")
    assert [r["scheme"] for r in doc["runs"]] == ["default", "master_key_frozen"]
    assert doc["config"]["eval_every"] == 1 and doc["config"]["regimes"] == ["1k"]
    out2 = tmp_path / "i"
    rc = main(
        [
            "bench-init",
            "--smoke",
            "--arch",
            "convnext",
            "--seeds",
            "1",
            "--steps",
            "4",
            "--regime",
            "1k",
            "--n-test",
            "50",
            "--no-coverage",
            "--quiet",
            "--out",
            str(out2),
        ]
    )
    assert rc == 0
    doc = load_document(out2 / "bench-init.json")
    assert {r["scheme"] for r in doc["runs"]} == {"default", "dog", "master_key"}
    assert "coverage" not in doc["runs"][0]["curve"][0]
    assert main(["bench-train", "--arch", "resnet", "--out", str(tmp_path / "x")]) == 2
    assert main(["bench-train", "--device", "tpu", "--out", str(tmp_path / "x")]) == 2
    assert main(["schemes", "structured*"]) == 0
    assert capsys.readouterr().out.split()[0] == "structured"


def test_settings_regimes_and_config_errors(tmp_path):
    cfg = preset("cpu")
    settings = plan_settings(cfg)
    assert ("mnist5k", None, "convnext") in settings
    assert ("mnist5k", 5000, "convnext") not in settings  # 5k >= its 4,000 images: 'all'
    assert len(settings) == (3 + 2 + 3) * 2
    assert [regime_label(n) for n in (None, 5000, 1000, 1500)] == ["all", "5k", "1k", "1500"]
    assert [parse_regime(t) for t in ("all", "5k", "1000")] == [None, 5000, 1000]
    ok, skipped = _applicable(cfg, "mobilenetv2")
    assert {s for s, _ in skipped} == {"default_ls", "dog_ls", "master_key_frozen_ls"}
    assert _applicable(cfg, "convnext")[1] == []
    for bad, msg in (
        (dict(schemes=("dog",)), "must include 'default'"),
        (dict(schemes=("default", "he")), "unknown scheme"),
        (dict(eval_every=7), "divide steps"),
        (dict(datasets=("cifar",)), "unknown dataset"),
    ):
        with pytest.raises(KernelAtlasError, match=msg):
            run_benchmark(replace(cfg, **bad), tmp_path, log=None)
    for bad, msg in (  # a scheme listed twice ran twice on seed 0, counted as 2 seeds
        (dict(schemes=("default", "dog", "default", "dog")), "'default', 'dog' listed more"),
        (dict(archs=("convnext", "convnext")), "arch 'convnext' listed more than once"),
    ):
        with pytest.raises(KernelAtlasError, match=msg):
            replace(cfg, **bad).validate()
    for bad, msg in (  # a misspelt name gets the close ones
        (
            dict(schemes=("default", "strucutred")),
            r"\); did you mean structured or structured_njet\?$",
        ),
        (dict(datasets=("mnsit5k",)), r"\); did you mean mnist5k\?$"),
        (dict(archs=("convnxt",)), r"\); did you mean convnext\?$"),
    ):
        with pytest.raises(KernelAtlasError, match=msg):
            replace(cfg, **bad).validate()
    with pytest.raises(KernelAtlasError, match="unknown preset"):
        preset("huge")
    with pytest.raises(KernelAtlasError, match="regime"):
        parse_regime("lots")


def test_an_option_prefix_is_refused_not_expanded(tmp_path, capsys):
    """argparse read ``--seed 3`` as ``--seeds 3`` (three seeds, not seed 3) and ran them;
    now a prefix is one line naming the option it abbreviates, before any work."""
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main(["bench-train", "--seed", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "--seed 3; did you mean --seeds?" in err and not out.exists()
    # a nested command's options are the ones named (it named `autoencoder`'s --help)
    with pytest.raises(SystemExit) as exc:
        main(["autoencoder", "train", str(tmp_path), "--out", str(out), "--ep", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "did you mean --epochs?" in err and "autoencoder train --help" in err


def test_bench_init_refuses_a_scheme_that_is_not_an_initialiser(tmp_path, capsys):
    """``bench-init --schemes default,structured`` ran a training scheme in a comparison of
    initial kernels without a word; now it is one line naming bench-train, before any work."""
    out = tmp_path / "o"
    assert main(["bench-init", "--schemes", "default,structured", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'structured' changes training beyond the initial kernels" in err
    assert "bench-train" in err and err.count("\n") == 1 and not out.exists()
