"""`kernelatlas bench-init`: train one architecture per depthwise init scheme, side by side."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _bench_init(args: argparse.Namespace) -> int:
    from .. import train  # noqa: F401  (import errors surface here, before any work)
    from ..errors import KernelAtlasError
    from ..train.bench import preset, run_benchmark

    cfg = preset(args.size)
    changes = {}
    for key in ("datasets", "archs", "schemes"):
        value = getattr(args, key)
        if value is not None:
            if not value:
                raise KernelAtlasError(f"--{key[:-1] if key != 'archs' else 'arch'} is empty")
            changes[key] = value
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if args.amp is not None:
        changes["amp"] = args.amp
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.epochs_scale is not None:
        if args.epochs_scale <= 0:
            raise KernelAtlasError(f"--epochs-scale must be > 0, got {args.epochs_scale}")
        changes["epochs"] = {k: v * args.epochs_scale for k, v in cfg.epochs.items()}
    cfg = replace(cfg, **changes)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    doc = run_benchmark(
        cfg,
        args.out,
        device=args.device,
        data_root=args.data_dir,
        command=shlex.join(["kernelatlas", *sys.argv[1:]]),
        log=None if args.quiet else lambda m: print(m, flush=True),
    )
    if not args.quiet:
        print("\n".join(doc["verdict"]))
        print(f"results: {args.out}/bench-init.json, {args.out}/bench-init.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench-init",
        help="benchmark depthwise init schemes (default, dog, atlas, master-key, covariance)",
        description=(
            "Train the same network once per depthwise init scheme and seed on real data, "
            "with identical data order and hyper-parameters; report steps to reach the "
            "default's final accuracy, final accuracy with its spread, and wall time "
            "(OUT/bench-init.json and OUT/bench-init.png)."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--smoke", dest="size", action="store_const", const="smoke", help="about a minute on CPU"
    )
    size.add_argument(
        "--cpu", dest="size", action="store_const", const="cpu", help="a few minutes on CPU"
    )
    size.add_argument(
        "--full", dest="size", action="store_const", const="full", help="full size, for a GPU"
    )
    p.set_defaults(size="smoke")
    p.add_argument(
        "--dataset", dest="datasets", type=_csv, help="comma list: fashion_mnist,mnist5k"
    )
    p.add_argument("--arch", dest="archs", type=_csv, help="comma list: convnext,mobilenetv2")
    p.add_argument(
        "--schemes",
        type=_csv,
        help="comma list of default,dog,atlas,master_key,master_key_frozen,covariance,"
        "default_frozen (must include default)",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (same for every scheme)")
    p.add_argument("--epochs-scale", type=float, help="multiply the preset's epochs")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast")
    amp.add_argument("--no-amp", dest="amp", action="store_false", help="float32 (default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--data-dir", help="folder with the Fashion-MNIST *-ubyte.gz / mnist_5k.csv.gz files"
    )
    p.add_argument("--quiet", action="store_true", help="no progress log")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_bench_init)
