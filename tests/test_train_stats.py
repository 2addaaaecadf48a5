"""bench-train statistics on known curves: steps/time to target, paired CIs, the rule."""

from __future__ import annotations

import pytest

from kernelatlas.train.report import summary_markdown
from kernelatlas.train.stats import (
    MIN_SEEDS,
    MIN_SPEEDUP,
    annotate_runs,
    paired_bootstrap,
    summarize,
    verdict,
)


def _curve(reach_at: int | None, final: float, *, total: int = 100, every: int = 10, jitter=0.0):
    """Accuracy 0.5 until ``reach_at`` (then ``final``); 1 s of training per step."""
    pts = []
    for step in range(0, total + 1, every):
        acc = final if reach_at is not None and step >= reach_at else 0.5
        pts.append(
            {
                "step": step,
                "accuracy": acc + (jitter if step == total else 0.0),
                "loss": None if step == 0 else 1.0,
                "seconds": float(step),
                "cpu_seconds": 0.5 * step,
                "coverage": step / total,
            }
        )
    return pts


def _run(scheme, seed, curve, *, total=100):
    return {
        "dataset": "d",
        "regime": "1k",
        "n_train": 1000,
        "arch": "a",
        "scheme": scheme,
        "lever": "init",
        "seed": seed,
        "total_steps": total,
        "eval_every": 10,
        "trainable_params": 10,
        "final_accuracy": curve[-1]["accuracy"],
        "train_seconds": curve[-1]["seconds"],
        "cpu_seconds": curve[-1]["cpu_seconds"],
        "curve": curve,
    }


def _rows(runs):
    return {r["scheme"]: r for r in summarize(runs, n_boot=500)}


def test_faster_needs_the_ratio_the_ci_and_every_seed():
    seeds = range(MIN_SEEDS)
    runs = [_run("default", s, _curve(100, 0.9)) for s in seeds]
    runs += [_run("fast", s, _curve(50, 0.9)) for s in seeds]
    runs += [_run("slow", s, _curve(None, 0.6)) for s in seeds]
    runs += [_run("almost", s, _curve(50 if s else None, 0.9)) for s in seeds]
    runs += [_run("mild", s, _curve(90 if s % 2 else 70, 0.9)) for s in seeds]
    rows = _rows(runs)
    assert rows["default"]["target"] == pytest.approx(0.9)
    assert rows["default"]["steps_to_target"] == [100] * MIN_SEEDS
    fast = rows["fast"]
    assert fast["steps_to_target"] == [50] * MIN_SEEDS
    assert fast["speedup"] == pytest.approx(2.0) and fast["speedup_ci"] == [2.0, 2.0]
    assert fast["time_speedup"] == pytest.approx(2.0)
    assert fast["verdict"] == "faster" and fast["time_verdict"] == "faster"
    # never reached: censored at total + eval_every = 110 -> 100/110, and slower
    assert rows["slow"]["speedup"] == pytest.approx(100 / 110)
    assert rows["slow"]["reached"] == 0 and rows["slow"]["verdict"] == "slower"
    # one seed misses: not faster, whatever the ratio says
    assert rows["almost"]["speedup"] > MIN_SPEEDUP and rows["almost"]["verdict"] != "faster"
    # 100 / 78 = 1.28x: its CI excludes 1 but the ratio is below the rule's 1.5x
    mild = rows["mild"]
    assert mild["speedup_ci"][0] > 1.0 and mild["verdict"] == "no difference shown"
    v = verdict(summarize(runs, n_boot=500))
    assert v["faster"] == ["d/1k/a/fast"] and v["slower"] == ["d/1k/a/slow"]
    assert v["closest"]["scheme"] == "fast"
    # coverage rises identically for every scheme here: no rank correlation to compute
    assert v["coverage_link"][0]["spearman"] is None


