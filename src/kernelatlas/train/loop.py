"""The one training loop of kernelatlas (benchmarks and ``benchmarks/train_emergence.py``).

:func:`train_model` trains any classifier on an :class:`~kernelatlas.train.data.ImageDataset`
held in memory on its device: AdamW with linear warm-up and cosine decay, parameter
groups from :func:`param_groups` (no weight decay on norms, biases, layer scales and the
per-channel terms; learning-rate multipliers of the schemes' parametrisations honoured),
batches drawn by a CPU generator seeded with ``seed`` (so every scheme and every device
sees the same batches in the same order), images resized per batch to ``image_size``.
At step 0 and every ``eval_every`` steps it evaluates the test accuracy and, with a
:class:`~kernelatlas.train.CoverageTracker`, the atlas coverage of the depthwise kernels.
Training time (wall and CPU) excludes evaluations and coverage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KernelAtlasError
from .data import ImageDataset

__all__ = ["LoopConfig", "TrainResult", "train_model", "evaluate", "param_groups", "lr_schedule"]


@dataclass(frozen=True)
class LoopConfig:
    """Hyper-parameters of :func:`train_model`.

    ``eval_every`` 0: evaluate at step 0 and at the end only. ``image_size`` ``None``: the
    data's own size.
    """

    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    eval_every: int = 0
    eval_batch_size: int = 1000
    image_size: int | None = None
    amp: bool = False
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise KernelAtlasError("steps, batch_size and eval_batch_size must be >= 1")
        if self.eval_every < 0:
            raise KernelAtlasError(f"eval_every must be >= 0, got {self.eval_every}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise KernelAtlasError(f"lr must be > 0, got {self.lr}")
        if self.image_size is not None and self.image_size < 8:
            raise KernelAtlasError(f"image_size must be >= 8 px, got {self.image_size}")


@dataclass
class TrainResult:
    """What :func:`train_model` measured.

    ``curve``: one dict per evaluation with ``step``, ``accuracy``, ``loss`` (mean training
    loss since the previous evaluation; None at step 0), ``seconds`` and ``cpu_seconds``
    (training time so far) and, with a tracker, ``coverage`` and ``share_<family>``
    (kernel-weighted over all depthwise layers).
    """

    curve: list[dict[str, Any]] = field(default_factory=list)
    final_accuracy: float = float("nan")
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    eval_seconds: float = 0.0


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay or not, and each parameter's learning-rate multiplier.

    No decay on parameters with ``ndim <= 1`` (norms, biases, layer scales); the schemes'
    parametrisations (:class:`~kernelatlas.train.schemes.KernelParametrization`) say which
    of theirs take no decay and which learn at ``lr * multiplier``. Frozen parameters are
    left out. Each group carries ``lr_scale`` (the scheduler's base lr is ``lr * lr_scale``).
    """
    from .schemes import KernelParametrization

    scale: dict[int, float] = {}
    decay: dict[int, bool] = {}
    for module in model.modules():
        plist = getattr(module, "parametrizations", None)
        if plist is None:
            continue
        for plist_one in plist.values():
            orig = plist_one.original
            for p in plist_one:
                if isinstance(p, KernelParametrization):
                    scale[id(orig)] = scale.get(id(orig), 1.0) * p.original_lr_scale
                    decay[id(orig)] = decay.get(id(orig), True) and p.original_decay
                    for name, param in p.named_parameters(recurse=False):
                        scale[id(param)] = p.lr_scales.get(name, 1.0)
                        decay[id(param)] = name not in p.no_decay
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        d = decay.get(id(p), p.ndim > 1)
        groups.setdefault((scale.get(id(p), 1.0), d), []).append(p)
    return [
        {"params": ps, "lr": lr * s, "lr_scale": s, "weight_decay": weight_decay if d else 0.0}
        for (s, d), ps in groups.items()
    ]


