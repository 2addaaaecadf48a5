"""Summary, verdict and plots of bench-train / bench-init JSONs: shards, cut runs, 0.1.0 files.

``kernelatlas bench-train`` (and ``bench-init``) rewrite ``OUT/<name>.json`` after every run
with the summary and verdict recomputed, but the Markdown and the figures are written only
when every run has finished. This script rebuilds them from whatever the JSON(s) hold,
with the benchmark's own functions (:func:`kernelatlas.train.bench.merge_documents`,
:func:`~kernelatlas.train.bench.finalize`, :mod:`kernelatlas.train.report`):

- several JSONs (the shards of ``benchmarks/gpu_run.sh``, same configuration) are merged;
- the runs the configuration asks for that are missing are listed;
- a kernelatlas 0.1.0 ``bench-init.json`` (before the bench-train schema) is converted:
  its ``[step, accuracy]`` curves get the seconds of each evaluation interpolated from the
  run's total training time (stated in the output), and it is re-judged by today's rule.

Usage::

    .venv/bin/python benchmarks/summarize_bench_init.py IN.json [IN2.json ...] \\
        [--json OUT.json] [--md OUT.md] [--png OUT.png] [--coverage-png OUT.png] [--heading-level 3]

Nothing is written back into the input files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kernelatlas.errors import KernelAtlasError
from kernelatlas.train.bench import SCHEMA, _write_json, finalize, merge_documents, plan_settings
from kernelatlas.train.config import BenchConfig, parse_regime
from kernelatlas.train.report import plot_curves, summary_markdown

V0_NOTE = (
    "converted from a kernelatlas 0.1.0 bench-init.json: no step-0 evaluation, the seconds "
    "of each evaluation interpolated linearly from the run's total training time"
)


def convert_v0(doc: dict[str, Any]) -> dict[str, Any]:
    """A 0.1.0 ``bench-init.json`` in the bench-train schema (curves and runs only)."""
    runs = []
    order = {}
    for r in doc["runs"]:
        key = (r["dataset"], r["n_train"], r["arch"])
        order.setdefault(key, len(order))
        total = float(r["total_steps"])
        per_step = float(r.get("train_time_s", 0.0)) / total
        losses = r.get("train_loss") or [None] * len(r["curve"])
        runs.append(
            {
                "scheme": r["scheme"],
                "lever": "init" if r["scheme"] != "default" else "control",
                "arch": r["arch"],
                "dataset": r["dataset"],
                "regime": str(r["n_train"]),
                "n_train": r["n_train"],
                "n_test": r.get("n_test"),
                "seed": r["seed"],
                "setting_index": order[key],
                "total_steps": r["total_steps"],
                "eval_every": r["eval_every"],
                "trainable_params": r.get("trainable_params", 0),
                "final_accuracy": r["final_acc"],
                "train_seconds": r.get("train_time_s", 0.0),
                "cpu_seconds": r.get("train_time_s", 0.0),
                "eval_seconds": r.get("eval_time_s", 0.0),
                "curve": [
                    {
                        "step": int(step),
                        "accuracy": float(acc),
                        "loss": loss,
                        "seconds": per_step * step,
                        "cpu_seconds": per_step * step,
                    }
                    for (step, acc), loss in zip(r["curve"], losses, strict=True)
                ],
            }
        )
    cfg = dict(doc["config"])
    cfg.setdefault("steps", max(r["total_steps"] for r in doc["runs"]))
    cfg.setdefault("eval_every", doc["runs"][0]["eval_every"])
    cfg.setdefault("n_test", None)
    return {
        "schema": SCHEMA,
        "kernelatlas_version": doc["kernelatlas_version"],
        "command": doc.get("command", ""),
        "config": cfg,
        "shard": None,
        "environment": doc["environment"],
        "rule": "",
        "converted": V0_NOTE,
        "references": doc.get("references", []),
        "skipped": [],
        "runs": runs,
        "complete": "summary" in doc,
    }


def load_any(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KernelAtlasError(f"{path}: cannot read ({exc})") from None
    if doc.get("schema") == SCHEMA:
        return doc
    if isinstance(doc.get("runs"), list) and doc["runs"] and "final_acc" in doc["runs"][0]:
        return convert_v0(doc)
    raise KernelAtlasError(f"{path}: neither a {SCHEMA} document nor a 0.1.0 bench-init.json")


def missing_runs(doc: dict[str, Any]) -> list[str]:
    """The runs the document's configuration asks for that it does not hold."""
    cfg = doc["config"]
    if "converted" in doc:  # 0.1.0 configurations name their sizes differently
        return []
    bc = BenchConfig(
        datasets=tuple(cfg["datasets"]),
        regimes=tuple(parse_regime(r) for r in cfg["regimes"]),
        archs=tuple(cfg["archs"]),
    )
    skipped = {(s["arch"], s["scheme"]) for s in doc.get("skipped", [])}
    have = {(r["dataset"], r["regime"], r["arch"], r["scheme"], r["seed"]) for r in doc["runs"]}
    out = []
    for d, n, a in plan_settings(bc):
        regime = "all" if n is None else next(r for r in cfg["regimes"] if parse_regime(r) == n)
        for seed in range(cfg["seeds"]):
            lost = [
                s
                for s in cfg["schemes"]
                if (a, s) not in skipped and (d, regime, a, s, seed) not in have
            ]
            if lost:
                out.append(f"{d}/{regime}/{a} seed {seed}: {', '.join(lost)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, help="write the merged/summarised document here")
    p.add_argument("--md", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--coverage-png", type=Path)
    p.add_argument("--heading-level", type=int, default=2, help="Markdown level of the title")
    args = p.parse_args(argv)
    try:
        docs = [load_any(path) for path in args.inputs]
        doc = merge_documents(docs) if len(docs) > 1 else finalize(docs[0])
        if "converted" in doc:
            doc["rule"] = doc["verdict"]["rule"]
        lost = missing_runs(doc)
        md = summary_markdown(doc, heading_level=args.heading_level)
        if "converted" in doc:
            md += f"\n({doc['converted']}.)\n"
        if lost:
            md += "\nMissing runs (the run was cut): " + "; ".join(lost) + ".\n"
        if args.json:
            _write_json(args.json, doc)
        if args.md:
            tmp = args.md.with_name(f".{args.md.name}.tmp")
            tmp.write_text(md)
            os.replace(tmp, args.md)
        else:
            print(md)
        if args.png:
            plot_curves(doc, args.png)
        if args.coverage_png:
            plot_curves(doc, args.coverage_png, value="coverage")
    except KernelAtlasError as exc:
        print(f"summarize_bench_init: error: {exc}", file=sys.stderr)
        return 2
    if lost:
        print(f"{len(lost)} (setting, seed) groups incomplete", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
