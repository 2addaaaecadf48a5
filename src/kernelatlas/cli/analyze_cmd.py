"""`kernelatlas analyze` and `kernelatlas compare`."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import one_line
from ..null import DEFAULT_BASELINES, DEFAULT_NULL_SIZE, MAX_NULL_SIZE, NULL_KINDS
from ..taxonomy import DEFAULT_NULL_FPR
from .harvest_cmd import FOLD_BN_HELP, SOURCE_HELP, expand_sources, report_status, skipped_lines


def _analyze(args: argparse.Namespace) -> int:
    from ..pipeline import METHODS, AnalysisConfig, analyze

    assert args.method in METHODS
    cfg = AnalysisConfig(
        method=args.method,
        fold_bn=args.fold_bn,
        null=args.null,
        null_fpr=args.null_fpr,
        n_null=args.n_null,
        seed=args.seed,
        batch_size=args.batch_size,
        fit=not args.no_fit,
        init_baseline=not args.no_init_baseline,
        ae=args.ae,
        baselines=None if args.baselines is None else tuple(args.baselines.split(",")),
        ae_epochs=args.ae_epochs,
        device=args.device,
        quiet=args.quiet,
        engine=args.engine,
        scheduler=args.scheduler,
        n_workers=args.workers,
        with_weights=args.with_weights,
        recalibrate=args.recalibrate,
        command=shlex.join(["kernelatlas", *sys.argv[1:]]),
    )
    cfg.validate()  # options first: no source is expanded or read for a bad command line
    with skipped_lines():  # skipped layers, counted by reason
        res = analyze(expand_sources(args.sources), args.out, cfg, force=args.force)
    if not args.quiet and res.harvest is not None:
        report_status(res.harvest)
    # --quiet silences progress only: the caveats, the result and where it is always print.
    for note in res.summary["config"].get("notes", []):
        print(f"kernelatlas: note: {one_line(note)}", file=sys.stderr)
    for r in (res.summary.get("autoencoder") or {}).get("by_size", []):
        if r.get("note"):
            print(f"kernelatlas: note: {one_line(r['note'])}", file=sys.stderr)
    print(_coverage_table(res.summary))
    print(f"report: {res.out / 'index.html'}")
    if not args.quiet:
        print(f"kernelatlas: {timing_line(res.timings)}", file=sys.stderr)
    return 0


def timing_line(timings: dict) -> str:
    """``time 12.3 s (2 threads): calibrate 0.02 s (3x3, 5x5 cached), classify 8.1 s, ...``:
    the wall time, then each stage that took time (seconds summed over threads/workers)."""
    cal = timings.get("calibration", [])
    cached = [f"{c['kh']}x{c['kw']}" for c in cal if c["cached"]]
    parts = []
    for stage, sec in timings.get("stages_s", {}).items():
        note = ""
        if stage == "calibrate" and cal:
            note = f" ({', '.join(cached)} from the cache)" if cached else " (not cached yet)"
        if sec >= 0.005 or note:
            parts.append(f"{stage.replace('_', ' ')} {sec:.2f} s{note}")
    slots = timings.get("slots")
    where = f"{timings.get('engine', '')}, {slots} thread{'s' if slots != 1 else ''}"
    return f"time {timings.get('wall_s', 0.0):.1f} s ({where}): " + ", ".join(parts)


def _coverage_table(summary: dict) -> str:
    from ..report.terminal import coverage_table

    return coverage_table(summary)


def _compare(args: argparse.Namespace) -> int:
    import json

    from ..report.compare import compare

    out = compare(args.runs, args.out, labels=args.labels, force=args.force, strict=args.strict)
    for d in json.loads((out / "comparison.json").read_text())["differences"]:
        print(f"kernelatlas: warning: not comparable: {d} (flagged in the report)", file=sys.stderr)
    print(f"report: {out / 'index.html'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="harvest, classify and fit kernels; write tables, figures and an HTML report",
        description="Harvest the sources (or take a bank folder), calibrate the atlas on a "
        "null per kernel size, classify and fit every kernel, and write kernels.parquet, "
        "summary.json, figures/ and index.html into --out (replaced atomically).",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help=SOURCE_HELP + ", or a bank folder (`kernelatlas harvest --out`)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: new, empty, or an earlier analysis (replaced atomically; its "
        "bank is reused for unchanged sources). Never a folder holding an input",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write --out even when it is a non-empty folder kernelatlas did not write (or "
        "holds a file it did not write): that folder is kept, unchanged, as DIR.previous",
    )
    p.add_argument(
        "--method",
        choices=["atlas", "autoencoder", "both"],
        default="atlas",
        help="atlas: the calibrated classifier; autoencoder: the paper's 1-D cosine "
        "autoencoder; both: each, and their agreement (default atlas)",
    )
    p.add_argument("--fold-bn", action="store_true", help=FOLD_BN_HELP)
    p.add_argument(
        "--null",
        choices=NULL_KINDS,
        default="gaussian",
        help="null to calibrate against: gaussian (iid Gaussian kernels), init (half of the "
        "fresh-init kernels of the same architecture; the other half is held out for the "
        "reported null and init rates), smooth, phase, covariance or covariance_layer "
        "(docs/coverage.md). Default gaussian",
    )
    p.add_argument(
        "--baselines",
        metavar="KIND[,KIND...]",
        default=None,
        help=f"null kinds measured as baselines (default: {','.join(DEFAULT_BASELINES)}; "
        f"also: {','.join(k for k in NULL_KINDS if k not in DEFAULT_BASELINES)}); the "
        "calibrating --null is always one",
    )
    p.add_argument(
        "--null-fpr",
        type=float,
        default=DEFAULT_NULL_FPR,
        metavar="RATE",
        help=f"share of null kernels allowed to be classified, in (0, 1) (default {DEFAULT_NULL_FPR})",
    )
    p.add_argument(
        "--n-null",
        type=int,
        default=DEFAULT_NULL_SIZE,
        metavar="N",
        help=f"null kernels per size to calibrate on, and per kind for each baseline (100 to "
        f"{MAX_NULL_SIZE:,}; default {DEFAULT_NULL_SIZE:,}); time grows with N times the "
        "kernel area",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the null, fits and autoencoder")
    p.add_argument(
        "--batch-size",
        type=int,
        default=65_536,
        metavar="N",
        help="kernels classified at a time; bounds memory (default 65536)",
    )
    p.add_argument("--no-fit", action="store_true", help="skip the parametric fits")
    p.add_argument(
        "--with-weights",
        action="store_true",
        help="copy every kernel's weights into kernels.parquet (default: each row references "
        "its kernel in the run's bank, bank_file and bank_row; see kernelatlas.results)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="calibrate the atlas again even when the user cache holds this calibration "
        "(same size, null, --null-fpr, seed and version), and rewrite the cache entry",
    )
    p.add_argument(
        "--no-init-baseline",
        action="store_true",
        help="skip the fresh-init coverage baseline (not with --null init)",
    )
    p.add_argument(
        "--ae-epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs of per-run autoencoder training (--ae train, or a size without a "
        "reference; only with --method autoencoder or both)",
    )
    p.add_argument(
        "--ae",
        choices=["reference", "train"],
        default="reference",
        help="autoencoder per kernel size: the shipped reference, trained once on every real "
        "model (default; a size without one is trained on this run, as the summary says), or "
        "train one on this run's kernels",
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device for fits and the autoencoder: cpu, cuda, cuda:N (default: cuda if "
        "available); checked before any work",
    )
    p.add_argument(
        "--engine",
        choices=["local", "dask"],
        default="local",
        help="local: one process; dask: harvest and classify on dask.distributed",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Dask scheduler address, [tcp|tls|inproc|ucx|ws|wss://]HOST[:PORT] (default: "
        "start a local cluster); needs --engine dask",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=None,
        help="workers of the local Dask cluster (default: one per core; at most 4 per core); "
        "needs --engine dask",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (the result table and report path still print)",
    )
    p.set_defaults(func=_analyze)

    c = sub.add_parser(
        "compare",
        help="one report across earlier analyses",
        description="One HTML report (coverage, layers, families) across earlier analyses.",
    )
    c.add_argument("runs", nargs="+", metavar="DIR", help="analysis folders (`analyze --out`)")
    c.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: new, empty or an earlier comparison (replaced atomically); never "
        "one of the runs, a folder holding them, or a file",
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="write --out even when it is a non-empty folder kernelatlas did not write (or "
        "holds a file it did not write): that folder is kept, unchanged, as DIR.previous",
    )
    c.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="one name per run (default: folder names)",
    )
    c.add_argument(
        "--strict",
        action="store_true",
        help="refuse runs that differ in null, false-positive rate, method or kernelatlas version "
        "(default: compare them and flag it)",
    )
    c.set_defaults(func=_compare)