def lr_schedule(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1000,
    amp: bool = False,
    image_size: int | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (restores the mode after)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(_resize(x[i : i + batch_size], image_size))
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return float(correct.item()) / len(x)


def _coverage_point(tracker, step: int) -> dict[str, float]:
    from ..taxonomy import FAMILIES

    hist = tracker.history
    rows = hist[hist["step"] == step]
    if rows.empty:
        rows = tracker.record(step)
    n = rows["n_kernels"].to_numpy(dtype=float)
    out = {"coverage": float((rows["coverage"].to_numpy() * n).sum() / n.sum())}
    for f in FAMILIES:
        out[f"share_{f}"] = float((rows[f"share_{f}"].to_numpy() * n).sum() / n.sum())
    return out


def train_model(
    model: nn.Module,
    data: ImageDataset,
    cfg: LoopConfig,
    *,
    seed: int = 0,
    tracker: Any = None,
    eval_steps: Iterable[int] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` AdamW steps on ``data`` (already on its device).

    Parameters
    ----------
    model : the classifier (moved to the data's device, trained in place).
    data : train/test tensors on one device.
    cfg : :class:`LoopConfig`.
    seed : seed of the batch order (a CPU generator: same order on every device).
    tracker : a :class:`~kernelatlas.train.CoverageTracker` of ``model``: stepped after every
        optimiser step (it records every ``tracker.every`` steps) and recorded at every
        evaluation, whose curve point then carries the coverage.
    eval_steps : evaluate at these steps (0 = before training) instead of every
        ``cfg.eval_every``; the last step is always evaluated.
    on_step : ``on_step(step, model)`` after every optimiser step and at step 0 (e.g. to
        save checkpoints); its time is not counted as training.

    Returns
    -------
    :class:`TrainResult`. Raises :class:`~kernelatlas.errors.KernelAtlasError` if the loss
    becomes non-finite.
    """
    cfg.validate()
    device = data.x_train.device
    model.to(device).train()
    n = len(data.y_train)
    per_epoch = n // cfg.batch_size
    if per_epoch < 1:
        raise KernelAtlasError(f"batch_size {cfg.batch_size} exceeds the {n} training images")
    if eval_steps is None:
        every = cfg.eval_every or cfg.steps
        evals = set(range(0, cfg.steps + 1, every))
    else:
        evals = {int(s) for s in eval_steps if 0 <= int(s) <= cfg.steps}
    evals.add(cfg.steps)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.steps, warmup))
    gen = torch.Generator().manual_seed(int(seed))
    res = TrainResult()
    loss_sum = torch.zeros((), device=device)
    last_eval = 0

    def checkpoint(step: int) -> None:
        nonlocal last_eval
        t1 = time.perf_counter()
        if on_step is not None:
            on_step(step, model)
        if tracker is not None and step % tracker.every == 0:
            tracker.record(step)
        if step in evals:
            acc = evaluate(
                model,
                data.x_test,
                data.y_test,
                batch_size=cfg.eval_batch_size,
                amp=cfg.amp,
                image_size=cfg.image_size,
            )
            loss = float(loss_sum.item()) / (step - last_eval) if step > last_eval else None
            if loss is not None and not math.isfinite(loss):
                raise KernelAtlasError(
                    f"training diverged at step {step} (non-finite loss): lower the learning rate"
                )
            loss_sum.zero_()
            last_eval = step
            point = {
                "step": step,
                "accuracy": acc,
                "loss": loss,
                "seconds": res.train_seconds,
                "cpu_seconds": res.cpu_seconds,
            }
            if tracker is not None:
                point.update(_coverage_point(tracker, step))
            res.curve.append(point)
        _sync(device)
        res.eval_seconds += time.perf_counter() - t1

    def pause(step: int) -> bool:
        return (
            step in evals
            or on_step is not None
            or (tracker is not None and step % tracker.every == 0)
        )

    checkpoint(0)
    perm = torch.empty(0, dtype=torch.long)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, cfg.steps + 1):
        j = (step - 1) % per_epoch
        if j == 0:
            perm = torch.randperm(n, generator=gen).to(device)
        idx = perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model(_resize(data.x_train[idx], cfg.image_size))
        loss = F.cross_entropy(
            logits.float(), data.y_train[idx], label_smoothing=cfg.label_smoothing
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        if pause(step):  # stop the clocks only here (no per-step sync on a GPU)
            _sync(device)
            res.train_seconds += time.perf_counter() - t0
            res.cpu_seconds += time.process_time() - c0
            checkpoint(step)
            t0, c0 = time.perf_counter(), time.process_time()
    res.final_accuracy = res.curve[-1]["accuracy"]
    return res