def test_too_few_seeds_and_pairing_by_seed():
    runs = [_run("default", s, _curve(100, 0.9)) for s in range(3)]
    runs += [_run("fast", s, _curve(50, 0.9)) for s in (2, 0, 1)]  # out of order
    rows = _rows(runs)
    assert rows["fast"]["speedup"] == pytest.approx(2.0)
    assert rows["fast"]["verdict"] == "too few seeds"
    # a seed the default lacks is not paired
    boot = paired_bootstrap(runs[:2], runs[3:], n_boot=100)
    assert boot["seeds"] == 2


def test_target_and_ci_follow_the_default_seeds():
    # default seeds end at 0.88 and 0.92 (target 0.90): seed 0 never reaches its mean
    runs = [_run("default", 0, _curve(40, 0.88)), _run("default", 1, _curve(40, 0.92))]
    runs += [_run("same", s, _curve(40, 0.92)) for s in range(2)]
    targets = annotate_runs(runs)
    assert targets[("d", 1000, "a")] == pytest.approx(0.90)
    assert [r["steps_to_target"] for r in runs] == [None, 40, 40, 40]
    assert runs[1]["seconds_to_target"] == 40.0 and runs[1]["cpu_seconds_to_target"] == 20.0
    boot = paired_bootstrap(runs[:2], runs[2:], n_boot=400, seed=1)
    assert boot["speedup"] == pytest.approx((110 + 40) / 2 / 40)
    # resamples {0,0} and {1,1} move the target to that seed's own final accuracy (1.0x);
    # only the mixed resample keeps the censored seed 0 (1.875x)
    assert boot["speedup_ci"] == pytest.approx([1.0, 1.875])
    assert boot == paired_bootstrap(runs[:2], runs[2:], n_boot=400, seed=1)  # deterministic
    cpu = paired_bootstrap(runs[:2], runs[2:], n_boot=50, time_key="cpu_seconds")
    assert cpu["time_speedup"] == pytest.approx(boot["time_speedup"])


def test_markdown_shows_every_scheme_and_the_rule():
    runs = [_run("default", s, _curve(100, 0.9)) for s in range(MIN_SEEDS)]
    runs += [_run("fast", s, _curve(50, 0.9)) for s in range(MIN_SEEDS)]
    summary = summarize(runs, n_boot=200)
    doc = {
        "config": {
            "name": "t",
            "steps": 100,
            "batch_size": 8,
            "lr": 1e-3,
            "eval_every": 10,
            "n_test": 10,
            "seeds": MIN_SEEDS,
        },
        "environment": {"device": "cpu", "device_name": "x"},
        "kernelatlas_version": "0",
        "rule": "the rule",
        "summary": summary,
        "verdict": verdict(summary),
        "runs": runs,
    }
    md = summary_markdown(doc)
    assert "### d / 1k (1000 images) / a" in md and "the rule" in md
    assert "| fast | init | 50, 50, 50, 50, 50 | 5/5 | 2.00x [2.00, 2.00]" in md
    assert "faster by the rule: d/1k/a/fast" in md
    assert md.startswith("## bench-train `t`")
    # bench-init's page is headed bench-init (it said bench-train)
    assert summary_markdown(doc, name="bench-init").startswith("## bench-init `t`")


def test_the_published_cpu_verdict_is_what_the_runs_give():
    """docs/benchmarks/bench-train-cpu.json: summary and verdict recomputed from its runs."""
    import copy
    import json
    from pathlib import Path

    from kernelatlas.train.bench import finalize

    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "bench-train-cpu.json"
    saved = json.loads(path.read_text())
    again = copy.deepcopy(saved)
    for key in ("summary", "verdict"):
        again.pop(key)
    for r in again["runs"]:
        r.update(target=None, steps_to_target=None, seconds_to_target=None)
    assert json.loads(json.dumps(finalize(again))) == saved
    assert len(saved["runs"]) == 520 and saved["verdict"]["rule"] == saved["rule"]
