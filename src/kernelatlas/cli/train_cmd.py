"""`kernelatlas bench-train`, `bench-init` and `schemes`: the training levers, measured."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 0/4), got {value!r}") from None
    return k, n


def _bench(args: argparse.Namespace, *, name: str) -> int:
    from .. import train  # noqa: F401  (import errors surface here, before any work)
    from ..errors import KernelAtlasError
    from ..train.config import INIT_SCHEMES, parse_regime, preset

    cfg = preset(args.size)
    changes: dict[str, object] = {}
    if name == "bench-init":
        changes["schemes"] = (
            INIT_SCHEMES if args.size != "smoke" else ("default", "dog", "master_key")
        )
    for key, flag in (("datasets", "dataset"), ("archs", "arch"), ("schemes", "schemes")):
        value = getattr(args, key)
        if value is not None:
            if not value:
                raise KernelAtlasError(f"--{flag} is empty")
            changes[key] = value
    other = [s for s in changes["schemes"] if s not in INIT_SCHEMES] if name == "bench-init" else []
    if other:  # bench-init's comparison is of step-0 kernels only
        raise KernelAtlasError(
            f"bench-init compares initialisers ({', '.join(INIT_SCHEMES)}); "
            f"{', '.join(map(repr, other))} changes training beyond the initial kernels: "
            "run it with bench-train"
        )
    if args.regimes is not None:
        if not args.regimes:
            raise KernelAtlasError("--regime is empty")
        changes["regimes"] = tuple(parse_regime(r) for r in args.regimes)
    for key in ("seeds", "amp", "lr", "steps", "eval_every", "n_test", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    if args.no_coverage:
        changes["coverage"] = False
    if "steps" in changes and "eval_every" not in changes:
        changes["eval_every"] = max(1, int(changes["steps"]) // 10)  # ten evaluations
    cfg = replace(cfg, **changes)
    if args.threads < 0:
        raise KernelAtlasError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..checks import check_device
    from ..train.bench import run_benchmark

    check_device(args.device)
    doc = run_benchmark(  # checks --out, then holds its lock (one run per folder)
        cfg,
        args.out,
        device=args.device,
        data_root=args.data_dir,
        command=shlex.join(["kernelatlas", *sys.argv[1:]]),
        name=name,
        shard=args.shard,
        resume=args.resume,
        force=args.force,
        log=None if args.quiet else lambda m: print(m, flush=True),
    )
    if not args.quiet:
        print("\n".join(doc["verdict"]["lines"][-2:]))
        print(f"results: {Path(args.out) / name}.json, {name}.md, {name}.png")
    return 0


def _schemes(args: argparse.Namespace) -> int:
    from ..errors import KernelAtlasError, did_you_mean
    from ..train.schemes import get_scheme, list_schemes

    names = list_schemes(args.pattern)
    if not names:
        hint = did_you_mean(args.pattern, list_schemes(), n=3, sep=", ")
        raise KernelAtlasError(
            f"no registered scheme matches {args.pattern!r}{hint} (`kernelatlas schemes` "
            "lists them all)"
        )
    for n in names:
        info = get_scheme(n)
        opts = f" [options: {', '.join(info.options)}]" if info.options else ""
        print(f"{n:22s} {info.lever:9s} {info.summary}{opts}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser, *, name: str) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--smoke",
        dest="size",
        action="store_const",
        const="smoke",
        help="one to one and a half minutes on CPU (the default)",
    )
    size.add_argument(
        "--cpu",
        dest="size",
        action="store_const",
        const="cpu",
        help="the CPU grid of docs/benchmarks/bench-train.md (about an hour of CPU)",
    )
    size.add_argument(
        "--gpu",
        "--full",
        dest="size",
        action="store_const",
        const="gpu",
        help="wider networks, longer, every lever: for one GPU (benchmarks/gpu_run.sh)",
    )
    p.set_defaults(size="smoke")
    p.add_argument(
        "--dataset", dest="datasets", type=_csv, help="comma list: fashion_mnist,mnist5k,animals"
    )
    p.add_argument(
        "--regime",
        dest="regimes",
        type=_csv,
        help="comma list of training-set sizes: all,5k,1k (or numbers)",
    )
    p.add_argument("--arch", dest="archs", type=_csv, help="comma list: convnext,mobilenetv2")
    p.add_argument(
        "--schemes",
        type=_csv,
        help="comma list of registered schemes (`kernelatlas schemes`); must include default",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    p.add_argument("--steps", type=int, help="training steps per run (ten evaluations)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (must divide --steps)")
    p.add_argument("--batch-size", type=int, help="training batch size (same for every scheme)")
    p.add_argument("--n-test", type=int, help="test images per evaluation")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (same for every scheme)")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast")
    amp.add_argument("--no-amp", dest="amp", action="store_false", help="float32 (default)")
    p.add_argument("--no-coverage", action="store_true", help="do not track atlas coverage")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared CPU, more threads cost more than they "
        "give; 0: torch's default)",
    )
    p.add_argument("--shard", type=_shard, help="K/N: run every N-th (setting, seed) from K")
    p.add_argument("--resume", action="store_true", help=f"continue OUT/{name}.json")
    p.add_argument(
        "--data-dir",
        help="folder with the dataset files (Fashion-MNIST IDX, mnist_5k.csv.gz, "
        "animal_*_version_3.gz)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress log")
    p.add_argument(
        "--out",
        required=True,
        help=f"output folder: new, empty or an earlier {name} output (--resume continues it)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into --out even when it is a non-empty folder kernelatlas did not write "
        "(beside its files: none is overwritten or deleted; the folder stays unmarked)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench-train",
        help="benchmark the training levers (structured kernels, master keys, atlas prior...)",
        description=(
            "Train the same network once per registered scheme and seed on real data "
            "(datasets x training-set sizes x architectures), with identical data order and "
            "hyper-parameters; report steps and time to the default's final accuracy with "
            "bootstrap CIs, final accuracy, atlas coverage, and the verdict of a stated rule "
            "(OUT/bench-train.json, .md, .png, -coverage.png)."
        ),
    )
    _add_bench_args(p, name="bench-train")
    p.set_defaults(func=lambda a: _bench(a, name="bench-train"))

    p = subparsers.add_parser(
        "bench-init",
        help="benchmark depthwise init schemes only (bench-train with the init schemes)",
        description=(
            "bench-train restricted to the initialisers (default, dog, atlas, master_key, "
            "master_key_frozen, covariance): only the depthwise kernels at step 0 differ "
            "(OUT/bench-init.json, .md, .png)."
        ),
    )
    _add_bench_args(p, name="bench-init")
    p.set_defaults(func=lambda a: _bench(a, name="bench-init"))

    p = subparsers.add_parser(
        "schemes", help="list the registered initialisers and training levers"
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter (default *)")
    p.set_defaults(func=_schemes)
