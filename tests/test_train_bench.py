"""bench-init: the metrics on known curves, and a tiny real run end to end (CPU)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kernelatlas.cli import main
from kernelatlas.errors import KernelAtlasError
from kernelatlas.train.bench import ArchConfig, BenchConfig, preset, run_benchmark, summarize
from kernelatlas.train.data import FASHION_MNIST_DIR

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (make system installs it)",
)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine oversubscription costs far more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(scheme, seed, curve, total=100):
    return {
        "dataset": "d",
        "arch": "a",
        "scheme": scheme,
        "seed": seed,
        "total_steps": total,
        "eval_every": 10,
        "curve": curve,
        "final_acc": curve[-1][1],
        "train_time_s": 1.0,
    }


def test_summary_metrics_on_known_curves():
    steps = list(range(10, 101, 10))
    slow = [[s, 0.5 + 0.004 * s] for s in steps]  # reaches 0.9 only at step 100
    fast = [[s, min(0.95, 0.5 + 0.008 * s)] for s in steps]  # reaches 0.9 at step 50
    never = [[s, 0.6] for s in steps]
    runs = [_run("default", i, slow) for i in range(3)]
    runs += [_run("dog", i, fast) for i in range(3)]
    runs += [_run("master_key", i, never) for i in range(3)]
    rows = {r["scheme"]: r for r in summarize(runs)}
    assert rows["default"]["target"] == pytest.approx(0.9)
    assert rows["default"]["steps_to_target"] == [100, 100, 100]
    assert rows["dog"]["steps_to_target"] == [50, 50, 50]
    assert rows["dog"]["speedup"] == pytest.approx(2.0)
    assert rows["dog"]["clear_win"]
    assert rows["master_key"]["reached"] == 0
    assert rows["master_key"]["steps_to_target_mean"] == 110  # censored at total + eval_every
    assert not rows["master_key"]["clear_win"]
    # a gain inside the seed spread is not a win
    noisy = [_run("default", i, slow) for i in range(3)]
    noisy += [_run("dog", 0, fast), _run("dog", 1, never), _run("dog", 2, fast)]
    row = {r["scheme"]: r for r in summarize(noisy)}["dog"]
    assert row["speedup"] > 1.2 and not row["clear_win"]
    # too few seeds: no spread to beat, so no win either
    two = [_run("default", i, slow) for i in range(2)] + [_run("dog", i, fast) for i in range(2)]
    row = {r["scheme"]: r for r in summarize(two)}["dog"]
    assert row["speedup"] == pytest.approx(2.0) and not row["clear_win"]


def _tiny(**kw) -> BenchConfig:
    cfg = preset("smoke")
    return replace(
        cfg,
        archs=("convnext",),
        arch_configs={"convnext": ArchConfig(64, 0.2, 0.34)},
        n_train={"fashion_mnist": 320},
        n_test={"fashion_mnist": 100},
        batch_size=32,
        evals=2,
        eval_batch_size=100,
        **kw,
    )


@needs_fashion
def test_tiny_benchmark_all_schemes(tmp_path, one_thread):
    cfg = _tiny(
        schemes=("default", "dog", "atlas", "covariance", "master_key_frozen", "default_frozen"),
        seeds=1,
    )
    doc = run_benchmark(cfg, tmp_path, log=None)
    saved = json.loads((tmp_path / "bench-init.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(doc["summary"]))
    assert (tmp_path / "bench-init.png").stat().st_size > 10_000
    runs = doc["runs"]
    assert len(runs) == 6 and len(doc["references"]) == 1
    assert {r["total_steps"] for r in runs} == {10}
    default = [r for r in runs if r["scheme"] == "default"]
    frozen = [r for r in runs if r["scheme"] == "master_key_frozen"]
    assert frozen[0]["trainable_params"] < default[0]["trainable_params"]
    summary = {r["scheme"]: r for r in doc["summary"]}
    assert set(summary) == set(cfg.schemes)
    assert summary["default"]["speedup"] == pytest.approx(1.0)
    assert doc["verdict"][-1].startswith(("0 scheme", "1 scheme", "2 scheme", "3 scheme"))


@needs_fashion
def test_same_seed_same_run(tmp_path, one_thread):
    cfg = _tiny(schemes=("default",), seeds=1)
    a = run_benchmark(cfg, tmp_path / "a", log=None)["runs"][0]
    b = run_benchmark(cfg, tmp_path / "b", log=None)["runs"][0]
    assert a["curve"] == b["curve"] and a["train_loss"] == b["train_loss"]


@needs_fashion
def test_cli_smoke_subset(tmp_path, capsys, one_thread):
    out = tmp_path / "o"
    args = ["--smoke", "--arch", "convnext", "--schemes", "default,dog", "--epochs-scale", "0.25"]
    rc = main(["bench-init", *args, "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fashion_mnist/convnext/dog" in text
    doc = json.loads((out / "bench-init.json").read_text())
    assert doc["config"]["name"] == "smoke" and doc["command"].startswith("kernelatlas")
    assert [r["scheme"] for r in doc["runs"]] == ["default", "dog"]
    assert doc["runs"][0]["total_steps"] == 10
    assert (out / "summary.md").read_text().startswith("| dataset | arch | scheme |")


def test_config_errors(tmp_path):
    with pytest.raises(KernelAtlasError, match="must include 'default'"):
        run_benchmark(replace(preset("smoke"), schemes=("dog",)), tmp_path, log=None)
    with pytest.raises(KernelAtlasError, match="unknown scheme"):
        run_benchmark(replace(preset("smoke"), schemes=("default", "he")), tmp_path, log=None)
    with pytest.raises(KernelAtlasError, match="unknown preset"):
        preset("huge")
    assert main(["bench-init", "--arch", "resnet", "--out", str(tmp_path)]) == 2
