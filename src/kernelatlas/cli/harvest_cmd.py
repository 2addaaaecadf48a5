"""``kernelatlas sources | harvest | fetch``: the harvest stage's commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


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
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="registry name, timm:NAME[@init], or a path"
    )
    p.add_argument("--out", required=True, metavar="BANK", help="bank directory (created)")
    p.add_argument("--fold-bn", action="store_true", help="fold following batch norms")
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
    return ", ".join(f"{kh}x{kw}: {n_l} L / {n_k:,} k" for (kh, kw), (n_l, n_k) in counts.items())


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
    from ..harvest.zoo import get_source, list_sources

    names = list_sources(args.pattern)
    if not names:
        raise KernelAtlasError(f"no registered source matches {args.pattern!r}")
    width = max(len(n) for n in names)
    for name in names:
        info = get_source(name)
        state = "cached" if is_cached(info) else "not cached"
        counts = _fmt_counts(info.expected_counts) if is_cached(info) else "(fetch to use)"
        print(f"{name:<{width}}  {info.format:<10} {state:<10}  {counts}")
        if args.verbose:
            print(f"{'':<{width}}  model: {info.model}; {info.paper}")
            print(f"{'':<{width}}  pip: {info.package} ({info.member}); licence: {info.licence}")
    print(
        f"\ncache: {cache_dir()}  (also: timm:NAME, timm:NAME?file=PATH, timm:NAME@init, "
        "or a path to .pt/.pth/.bin/.safetensors/.onnx/.tflite/.h5/.keras/.npy/.npz)"
    )
    return 0


def _expand(sources: list[str]) -> list[str]:
    """Expand registry wildcards (``'mediapipe/*'``); paths and names pass through."""
    from pathlib import Path

    from ..errors import KernelAtlasError
    from ..harvest.zoo import list_sources

    out: list[str] = []
    for s in sources:
        if any(ch in s for ch in "*?[") and not s.startswith("timm:") and not Path(s).exists():
            found = list_sources(s)
            if not found:
                raise KernelAtlasError(
                    f"no registered source matches {s!r} (see `kernelatlas sources`)"
                )
            out += found
        else:
            out.append(s)
    return out


def _harvest(args: argparse.Namespace) -> int:
    import warnings

    from ..harvest import harvest_to_bank

    sources = _expand(args.sources)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = harvest_to_bank(sources, args.out, fold_bn=args.fold_bn, progress=not args.quiet)
    from ..harvest.api import SkippedLayersWarning

    for w in caught:  # skipped layers are counted by reason, not a problem
        kind = "skipped" if issubclass(w.category, SkippedLayersWarning) else "warning"
        print(f"kernelatlas: {kind}: {w.message}", file=sys.stderr)
    table = counts.assign(size=counts["kh"].astype(str) + "x" + counts["kw"].astype(str))
    table = table[["source", "model", "size", "layers", "kernels"]]
    print(table.to_string(index=False))
    print(f"total: {int(counts['kernels'].sum()):,} kernels -> {args.out}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..errors import KernelAtlasError
    from ..harvest.cache import cached_path, fetch_many
    from ..harvest.zoo import list_sources

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
                    f"no registered source matches {pat!r} (see `kernelatlas sources`)"
                )
            names += [n for n in found if n not in names]
    fetch_many(names, quiet=args.quiet)
    if not args.quiet:
        for n in names:
            print(f"{n}: {cached_path(n)}")
    return 0
