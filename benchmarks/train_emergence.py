"""Emergence of atlas patterns while a ConvNeXt trains on Fashion-MNIST.

Trains timm's ConvNeXt with the convnext_atto shape (``--width 1 --depth 1``: exactly
``timm.create_model("convnext_atto", in_chans=1, num_classes=10)``; the default is a
half-width, half-depth version for a CPU) from scratch on Fashion-MNIST at 64 px, records
the atlas coverage of every depthwise layer with :class:`kernelatlas.train.CoverageTracker`,
and saves state_dict checkpoints at log-spaced steps (step 0 included) for later analysis.
It trains with kernelatlas's one training loop (:func:`kernelatlas.train.train_model`, the
loop of ``bench-train``); ``--init`` is any registered scheme (``kernelatlas schemes``).

Outputs under ``--out``: ``checkpoints/step_XXXXXX.pt`` (``torch.save(state_dict)``; load
with ``torch.load(path, weights_only=True)`` into the model described in
``emergence.json["model"]``), ``emergence.json`` (coverage history, test accuracy at each
checkpoint, the exact command) and ``emergence.png`` (coverage per layer vs step, and the
family shares).

Example (CPU, a few minutes):
    .venv/bin/python benchmarks/train_emergence.py --out /tmp/emergence
GPU, the real atto shape:
    .venv/bin/python benchmarks/train_emergence.py --out runs/em --device cuda \
        --width 1 --depth 1 --steps 3000 --batch-size 256 --n-train 0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kernelatlas import __version__
from kernelatlas.train import (
    CoverageTracker,
    LoopConfig,
    init_depthwise_,
    list_schemes,
    plot_coverage,
    train_model,
)
from kernelatlas.train.data import load_dataset
from kernelatlas.train.models import build_model


def checkpoint_steps(total: int, n: int) -> list[int]:
    """``n`` roughly log-spaced steps in [0, total], always with 0 and ``total``."""
    if n <= 2:
        return sorted({0, total})
    inner = np.geomspace(1, total, n - 1).round().astype(int)
    return sorted({0, *inner.tolist(), total})


def _save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=12800, help="0: all 60,000 images")
    p.add_argument("--n-test", type=int, default=2000, help="0: all 10,000 images")
    p.add_argument("--every", type=int, default=20, help="coverage every N steps")
    p.add_argument("--checkpoints", type=int, default=6, help="number of checkpoints")
    p.add_argument(
        "--init", default="default", choices=list_schemes(), help="scheme (default: timm's init)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out: Path = args.out
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)

    data = load_dataset(
        "fashion_mnist",
        n_train=args.n_train or None,
        n_test=args.n_test or None,
        seed=args.seed,
        root=args.data_dir,
    ).to(dev)
    model_spec = {
        "builder": "kernelatlas.train.models.build_model",
        "arch": "convnext",
        "num_classes": data.num_classes,
        "image_size": args.image_size,
        "width": args.width,
        "depth": args.depth,
    }
    model = build_model(
        "convnext",
        data.num_classes,
        image_size=args.image_size,
        width=args.width,
        depth=args.depth,
        seed=args.seed,
    )
    if args.init != "default":
        init_depthwise_(model, args.init, seed=args.seed, total_steps=args.steps)
    model.to(dev)
    tracker = CoverageTracker(model, every=args.every)
    ckpts = checkpoint_steps(args.steps, args.checkpoints)
    cfg = LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        image_size=args.image_size,
    )

    def save(step: int, m: torch.nn.Module) -> None:
        if step in ckpts:
            path = out / "checkpoints" / f"step_{step:06d}.pt"
            _save({k: v.detach().cpu() for k, v in m.state_dict().items()}, path)

    started = time.perf_counter()
    res = train_model(
        model, data, cfg, seed=args.seed, tracker=tracker, eval_steps=ckpts, on_step=save
    )
    saved = []
    for point in res.curve:
        path = out / "checkpoints" / f"step_{point['step']:06d}.pt"
        saved.append(
            {
                "step": point["step"],
                "path": str(path.relative_to(out)),
                "test_acc": point["accuracy"],
            }
        )
        print(f"step {point['step']}: test acc {point['accuracy']:.4f}, checkpoint {path.name}")
    n, bs = len(data.y_train), args.batch_size
    hist = tracker.history
    doc = {
        "kernelatlas_version": __version__,
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "dataset": "fashion_mnist",
        "n_train": n,
        "model": model_spec,
        "init": args.init,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": bs,
        "lr": args.lr,
        "device": str(dev),
        "wall_time_s": time.perf_counter() - started,
        "checkpoints": saved,
        "history": hist.to_dict(orient="records"),
    }
    tmp = out / ".emergence.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "emergence.json")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    plot_coverage(hist, axes[0])
    axes[0].set_title("atlas coverage per depthwise layer")
    plot_coverage(hist, axes[1], value="share_center")
    axes[1].set_title("centre-surround share")
    plot_coverage(hist, axes[2], value="share_first_derivative")
    axes[2].set_title("first-derivative share")
    fig.suptitle(
        f"Emergence: ConvNeXt (width {args.width}, depth {args.depth}) on Fashion-MNIST, "
        f"{args.steps} steps - kernelatlas {__version__}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / ".emergence.tmp.png", dpi=110)
    plt.close(fig)
    os.replace(out / ".emergence.tmp.png", out / "emergence.png")
    final = hist[hist["step"] == hist["step"].max()]
    cov = float((final["coverage"] * final["n_kernels"]).sum() / final["n_kernels"].sum())
    print(f"final coverage {cov:.3f}; wrote {out}/emergence.json, emergence.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
