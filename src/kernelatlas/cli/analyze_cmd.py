"""`kernelatlas analyze` and `kernelatlas compare`."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..null import NULL_KINDS
from ..taxonomy import DEFAULT_NULL_FPR


def _analyze(args: argparse.Namespace) -> int:
    from ..pipeline import METHODS, AnalysisConfig, analyze

    assert args.method in METHODS
    cfg = AnalysisConfig(
        method=args.method,
        fold_bn=args.fold_bn,
        null=args.null,
        null_fpr=args.null_fpr,
        seed=args.seed,
        batch_size=args.batch_size,
        fit=not args.no_fit,
        init_baseline=not args.no_init_baseline,
        ae_epochs=args.ae_epochs,
        device=args.device,
        quiet=args.quiet,
        engine=args.engine,
        scheduler=args.scheduler,
        n_workers=args.workers,
        command=shlex.join(["kernelatlas", *sys.argv[1:]]),
    )
    import warnings

    from ..harvest.api import SkippedLayersWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedLayersWarning)
        res = analyze(args.sources, args.out, cfg)
    for w in caught:  # skipped layers, counted by reason (others go on as warnings)
        if issubclass(w.category, SkippedLayersWarning):
            print(f"kernelatlas: skipped: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        print(_coverage_table(res.summary))
        print(f"report: {(res.out / 'index.html').resolve()}")
    return 0


def _coverage_table(summary: dict) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:5.1f}%"

    head = f"{'model':28s} {'size':>5s} {'kernels':>8s} {'classified':>10s} {'null':>7s} {'init':>7s}  top family"
    lines = [head, "-" * len(head)]
    for m in summary["models"]:
        shares = {
            k: v for k, v in m["family_shares"].items() if k not in ("unclassified", "degenerate")
        }
        top = max(shares, key=lambda k: shares[k] or 0)
        lines.append(
            f"{m['model'][:28]:28s} {m['kh']}x{m['kw']:<3d} {m['kernels']:8d} {pct(m['coverage']):>10s} "
            f"{pct(m.get('null_coverage')):>7s} {pct(m.get('init_coverage')):>7s}  {top} {pct(shares[top])}"
        )
    return "\n".join(lines)


def _compare(args: argparse.Namespace) -> int:
    from ..report.compare import compare

    out = compare(args.runs, args.out, labels=args.labels)
    print(f"report: {(out / 'index.html').resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="harvest, classify and fit kernels; write tables, figures and an HTML report",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="registry name, timm:NAME[@init], or a model file",
    )
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--method", choices=["atlas", "autoencoder", "both"], default="atlas")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold the following batch-norm scale into each kernel",
    )
    p.add_argument(
        "--null",
        choices=NULL_KINDS,
        default="gaussian",
        help="null to calibrate against (default gaussian)",
    )
    p.add_argument(
        "--null-fpr", type=float, default=DEFAULT_NULL_FPR, help="false-positive rate on the null"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--no-fit", action="store_true", help="skip the parametric fits")
    p.add_argument(
        "--no-init-baseline", action="store_true", help="skip the fresh-init coverage baseline"
    )
    p.add_argument("--ae-epochs", type=int, default=None)
    p.add_argument(
        "--device",
        default=None,
        help="torch device for fits/autoencoder (default: cuda if available)",
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
        help="Dask scheduler address (default: start a local cluster)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=None,
        help="workers of the local Dask cluster (default: one per core)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_analyze)

    c = sub.add_parser("compare", help="one report across earlier analyses")
    c.add_argument("runs", nargs="+", metavar="DIR")
    c.add_argument("--out", required=True)
    c.add_argument("--labels", nargs="+", default=None)
    c.set_defaults(func=_compare)
