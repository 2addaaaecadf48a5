"""``bench-init``: does an atlas-informed depthwise initialisation train faster? Measured.

For every (dataset, architecture) the same network is trained once per (scheme, seed) with
identical hyper-parameters; for a given seed every scheme sees the same default weights
outside the depthwise layers, the same data order and the same schedule. Only the depthwise
kernels at step 0 differ.

Metrics
-------
- ``target``: the default scheme's final test accuracy, averaged over seeds.
- ``steps_to_target``: the first evaluated step at which a run's test accuracy reaches the
  target (``None`` when it never does; averages then count it as ``total_steps +
  eval_every``, a conservative bound, and say how many runs reached it).
- ``speedup``: mean steps-to-target of ``default`` / that of the scheme.
- final test accuracy (mean, std, min, max over seeds), accuracy at 1/4 and 1/2 of training,
  training wall time (synchronised on CUDA, evaluations excluded).

The ``atlas`` and ``covariance`` schemes need a reference bank: one extra run of the
default scheme with seed :data:`REFERENCE_SEED` (not one of the benchmark seeds) on the same
data and budget supplies its trained depthwise kernels, per layer for ``covariance`` (as
Trockman et al. take them from a trained model) and pooled per kernel size through the
atlas for ``atlas``. That reference is in-domain; the JSON says so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import KernelAtlasError
from .data import DATASETS, ImageDataset, load_dataset
from .init import depthwise_convs, init_depthwise_
from .models import ARCHS, build_model

__all__ = [
    "BENCH_SCHEMES",
    "REFERENCE_SEED",
    "ArchConfig",
    "BenchConfig",
    "preset",
    "run_benchmark",
    "summarize",
    "summary_markdown",
    "plot_benchmark",
]

# scheme name -> (init scheme or None for the untouched default, freeze)
BENCH_SCHEMES: dict[str, tuple[str | None, bool]] = {
    "default": (None, False),
    "dog": ("dog", False),
    "atlas": ("atlas", False),
    "master_key": ("master_key", False),
    "master_key_frozen": ("master_key", True),
    "covariance": ("covariance", False),
    "default_frozen": ("default", True),
}
DEFAULT_SCHEMES: tuple[str, ...] = tuple(s for s in BENCH_SCHEMES if s != "default_frozen")
REFERENCE_SEED = 1000


@dataclass(frozen=True)
class ArchConfig:
    """How one architecture is sized: input size (images are resized), width, depth."""

    image_size: int = 28
    width: float = 1.0
    depth: float = 1.0


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on (stored in the JSON).

    ``epochs`` and ``n_train`` are per dataset; ``n_train``/``n_test`` ``None`` = all.
    """

    name: str = "custom"
    datasets: tuple[str, ...] = DATASETS
    archs: tuple[str, ...] = tuple(ARCHS)
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    seeds: int = 3
    arch_configs: dict[str, ArchConfig] = field(
        default_factory=lambda: {"convnext": ArchConfig(64), "mobilenetv2": ArchConfig(28)}
    )
    epochs: dict[str, float] = field(default_factory=lambda: {"fashion_mnist": 2.0, "mnist5k": 8.0})
    n_train: dict[str, int | None] = field(default_factory=dict)
    n_test: dict[str, int | None] = field(default_factory=dict)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    evals: int = 16
    eval_batch_size: int = 1000
    amp: bool = False
    label_smoothing: float = 0.0

    def validate(self) -> None:
        for d in self.datasets:
            if d not in DATASETS:
                raise KernelAtlasError(f"unknown dataset {d!r}: choose from {', '.join(DATASETS)}")
            if d not in self.epochs:
                raise KernelAtlasError(f"no epochs set for dataset {d!r}")
        for a in self.archs:
            if a not in ARCHS:
                raise KernelAtlasError(f"unknown arch {a!r}: choose from {', '.join(ARCHS)}")
            if a not in self.arch_configs:
                raise KernelAtlasError(f"no ArchConfig for arch {a!r}")
        for s in self.schemes:
            if s not in BENCH_SCHEMES:
                raise KernelAtlasError(
                    f"unknown scheme {s!r}: choose from {', '.join(BENCH_SCHEMES)}"
                )
        if "default" not in self.schemes:
            raise KernelAtlasError("schemes must include 'default': it sets the target accuracy")
        if self.seeds < 1 or self.batch_size < 1 or self.evals < 1:
            raise KernelAtlasError("seeds, batch_size and evals must be >= 1")


