"""Lever 3: the atlas prior, a penalty on the part of each kernel outside the atlas subspace.

For a depthwise kernel ``w`` and the orthonormal atlas basis ``Q`` of its size
(:func:`kernelatlas.train.structured.atlas_basis`), the residual fraction is

    r(w) = ||w - Q Q^T w||^2 / ||w||^2          (0: inside the atlas span, 1: orthogonal)

which depends on the kernel's shape only, not its scale. The prior adds
``strength(t) * sum over kernels of r(w)`` to the training loss: ``strength`` is
``weight`` for the first ``warmup_steps`` steps, then falls linearly to 0 over
``release_steps`` steps and stays 0 (released: the kernels are then free).

It is applied as a gradient hook (``Tensor.register_post_accumulate_grad_hook``) on each
depthwise weight, which adds exactly the penalty's gradient to ``weight.grad`` after every
backward pass, so any training loop and any optimiser get it without a change to their
loss; the step count is the number of backward passes (with gradient accumulation, count
micro-batches). :func:`kernelatlas.train.bake_` (or :func:`remove_prior_`) removes it.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import KernelAtlasError
from .init import depthwise_convs, draw_dog_
from .schemes import register_scheme
from .structured import _fits, atlas_basis, orthonormal_basis

__all__ = ["AtlasPrior", "add_atlas_prior_", "remove_prior_", "has_prior", "atlas_residual"]

#: Default penalty weight (per kernel, on the residual fraction); see docs/training.md.
DEFAULT_PRIOR_WEIGHT = 0.01
#: Default warm-up as a fraction of the planned training, when the length is known.
DEFAULT_WARMUP_FRACTION = 0.25
DEFAULT_WARMUP_STEPS = 100  # when it is not

_PRIORS: weakref.WeakKeyDictionary[nn.Module, tuple[AtlasPrior, object]] = (
    weakref.WeakKeyDictionary()
)


def _residual(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened kernels ``w [C, K]``: residual vectors, squared norms [C, 1], fractions [C, 1]."""
    res = w - (w @ q) @ q.T
    n2 = (w * w).sum(1, keepdim=True).clamp_min(1e-30)
    return res, n2, (res * res).sum(1, keepdim=True) / n2


