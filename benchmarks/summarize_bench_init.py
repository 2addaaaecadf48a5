"""Summary table, verdict and plot of any ``bench-init.json``, including one cut short.

``kernelatlas bench-init`` rewrites ``OUT/bench-init.json`` after every run but writes
``summary.md`` and ``bench-init.png`` only when every run has finished. This script builds
them from whatever the JSON holds, with the benchmark's own functions
(:func:`kernelatlas.train.bench.summarize`, ``verdict``, ``summary_markdown``,
``plot_benchmark``), and says which runs are missing and where a verdict rests on fewer
than the configured seeds.

Usage::

    .venv/bin/python benchmarks/summarize_bench_init.py OUT/bench-init.json \
        [--md OUT/summary.md] [--png OUT/bench-init.png] [--complete-seeds]

``--complete-seeds`` keeps, per (dataset, arch), only the seeds for which every scheme ran
(a cut run usually ends in the middle of a seed, which leaves schemes with unequal seed
counts). Nothing is written back into the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from kernelatlas.errors import KernelAtlasError
from kernelatlas.train.bench import (
    BENCH_SCHEMES,
    plot_benchmark,
    summarize,
    summary_markdown,
    verdict,
)


def missing_runs(doc: dict[str, Any]) -> list[str]:
    """The runs the JSON's config asks for that the JSON does not hold, one line each."""
    cfg = doc["config"]
    needs_ref = any(BENCH_SCHEMES[s][0] in ("atlas", "covariance") for s in cfg["schemes"])
    have = {(r["dataset"], r["arch"], r["scheme"], r["seed"]) for r in doc["runs"]}
    refs = {(r["dataset"], r["arch"]) for r in doc.get("references", [])}
    out = []
    for d in cfg["datasets"]:
        for a in cfg["archs"]:
            if needs_ref and (d, a) not in refs:
                out.append(f"{d}/{a}: reference run")
            for seed in range(cfg["seeds"]):
                lost = [s for s in cfg["schemes"] if (d, a, s, seed) not in have]
                if len(lost) == len(cfg["schemes"]):
                    out.append(f"{d}/{a} seed {seed}: all schemes")
                elif lost:
                    out.append(f"{d}/{a} seed {seed}: {', '.join(lost)}")
    return out


def complete_seed_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs of the seeds for which every configured scheme ran, per (dataset, arch)."""
    schemes = set(doc["config"]["schemes"])
    seen: dict[tuple[str, str, int], set[str]] = {}
    for r in doc["runs"]:
        seen.setdefault((r["dataset"], r["arch"], r["seed"]), set()).add(r["scheme"])
    return [r for r in doc["runs"] if seen[(r["dataset"], r["arch"], r["seed"])] >= schemes]


def caveats(summary: list[dict[str, Any]], configured_seeds: int) -> list[str]:
    """Where the verdict's seed statistics are thinner than the configuration intended."""
    out = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in summary:
        groups.setdefault((r["dataset"], r["arch"]), []).append(r)
    for (d, a), rows in groups.items():
        counts = sorted({r["seeds"] for r in rows})
        if counts[0] < configured_seeds or len(counts) > 1:
            per = ", ".join(f"{r['scheme']} {r['seeds']}" for r in rows)
            out.append(
                f"{d}/{a}: seeds per scheme ({per}) below the configured {configured_seeds} "
                "or unequal; its spreads and any 'CLEAR WIN' rest on too few seeds to support "
                "a claim (one seed: spread 0)."
            )
    return out


def summary_document(doc: dict[str, Any], *, complete_seeds: bool = False) -> str:
    """The Markdown summary of ``doc``: provenance, missing runs, table, verdict, caveats."""
    runs = complete_seed_runs(doc) if complete_seeds else doc["runs"]
    if not runs:
        raise KernelAtlasError("no finished runs in this bench-init.json: nothing to summarise")
    cfg, env = doc["config"], doc["environment"]
    summ = summarize(runs)
    needs_ref = any(BENCH_SCHEMES[s][0] in ("atlas", "covariance") for s in cfg["schemes"])
    expected = (
        len(cfg["datasets"])
        * len(cfg["archs"])
        * (len(cfg["schemes"]) * cfg["seeds"] + int(needs_ref))
    )
    done = len(doc["runs"]) + len(doc.get("references", []))
    lines = [
        f"# bench-init summary ({cfg['name']})",
        "",
        f"- command: `{doc.get('command', '')}`",
        f"- device: {env['device']} ({env['device_name']}), torch {env['torch']}, "
        f"kernelatlas {doc['kernelatlas_version']}",
        f"- runs in the JSON: {done} of {expected} (references included)"
        + ("" if "summary" in doc else "; the benchmark did not finish"),
        f"- summarised: {'only seeds with every scheme' if complete_seeds else 'every run'} "
        f"({len(runs)} runs)",
        "",
    ]
    for ref in doc.get("references", []):
        lines.append(
            f"- reference {ref['dataset']}/{ref['arch']}: final acc {ref['final_acc']:.4f}, "
            f"atlas coverage {ref['atlas_coverage']:.1%}"
        )
    miss = missing_runs(doc)
    lines += ["", "Missing runs: " + ("; ".join(miss) if miss else "none") + ".", ""]
    lines += [summary_markdown(summ), *verdict(summ)]
    notes = caveats(summ, cfg["seeds"])
    if notes:
        lines += ["", "Caveats:", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path, *, complete_seeds: bool = False) -> Path:
    """``plot_benchmark`` on the summarised runs; the title says how many runs and seeds."""
    runs = complete_seed_runs(doc) if complete_seeds else doc["runs"]
    view = copy.deepcopy(doc)
    view["runs"] = runs
    view["summary"] = summarize(runs)
    counts = sorted({r["seeds"] for r in view["summary"]})
    if "summary" not in doc:
        view["config"]["name"] = f"{doc['config']['name']}, cut short"
    view["config"]["seeds"] = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return plot_benchmark(view, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a bench-init.json (finished or not)")
    ap.add_argument("--md", type=Path, help="summary path (default: summary.md beside the JSON)")
    ap.add_argument("--png", type=Path, help="plot path (default: bench-init.png beside it)")
    ap.add_argument("--complete-seeds", action="store_true", help="only seeds with all schemes")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.json.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {args.json}: {e}") from None
    md = args.md or args.json.with_name("summary.md")
    png = args.png or args.json.with_name("bench-init.png")
    with warnings.catch_warnings():
        # std of a single seed: numpy warns; summarize() already treats it as no spread
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            text = summary_document(doc, complete_seeds=args.complete_seeds)
            plot(doc, png, complete_seeds=args.complete_seeds)
        except KernelAtlasError as e:
            raise SystemExit(f"error: {e}") from None
        except KeyError as e:
            raise SystemExit(f"error: {args.json} is not a bench-init.json (no {e})") from None
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