def preset(name: str) -> BenchConfig:
    """The named sizes: ``smoke`` (about a minute on 2 CPU cores), ``cpu`` (a few minutes on
    CPU, smaller networks and subsets) and ``full`` (the whole data and ConvNeXt-atto /
    MobileNetV2 at full width, sized for one GPU in a few minutes)."""
    if name == "smoke":
        return BenchConfig(
            name="smoke",
            datasets=("fashion_mnist",),
            seeds=1,
            arch_configs={
                "convnext": ArchConfig(64, 0.2, 0.34),
                "mobilenetv2": ArchConfig(28, 0.25, 0.34),
            },
            epochs={"fashion_mnist": 1.0, "mnist5k": 1.0},
            n_train={"fashion_mnist": 2560, "mnist5k": 2560},
            n_test={"fashion_mnist": 500, "mnist5k": 500},
            batch_size=64,
            evals=4,
            eval_batch_size=500,
        )
    if name == "cpu":
        return BenchConfig(
            name="cpu",
            arch_configs={
                "convnext": ArchConfig(64, 0.25, 0.34),
                "mobilenetv2": ArchConfig(28, 0.25, 0.34),
            },
            epochs={"fashion_mnist": 2.0, "mnist5k": 4.0},
            n_train={"fashion_mnist": 7680, "mnist5k": None},
            n_test={"fashion_mnist": 1000, "mnist5k": None},
            batch_size=128,
            evals=10,
        )
    if name == "full":
        return BenchConfig(
            name="full",
            epochs={"fashion_mnist": 2.0, "mnist5k": 10.0},
            batch_size=256,
            lr=3e-3,
            evals=20,
            eval_batch_size=2500,
        )
    raise KernelAtlasError(f"unknown preset {name!r}: choose smoke, cpu or full")