class AtlasPrior:
    """The prior on one depthwise conv: the schedule and the gradient hook.

    Parameters
    ----------
    kh, kw : kernel size; ``sigmas`` the basis scales (``None``: the default).
    weight : penalty weight while on.
    warmup_steps : steps at full weight.
    release_steps : steps over which the weight falls linearly to 0 afterwards.
    """

    def __init__(
        self,
        kh: int,
        kw: int,
        *,
        weight: float,
        warmup_steps: int,
        release_steps: int,
        sigmas=None,
    ) -> None:
        self.q64 = orthonormal_basis(atlas_basis(kh, kw, sigmas))
        self.weight = float(weight)
        self.warmup_steps = int(warmup_steps)
        self.release_steps = int(release_steps)
        self.steps = 0
        self.last_residual = float("nan")
        self._q: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def strength(self, step: int) -> float:
        """The penalty weight at ``step`` (0-based count of backward passes)."""
        if step < self.warmup_steps:
            return self.weight
        t = step - self.warmup_steps
        if t >= self.release_steps:
            return 0.0
        return self.weight * (1.0 - (t + 1) / (self.release_steps + 1))

    def basis(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._q:
            self._q[key] = self.q64.to(dtype=like.dtype, device=like.device)
        return self._q[key]

    @torch.no_grad()
    def residual(self, weight: torch.Tensor) -> torch.Tensor:
        """Residual fraction ``r`` of every kernel of ``weight`` [C, 1, kh, kw] -> [C]."""
        w = weight.detach().reshape(weight.shape[0], -1)
        return _residual(w, self.basis(w))[2][:, 0]

    @torch.no_grad()
    def __call__(self, param: torch.Tensor) -> None:
        lam = self.strength(self.steps)
        self.steps += 1
        if lam == 0.0 or param.grad is None:
            return
        w = param.detach().reshape(param.shape[0], -1)
        res, n2, frac = _residual(w, self.basis(w))
        self.last_residual = float(frac.mean())
        # d/dw [|res|^2 / |w|^2] = 2 (res - frac * w) / |w|^2   (res = (I - QQ^T) w)
        grad = (2.0 * lam) * (res - frac * w) / n2
        param.grad.add_(grad.reshape(param.shape))


def add_atlas_prior_(
    model: nn.Module,
    *,
    weight: float = DEFAULT_PRIOR_WEIGHT,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    release_steps: int | None = None,
    sigmas=None,
) -> list[str]:
    """Hook the atlas prior onto every depthwise kernel of ``model`` (>= 3x3), in place.

    ``release_steps`` ``None``: equal to ``warmup_steps``. Returns the layers hooked.
    """
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
        raise KernelAtlasError(f"weight must be a number >= 0, got {weight!r}")
    release_steps = warmup_steps if release_steps is None else release_steps
    for name, v in (("warmup_steps", warmup_steps), ("release_steps", release_steps)):
        if not (isinstance(v, int) and v >= 0):
            raise KernelAtlasError(f"{name} must be an int >= 0, got {v!r}")
    remove_prior_(model)
    done = []
    for name, conv in depthwise_convs(model):
        kh, kw = conv.weight.shape[2], conv.weight.shape[3]
        if not _fits(kh, kw):
            continue
        if parametrize.is_parametrized(conv, "weight"):
            raise KernelAtlasError(
                f"layer {name!r} is parametrised: the atlas prior acts on plain kernels "
                "(bake_ the model first)"
            )
        prior = AtlasPrior(
            kh,
            kw,
            weight=weight,
            warmup_steps=warmup_steps,
            release_steps=release_steps,
            sigmas=sigmas,
        )
        handle = conv.weight.register_post_accumulate_grad_hook(prior)
        _PRIORS[conv] = (prior, handle)
        done.append(name)
    if not done:
        raise KernelAtlasError("no depthwise layer is large enough (>= 3x3) for the atlas prior")
    return done


def priors(model: nn.Module) -> list[tuple[str, AtlasPrior]]:
    """The ``(layer name, AtlasPrior)`` pairs hooked on ``model``."""
    return [(n, _PRIORS[c][0]) for n, c in depthwise_convs(model) if c in _PRIORS]


def has_prior(model: nn.Module) -> bool:
    """Whether any depthwise conv of ``model`` carries the atlas prior."""
    return any(c in _PRIORS for _, c in depthwise_convs(model))


def remove_prior_(model: nn.Module) -> nn.Module:
    """Remove the atlas prior's hooks from ``model`` (no-op without them)."""
    for _, conv in depthwise_convs(model):
        entry = _PRIORS.pop(conv, None)
        if entry is not None:
            entry[1].remove()
    return model


@torch.no_grad()
def atlas_residual(model: nn.Module, sigmas=None) -> float:
    """Mean residual fraction ``r`` of all depthwise kernels (>= 3x3) of ``model``."""
    total, count = 0.0, 0
    for _, conv in depthwise_convs(model):
        w = conv.weight
        kh, kw = w.shape[2], w.shape[3]
        if not _fits(kh, kw):
            continue
        q = orthonormal_basis(atlas_basis(kh, kw, sigmas)).to(w.dtype)
        frac = _residual(w.detach().reshape(w.shape[0], -1).to(q.device), q)[2]
        total += float(frac.sum())
        count += int(frac.numel())
    if not count:
        raise KernelAtlasError("no depthwise layer is large enough (>= 3x3) for the atlas basis")
    return total / count


@register_scheme(
    "atlas_prior",
    lever="prior",
    summary="penalty on each kernel's part outside the atlas span, on for a warm-up, released",
    paper="this project (the atlas span of Jacobsen et al. 2016 as a soft prior)",
)
def _atlas_prior(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    weight: float = DEFAULT_PRIOR_WEIGHT,
    warmup_steps: int | None = None,
    release_steps: int | None = None,
    init: str = "default",
) -> None:
    if init not in ("default", "dog"):
        raise KernelAtlasError(f"init must be 'default' or 'dog', got {init!r}")
    if init == "dog":
        draw_dog_(model, seed=seed)
    if warmup_steps is None:
        warmup_steps = (
            max(1, round(DEFAULT_WARMUP_FRACTION * total_steps))
            if total_steps
            else DEFAULT_WARMUP_STEPS
        )
    add_atlas_prior_(model, weight=weight, warmup_steps=warmup_steps, release_steps=release_steps)
