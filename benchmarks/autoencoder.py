"""Training throughput of KernelAutoencoder (kernels/s) on a million kernels, CPU or GPU.

Usage::

    .venv/bin/python benchmarks/autoencoder.py --device cpu  --n 1000000 [--epochs 1]
    .venv/bin/python benchmarks/autoencoder.py --device cuda --n 1000000 [--epochs 3]

The kernels are iid Gaussian 7x7 (the content does not change the cost of a step). Timed:
``fit`` end to end (normalisation, training with the projection step, the null check on
20,000 kernels; no atlas naming), and ``transform`` (inference). Every timed section ends
after ``torch.cuda.synchronize()`` on a GPU. Writes the figures and the device name to
docs/benchmarks/autoencoder_<device>.json (temp file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _device_name(dev: str) -> str:
    import torch

    if dev.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernelatlas import __version__
    from kernelatlas.autoencoder import KernelAutoencoder
    from kernelatlas.null import gaussian_null

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--n", type=int, default=1_000_000, help="number of kernels")
    ap.add_argument("--kernel-size", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument(
        "--out", default=None, help="default: docs/benchmarks/autoencoder_<device>.json"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/autoencoder.py: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize(torch.device(dev))

    k = args.kernel_size
    x = gaussian_null(args.n, k, seed=0)
    # Warm-up (CUDA context, kernels autotuning) on a small slice, not timed.
    KernelAutoencoder(
        k,
        hidden=args.hidden,
        epochs=1,
        batch_size=args.batch_size,
        device=dev,
        name_spectrum=False,
        null_size=1000,
    ).fit(x[: 4 * args.batch_size])
    sync()
    t0 = time.perf_counter()
    ae = KernelAutoencoder(
        k,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=dev,
        name_spectrum=False,
    ).fit(x)
    sync()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ae.transform(x)
    sync()
    infer_s = time.perf_counter() - t0
    result = {
        "kernelatlas_version": __version__,
        "command": "python benchmarks/autoencoder.py " + " ".join(argv or sys.argv[1:]),
        "device": dev,
        "device_name": _device_name(dev),
        "torch": torch.__version__,
        "n_kernels": args.n,
        "kernel_size": k,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "hidden": args.hidden,
        "fit_seconds": round(fit_s, 3),
        "train_kernels_per_s": round(args.n * args.epochs / fit_s),
        "transform_seconds": round(infer_s, 3),
        "transform_kernels_per_s": round(args.n / infer_s),
        "final_loss": ae.loss_history_[-1],
        "note": "iid Gaussian kernels; fit includes normalisation and the 20k-kernel null check",
    }
    out = Path(args.out or ROOT / "docs" / "benchmarks" / f"autoencoder_{dev.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