# --------------------------------------------------------------------------- training


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resized(ds: ImageDataset, size: int, device: torch.device) -> ImageDataset:
    """The dataset on ``device`` with images resized to ``size`` px (bilinear), once."""
    ds = ds.to(device)
    if ds.image_size == size:
        return ds

    def rs(x: torch.Tensor) -> torch.Tensor:
        parts = [
            F.interpolate(x[i : i + 4096], size=(size, size), mode="bilinear", align_corners=False)
            for i in range(0, len(x), 4096)
        ]
        return torch.cat(parts)

    return replace(ds, x_train=rs(ds.x_train), x_test=rs(ds.x_test))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # norms, biases, layer scales and the frozen-kernel shifts are not decayed
        (no_decay if p.ndim <= 1 or name.endswith(".shift") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, amp: bool
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[i : i + batch_size])
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return float(correct.item()) / len(x)


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def train_one(
    model: nn.Module,
    data: ImageDataset,
    cfg: BenchConfig,
    *,
    seed: int,
    total_steps: int,
    eval_steps: Sequence[int],
) -> dict[str, Any]:
    """Train ``model`` for ``total_steps`` AdamW steps; test accuracy at ``eval_steps``.

    The batch order comes from a CPU generator seeded with ``seed`` (the same on every
    device and for every scheme); each epoch is a fresh permutation, the last partial batch
    is dropped.
    """
    device = data.x_train.device
    model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total_steps, warmup))
    gen = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    per_epoch = n // cfg.batch_size
    if per_epoch < 1:
        raise KernelAtlasError(f"batch_size {cfg.batch_size} exceeds the {n} training images")
    evals = set(eval_steps)
    curve: list[list[float]] = []
    losses: list[float] = []
    loss_sum = torch.zeros((), device=device)
    train_time = eval_time = 0.0
    _sync(device)
    t0 = time.perf_counter()
    perm = torch.empty(0, dtype=torch.long)
    for step in range(1, total_steps + 1):
        j = (step - 1) % per_epoch
        if j == 0:
            perm = torch.randperm(n, generator=gen).to(device)
        idx = perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model(data.x_train[idx])
        loss = F.cross_entropy(
            logits.float(), data.y_train[idx], label_smoothing=cfg.label_smoothing
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        if step in evals:
            _sync(device)
            t1 = time.perf_counter()
            train_time += t1 - t0
            acc = evaluate(
                model, data.x_test, data.y_test, batch_size=cfg.eval_batch_size, amp=cfg.amp
            )
            loss_mean = float(loss_sum.item()) / max(1, step - (curve[-1][0] if curve else 0))
            losses.append(loss_mean)
            loss_sum.zero_()
            curve.append([step, acc])
            _sync(device)
            t0 = time.perf_counter()
            eval_time += t0 - t1
    if not all(math.isfinite(v) for v in losses):
        raise KernelAtlasError("training diverged (non-finite loss): lower --lr")
    return {
        "curve": curve,
        "train_loss": losses,
        "final_acc": curve[-1][1],
        "train_time_s": train_time,
        "eval_time_s": eval_time,
    }


def _depthwise_bank(model: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, conv in depthwise_convs(model):
        w = conv.weight.detach().float().cpu().numpy()
        out[name] = w.reshape(w.shape[0], w.shape[2], w.shape[3])
    return out


def _atlas_reference(bank: dict[str, np.ndarray]):
    """Atlas analysis of a reference bank, pooled per kernel size (columns kh, kw added)."""
    import pandas as pd

    from ..atlas import Atlas

    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for k in bank.values():
        by_size.setdefault(k.shape[1:], []).append(k)
    frames = []
    for (kh, kw), ks in by_size.items():
        df = Atlas(kernel_size=(kh, kw)).fit().predict(np.concatenate(ks))
        frames.append(df.assign(kh=kh, kw=kw))
    return pd.concat(frames, ignore_index=True)


def _coverage(df) -> float:
    from ..taxonomy import coverage

    return coverage(df["classified"], df["family"])


# --------------------------------------------------------------------------- the benchmark


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _config_dict(cfg: BenchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["arch_configs"] = {k: asdict(v) for k, v in cfg.arch_configs.items()}
    return d


def run_benchmark(
    cfg: BenchConfig,
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    data_root: str | os.PathLike[str] | None = None,
    command: str = "",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the benchmark: ``out/bench-init.json`` after every run; at the end the summary,
    ``out/summary.md`` (Markdown table and verdict) and the plot ``out/bench-init.png``.

    Returns the final JSON document (config, environment, runs, summary, verdict).
    """
    cfg.validate()
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KernelAtlasError("--device cuda but CUDA is not available: use --device cpu")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _m: None)
    doc: dict[str, Any] = {
        "kernelatlas_version": __version__,
        "command": command,
        "config": _config_dict(cfg),
        "environment": {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "tf32": dev.type == "cuda",
            "cudnn_benchmark": dev.type == "cuda",
        },
        "reference": (
            f"atlas/covariance references: the depthwise kernels of one default-init run with "
            f"seed {REFERENCE_SEED} on the same training data and budget (in-domain)"
        ),
        "runs": [],
    }
    needs_ref = any(BENCH_SCHEMES[s][0] in ("atlas", "covariance") for s in cfg.schemes)
    n_runs = len(cfg.datasets) * len(cfg.archs) * (len(cfg.schemes) * cfg.seeds + int(needs_ref))
    started = time.perf_counter()
    done = 0
    for dname in cfg.datasets:
        base = load_dataset(
            dname,
            n_train=cfg.n_train.get(dname),
            n_test=cfg.n_test.get(dname),
            root=data_root,
        )
        for arch in cfg.archs:
            ac = cfg.arch_configs[arch]
            data = _resized(base, ac.image_size, dev)
            per_epoch = len(data.y_train) // cfg.batch_size
            total = max(1, int(round(cfg.epochs[dname] * per_epoch)))
            eval_steps = sorted(
                {max(1, round(total * (i + 1) / cfg.evals)) for i in range(cfg.evals)}
            )

            def make(seed: int, data=data, arch=arch, ac=ac) -> nn.Module:
                return build_model(
                    arch,
                    data.num_classes,
                    image_size=ac.image_size,
                    width=ac.width,
                    depth=ac.depth,
                    seed=seed,
                )

            reference: dict[str, Any] = {}
            if needs_ref:
                ref_model = make(REFERENCE_SEED)
                r = train_one(
                    ref_model,
                    data,
                    cfg,
                    seed=REFERENCE_SEED,
                    total_steps=total,
                    eval_steps=eval_steps,
                )
                bank = _depthwise_bank(ref_model)
                reference = {"covariance": bank, "atlas": _atlas_reference(bank)}
                done += 1
                log(
                    f"[{done}/{n_runs}] {dname} {arch} reference (seed {REFERENCE_SEED}): "
                    f"acc {r['final_acc']:.4f}, atlas coverage {_coverage(reference['atlas']):.2f}, "
                    f"{r['train_time_s']:.1f}s"
                )
                doc.setdefault("references", []).append(
                    {
                        "dataset": dname,
                        "arch": arch,
                        "final_acc": r["final_acc"],
                        "atlas_coverage": _coverage(reference["atlas"]),
                        "family_shares": reference["atlas"]["family"]
                        .value_counts(normalize=True)
                        .to_dict(),
                    }
                )
            for seed in range(cfg.seeds):
                for scheme in cfg.schemes:
                    init_scheme, freeze = BENCH_SCHEMES[scheme]
                    model = make(seed)
                    if init_scheme is not None:
                        ref = reference.get(init_scheme)
                        init_depthwise_(model, init_scheme, freeze=freeze, seed=seed, reference=ref)
                    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                    r = train_one(
                        model, data, cfg, seed=seed, total_steps=total, eval_steps=eval_steps
                    )
                    done += 1
                    doc["runs"].append(
                        {
                            "dataset": dname,
                            "arch": arch,
                            "scheme": scheme,
                            "seed": seed,
                            "total_steps": total,
                            "eval_every": eval_steps[0],
                            "n_train": len(data.y_train),
                            "n_test": len(data.y_test),
                            "trainable_params": n_trainable,
                            **r,
                        }
                    )
                    elapsed = time.perf_counter() - started
                    log(
                        f"[{done}/{n_runs}] {dname} {arch} {scheme} seed {seed}: acc "
                        f"{r['final_acc']:.4f}, train {r['train_time_s']:.1f}s, eval "
                        f"{r['eval_time_s']:.1f}s; elapsed {elapsed:.0f}s, eta "
                        f"{elapsed / done * (n_runs - done):.0f}s"
                    )
                    _write_json(out / "bench-init.json", doc)
            del data
    doc["summary"] = summarize(doc["runs"])
    doc["verdict"] = verdict(doc["summary"])
    doc["total_time_s"] = time.perf_counter() - started
    _write_json(out / "bench-init.json", doc)
    tmp = out / ".summary.md.tmp"
    tmp.write_text(summary_markdown(doc["summary"]) + "\n" + "\n".join(doc["verdict"]) + "\n")
    os.replace(tmp, out / "summary.md")
    plot_benchmark(doc, out / "bench-init.png")
    return doc


# --------------------------------------------------------------------------- analysis


def _steps_to(curve: Sequence[Sequence[float]], target: float) -> int | None:
    for step, acc in curve:
        if acc >= target - 1e-12:
            return int(step)
    return None


def _acc_at(curve: Sequence[Sequence[float]], fraction: float, total: int) -> float:
    steps = np.array([c[0] for c in curve])
    i = int(np.argmin(np.abs(steps - fraction * total)))
    return float(curve[i][1])


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, arch, scheme): target, steps-to-target, accuracy, time, speedup."""
    import pandas as pd

    if not runs:
        return []
    df = pd.DataFrame(runs)
    rows = []
    for (dname, arch), g in df.groupby(["dataset", "arch"], sort=False):
        default = g[g["scheme"] == "default"]
        if default.empty:
            continue
        target = float(default["final_acc"].mean())
        total = int(g["total_steps"].iloc[0])
        censor = total + int(g["eval_every"].iloc[0])
        steps = {}
        for scheme, s in g.groupby("scheme", sort=False):
            st = [_steps_to(c, target) for c in s["curve"]]
            steps[scheme] = np.array([censor if v is None else v for v in st], dtype=float)
            acc = s["final_acc"].to_numpy(dtype=float)
            rows.append(
                {
                    "dataset": dname,
                    "arch": arch,
                    "scheme": scheme,
                    "seeds": len(s),
                    "target": target,
                    "total_steps": total,
                    "steps_to_target": st,
                    "reached": int(sum(v is not None for v in st)),
                    "steps_to_target_mean": float(steps[scheme].mean()),
                    "steps_to_target_std": float(steps[scheme].std(ddof=1)) if len(s) > 1 else 0.0,
                    "final_acc_mean": float(acc.mean()),
                    "final_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "final_acc_min": float(acc.min()),
                    "final_acc_max": float(acc.max()),
                    "acc_quarter_mean": float(
                        np.mean([_acc_at(c, 0.25, total) for c in s["curve"]])
                    ),
                    "acc_half_mean": float(np.mean([_acc_at(c, 0.5, total) for c in s["curve"]])),
                    "train_time_s_mean": float(s["train_time_s"].mean()),
                }
            )
        base = steps["default"]
        for row in rows:
            if (row["dataset"], row["arch"]) != (dname, arch):
                continue
            mine = steps[row["scheme"]]
            gain = float(base.mean() - mine.mean())
            spread = float(max(base.std(ddof=1), mine.std(ddof=1))) if len(base) > 1 else 0.0
            row["speedup"] = float(base.mean() / mine.mean())
            row["gain_steps"] = gain
            row["spread_steps"] = spread
            # A spread needs seeds: with fewer than MIN_SEEDS_FOR_WIN on either side a
            # "gain larger than the spread" means nothing, so no win is declared.
            row["clear_win"] = bool(
                row["speedup"] >= 1.2
                and gain > spread
                and row["reached"] == row["seeds"]
                and min(len(base), len(mine)) >= MIN_SEEDS_FOR_WIN
            )
    return rows


#: Seeds each side needs before a speed-up can be called a win.
MIN_SEEDS_FOR_WIN = 3


def verdict(summary: Sequence[dict[str, Any]]) -> list[str]:
    """Plain sentences: which schemes reach the target in fewer steps than default."""
    lines = []
    for r in summary:
        if r["scheme"] == "default":
            continue
        where = f"{r['dataset']}/{r['arch']}/{r['scheme']}"
        lines.append(
            f"{where}: {r['speedup']:.2f}x the default's steps-to-target speed "
            f"({r['steps_to_target_mean']:.0f} vs default, {r['reached']}/{r['seeds']} seeds reached "
            f"{r['target']:.4f}); gain {r['gain_steps']:.0f} steps vs seed spread "
            f"{r['spread_steps']:.0f}; final acc {r['final_acc_mean']:.4f} +- {r['final_acc_std']:.4f}"
            + (" -> CLEAR WIN (>= 1.2x, gain > spread)" if r["clear_win"] else "")
        )
    wins = [r for r in summary if r.get("clear_win") and r["scheme"] != "default"]
    lines.append(
        f"{len(wins)} scheme/setting(s) reach the default's final accuracy in >= 1.2x fewer steps "
        "with a gain larger than the seed spread"
        + (
            ": " + ", ".join(f"{r['dataset']}/{r['arch']}/{r['scheme']}" for r in wins)
            if wins
            else "."
        )
    )
    return lines


def summary_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (one row per dataset, arch, scheme)."""
    head = (
        "| dataset | arch | scheme | target | steps to target (per seed) | reached | speedup "
        "| gain vs spread (steps) | final acc mean +- std [min, max] | acc @1/4, @1/2 | train s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in summary:
        st = ", ".join("-" if v is None else str(v) for v in r["steps_to_target"])
        lines.append(
            f"| {r['dataset']} | {r['arch']} | {r['scheme']} | {r['target']:.4f} | {st} "
            f"| {r['reached']}/{r['seeds']} | {r['speedup']:.2f}x "
            f"| {r['gain_steps']:+.0f} vs {r['spread_steps']:.0f} "
            f"| {r['final_acc_mean']:.4f} +- {r['final_acc_std']:.4f} "
            f"[{r['final_acc_min']:.4f}, {r['final_acc_max']:.4f}] "
            f"| {r['acc_quarter_mean']:.3f}, {r['acc_half_mean']:.3f} | {r['train_time_s_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_benchmark(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy curves (mean and min-max over seeds) per (dataset, arch), target dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(doc["runs"])
    if df.empty:
        raise KernelAtlasError("no runs to plot")
    groups = list(df.groupby(["dataset", "arch"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.8), squeeze=False)
    targets = {(r["dataset"], r["arch"]): r["target"] for r in doc.get("summary", [])}
    schemes = list(dict.fromkeys(df["scheme"]))
    colors = dict(zip(schemes, plt.get_cmap("tab10").colors, strict=False))
    for ax, ((dname, arch), g) in zip(axes[0], groups, strict=True):
        accs = []
        for scheme, s in g.groupby("scheme", sort=False):
            curves = np.array([np.asarray(c, dtype=float) for c in s["curve"]])  # [seeds, evals, 2]
            steps, acc = curves[0, :, 0], curves[:, :, 1]
            accs.append(acc)
            ax.plot(steps, acc.mean(0), color=colors[scheme], lw=1.5, label=scheme)
            ax.fill_between(steps, acc.min(0), acc.max(0), color=colors[scheme], alpha=0.15, lw=0)
        if (dname, arch) in targets:
            ax.axhline(targets[(dname, arch)], color="black", ls="--", lw=0.8, label="target")
        hi = float(np.max([a.max() for a in accs]))
        lo = float(
            np.quantile(np.concatenate([a[:, len(a[0]) // 4 :].ravel() for a in accs]), 0.05)
        )
        ax.set_ylim(max(0.0, lo - 0.01), min(1.0, hi + 0.01))
        ax.set_title(f"{dname} / {arch}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"bench-init ({doc['config']['name']}, {doc['config']['seeds']} seeds, "
        f"{doc['environment']['device']}) - kernelatlas {doc['kernelatlas_version']}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
