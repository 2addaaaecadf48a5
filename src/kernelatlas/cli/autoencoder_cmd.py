"""``kernelatlas autoencoder train``: train and save one autoencoder per kernel size."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

__all__ = ["register", "FEW_STEPS"]

from ..autoencoder.model import FEW_STEPS, optimiser_steps


def _kernel_size(text: str) -> tuple[int, int]:
    """``7`` or ``3x5``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or KHxKW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected K or KHxKW, got {text!r}")


def _no_action(args: argparse.Namespace) -> int:
    from ..errors import KernelAtlasError

    raise KernelAtlasError(
        "kernelatlas autoencoder needs an action: train (see `kernelatlas autoencoder --help`)"
    )


def register(subparsers: Any) -> None:
    """Add ``autoencoder train``."""
    p = subparsers.add_parser(
        "autoencoder", help="the paper's 1-D cosine autoencoders (train: fit and save per size)"
    )
    sub = p.add_subparsers(dest="ae_command", metavar="ACTION")
    t = sub.add_parser(
        "train",
        help="train one autoencoder per kernel size in a bank and save each",
        description="Train one 1-D cosine autoencoder per kernel size present in BANK (or "
        "only --kernel-size) and save each under OUT/ae_KHxKW/ (model.safetensors + "
        "config.json), with its atlas-named latent segments.",
    )
    t.add_argument("bank", metavar="BANK", help="kernel bank directory, or a .npy [N,kh,kw]")
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: new, empty or earlier autoencoders (ae_KHxKW/ are replaced)",
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="write into --out even when it is a non-empty folder kernelatlas did not write "
        "(beside its files: none is overwritten or deleted; the folder stays unmarked)",
    )
    t.add_argument(
        "--kernel-size",
        type=_kernel_size,
        action="append",
        metavar="K",
        help="train only this size, e.g. 7 or 3x5 (repeatable; default: every size in BANK)",
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="training epochs (default 20: a quick look; the shipped references were trained "
        "300 epochs at --batch-size 256)",
    )
    t.add_argument("--batch-size", type=int, default=4096, help="kernels per step (default 4096)")
    t.add_argument("--hidden", type=int, default=128, help="hidden units of the MLPs (default 128)")
    t.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if any)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches")
    t.add_argument("--min-kernels", type=int, default=100, help="skip sizes with fewer kernels")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)
    p.set_defaults(func=_no_action)


def _train(args: argparse.Namespace) -> int:
    from ..outputs import appending

    if args.device is not None:
        from ..checks import check_device

        check_device(args.device)
    with appending(args.out, kind="autoencoders", inputs=[args.bank], force=args.force) as out:
        return _train_into(args, out)


def _ours(folder: Any) -> bool:
    """Whether ``folder`` (an ``ae_KHxKW/`` to be replaced) is absent or kernelatlas's."""
    from ..atomic import read_json, read_marker
    from ..autoencoder.model import CONFIG_FILE, FORMAT

    if not folder.exists() and not folder.is_symlink():
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not any(folder.iterdir()):  # empty (a save that failed midway): nothing to lose
        return True
    if (read_marker(folder) or {}).get("kind") == "autoencoder":
        return True
    try:  # saved by kernelatlas 0.1.0 (no marker); a FIFO or device there is refused
        return read_json(folder / CONFIG_FILE, 64 * 2**20).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _train_into(args: argparse.Namespace, out: Any) -> int:
    from ..atomic import write_marker
    from ..autoencoder import KernelAutoencoder
    from ..autoencoder._data import bank_sizes, kernels_from
    from ..errors import KernelAtlasError

    is_array = str(args.bank).endswith(".npy")
    if args.kernel_size:
        sizes = list(dict.fromkeys(args.kernel_size))
    elif is_array:
        arr = kernels_from(args.bank)
        sizes = [tuple(arr.shape[1:])]
    else:
        sizes = bank_sizes(args.bank)
    if not sizes:
        raise KernelAtlasError(f"{args.bank} holds no kernels: harvest some sources into it")
    for kh, kw in sizes:  # before any training: never over a folder kernelatlas did not write
        if not _ours(out / f"ae_{kh}x{kw}"):
            raise KernelAtlasError(
                f"--out {args.out} holds ae_{kh}x{kw}, which kernelatlas did not write and "
                "would overwrite: move it out, or choose another --out"
            )
    rows = []
    for kh, kw in sizes:
        kernels = kernels_from(args.bank, (kh, kw))
        if kernels.shape[0] < args.min_kernels:
            print(f"skip {kh}x{kw}: {kernels.shape[0]} kernels < --min-kernels {args.min_kernels}")
            continue
        steps = optimiser_steps(kernels.shape[0], args.batch_size, args.epochs)
        if 0 < steps < FEW_STEPS:
            warnings.warn(
                f"autoencoder {kh}x{kw}: only {steps} optimiser steps ({args.epochs} epochs of "
                f"{kernels.shape[0]:,} kernels at --batch-size {args.batch_size}): too few for "
                "the curve to reach every family (the shipped references took about 55,000: "
                "docs/autoencoder.md); raise --epochs or lower --batch-size",
                stacklevel=1,
            )
        ae = KernelAutoencoder(
            (kh, kw),
            hidden=args.hidden,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            progress=not args.quiet,
        ).fit(kernels)
        target = ae.save(out / f"ae_{kh}x{kw}")
        write_marker(target, "autoencoder")
        cov = ae.coverage(kernels)
        seg = ae.segments_
        named = seg[seg["mass"] > 0.01]
        rows.append(
            (
                f"{kh}x{kw}",
                kernels.shape[0],
                f"{ae.threshold_:.3f} ({ae.threshold_rule_})",
                f"{cov:.1%}",
                f"{ae.null_coverage_:.1%}",
                ", ".join(dict.fromkeys(named["label"])),
                str(target),
            )
        )
    if not rows:
        raise KernelAtlasError("no kernel size had enough kernels: lower --min-kernels")
    head = ("size", "kernels", "threshold", "coverage", "null", "segments", "saved")
    width = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, width, strict=True)).rstrip())
    return 0
