"""``kernelatlas sources | harvest | fetch``: the harvest stage's commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import one_line

__all__ = ["register", "expand_sources", "report_status", "FOLD_BN_HELP", "SOURCE_HELP"]

#: One meaning of --fold-bn for `harvest` and `analyze`.
FOLD_BN_HELP = (
    "multiply each kernel by the scale of the batch norm that follows it; needs the "
    "architecture (timm:, registry sources with one, pickled models, TorchScript, ONNX; "
    "TFLite kernels come folded), other formats are refused. Folded kernels are kept apart in a bank (key '+fold_bn')"
)
SOURCE_HELP = (
    "registry name or pattern ('mediapipe/*'), timm:NAME[@init], a model file or a file glob "
    "('models/*.onnx')"
)


def register(subparsers: Any) -> None:
    """Add the ``sources``, ``harvest`` and ``fetch`` sub-commands."""
    p = subparsers.add_parser(
        "sources", help="list the registered sources, their provenance and kernel counts"
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'mediapipe/*'")
    p.add_argument("-v", "--verbose", action="store_true", help="show package, licence, paper")
    p.set_defaults(func=_sources)

    p = subparsers.add_parser(
        "harvest", help="harvest depthwise kernels of sources into a kernel bank"
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument(
        "--out",
        required=True,
        metavar="BANK",
        help="bank folder: new, empty or an earlier bank (sources already in it with the same "
        "content are reused, changed files are harvested again)",
    )
    p.add_argument("--fold-bn", action="store_true", help=FOLD_BN_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_harvest)

    p = subparsers.add_parser("formats", help="list the weight formats kernelatlas reads")
    p.set_defaults(func=_formats)

    p = subparsers.add_parser("fetch", help="download registered sources into the cache")
    p.add_argument("names", nargs="*", metavar="NAME", help="registry names (or wildcards)")
    p.add_argument("--all", action="store_true", help="every registered source")
    p.add_argument("--quiet", action="store_true", help="print nothing when all is cached")
    p.set_defaults(func=_fetch)


def _fmt_counts(counts: dict[tuple[int, int], tuple[int, int]]) -> str:
    """``3x3: 7 layers, 2,624 kernels; 5x5: ...`` (whole words: "k" read as thousands)."""
    return "; ".join(
        f"{kh}x{kw}: {n_l} layer{'s' * (n_l != 1)}, {n_k:,} kernel{'s' * (n_k != 1)}"
        for (kh, kw), (n_l, n_k) in counts.items()
    )


def _formats(args: argparse.Namespace) -> int:
    from ..harvest.formats import list_formats

    specs = list_formats()
    rows = [
        (s.name, " ".join(s.extensions), "yes" if s.can_fold_bn else "no", s.extra or "-",
         s.description)
        for s in specs
    ]  # fmt: skip
    head = ("format", "extensions", "fold-bn", "extra", "what")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + r[4])
    return 0


def _sources(args: argparse.Namespace) -> int:
    from ..errors import KernelAtlasError
    from ..harvest.cache import cache_dir, is_cached
    from ..harvest.formats import list_formats
    from ..harvest.zoo import did_you_mean, get_source, list_sources

    names = list_sources(args.pattern)
    if not names:
        raise KernelAtlasError(
            f"no registered source matches {args.pattern!r}{did_you_mean(args.pattern)} "
            "(`kernelatlas sources` lists them all)"
        )
    width = max(len(n) for n in [*names, "source"])
    print(f"{'source':<{width}}  {'format':<10} {'cache':<10}  depthwise kernels per size")
    print(f"{'-' * width}  {'-' * 10} {'-' * 10}  {'-' * 26}")
    for name in names:
        info = get_source(name)
        state = "cached" if is_cached(info) else "not cached"
        counts = _fmt_counts(info.expected_counts) if is_cached(info) else "(fetch to use)"
        print(f"{name:<{width}}  {info.format:<10} {state:<10}  {counts}")
        if args.verbose:
            print(f"{'':<{width}}  model: {info.model}; {info.paper}")
            print(f"{'':<{width}}  pip: {info.package} ({info.member}); licence: {info.licence}")
    suffixes = "/".join(e for f in list_formats() if f.name != "tfjs" for e in f.extensions)
    print(
        f"\ncache: {cache_dir()}  (also: timm:NAME, timm:NAME?file=PATH, timm:NAME@init, "
        f"a path to a {suffixes} file, or a TF.js model.json; `kernelatlas formats`)"
    )
    return 0


def expand_sources(sources: list[str]) -> list[str]:
    """Expand wildcards: file globs (``'models/*.onnx'``) and registry patterns
    (``'mediapipe/*'``); existing paths, ``timm:`` names and plain names pass through.

    A glob keeps the files and folders a weight format claims
    (:func:`kernelatlas.harvest.formats.is_weight_file`); the others it matched (a README,
    another framework's files) are left out and named in one note line."""
    import glob
    from pathlib import Path

    from ..errors import KernelAtlasError
    from ..harvest.formats import is_weight_file
    from ..harvest.zoo import did_you_mean, list_sources

    out: list[str] = []
    for s in sources:
        if any(ch in s for ch in "*?[") and not s.startswith("timm:") and not Path(s).exists():
            files = sorted(glob.glob(str(Path(s).expanduser())))
            kept = [f for f in files if is_weight_file(f)]
            left = [
                Path(f).name + ("/" if Path(f).is_dir() else "") for f in files if f not in kept
            ]
            found = kept + list_sources(s)
            if not found:
                raise KernelAtlasError(
                    f"nothing matches {s!r}: no file, and no registered source"
                    f"{did_you_mean(s)} (see `kernelatlas sources`)"
                    if not left
                    else f"nothing kernelatlas reads matches {s!r}: {len(left)} matched, none a "
                    f"weight file or model folder (e.g. {left[0]}; see `kernelatlas formats`)"
                )
            if left:
                shown = ", ".join(left[:5]) + (
                    f" and {len(left) - 5} more" if len(left) > 5 else ""
                )
                print(
                    one_line(
                        f"kernelatlas: note: {s!r}: left out {len(left)} that are not weight "
                        f"files or model folders: {shown}"
                    ),
                    file=sys.stderr,
                )
            out += [f for f in found if f not in out]
        else:
            out.append(s)
    return out


def report_status(counts: Any) -> None:
    """One stderr line per source that was reused or harvested again (``status`` column)."""
    text = {
        "reused": "unchanged since it was harvested (same size and sha256): reused from the bank",
        "changed": "changed since it was harvested, or read by another version of "
        "kernelatlas's readers (or no content hash was recorded): harvested again",
        "bank": "taken from the given bank",
    }
    for source, status in counts.drop_duplicates("source")[["source", "status"]].itertuples(
        index=False
    ):
        if status in text:
            print(one_line(f"kernelatlas: {source}: {text[status]}"), file=sys.stderr)


@contextlib.contextmanager
def skipped_lines() -> Iterator[None]:
    """Print the readers' skipped-layer counts as ``kernelatlas: note: ...`` lines when
    the block ends; other warnings go on (``cli.main`` prints kernelatlas's, one line each)."""
    import warnings

    from ..harvest.api import SkippedLayersWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedLayersWarning)
            yield
    finally:  # also when the command fails: what was skipped explains the error
        for w in caught:
            if issubclass(w.category, SkippedLayersWarning):
                print(f"kernelatlas: note: {one_line(w.message)}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _harvest(args: argparse.Namespace) -> int:
    from ..harvest import harvest_to_bank
    from ..harvest.api import source_paths
    from ..outputs import appending

    sources = expand_sources(args.sources)
    inputs = [p for s in sources for p in source_paths(s)]
    target = args.out.removeprefix("file://")
    with skipped_lines():
        if "://" in target:  # a bank on an fsspec URL (s3://...): no local folder to check
            counts = harvest_to_bank(sources, target, fold_bn=args.fold_bn, progress=not args.quiet)
        else:
            with appending(target, kind="bank", inputs=inputs) as out:
                counts = harvest_to_bank(
                    sources, out, fold_bn=args.fold_bn, progress=not args.quiet
                )
    report_status(counts)
    from ..report.terminal import format_table

    rows = [
        [str(r.source), str(r.model), f"{r.kh}x{r.kw}", f"{int(r.layers):,}", f"{int(r.kernels):,}",
         str(r.status)]
        for r in counts.itertuples(index=False)
    ]  # fmt: skip
    head = ["source", "model", "size", "layers", "kernels", "status"]
    print(format_table(head, rows, right=[False, False, True, True, True, False]))
    print(f"total: {int(counts['kernels'].sum()):,} kernels -> {args.out}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..errors import KernelAtlasError
    from ..harvest.cache import cached_path, fetch_many
    from ..harvest.zoo import did_you_mean, list_sources

    if args.all and args.names:
        raise KernelAtlasError(
            f"--all fetches every source, so {' '.join(args.names)} would add nothing: drop "
            "the names or --all"
        )
    if args.all:
        names = list_sources()
    else:
        if not args.names:
            raise KernelAtlasError("name sources to fetch, or pass --all")
        names = []
        for pat in args.names:
            found = list_sources(pat)
            if not found:
                raise KernelAtlasError(
                    f"no registered source matches {pat!r}{did_you_mean(pat)} "
                    "(see `kernelatlas sources`)"
                )
            names += [n for n in found if n not in names]
    fetch_many(names, quiet=args.quiet)
    if not args.quiet:
        for n in names:
            print(f"{n}: {cached_path(n)}")
    return 0
