"""Lever 1: structured depthwise kernels, a learned combination of the atlas's basis.

Every depthwise kernel becomes ``w_c = Q @ a_c``: a few coefficients ``a_c`` per channel on
an orthonormal basis ``Q`` of the Gaussian and its derivatives up to order 2 (``G, Gx, Gy,
Gxx, Gxy, Gyy``) at a few scales, pixel-integrated with the atlas's own generator
(:func:`kernelatlas.atlas.functional.gaussian_basis`). That span holds every family of the
atlas: centre-surround (Gaussians and Laplacians, DoGs as differences of scales), first
derivatives at any orientation (``cos t Gx + sin t Gy``) and second derivatives (bars and
crosses). It is the structured receptive field of Jacobsen et al. (CVPR 2016) and, with
learnable scales, the N-jet of Pintea et al. (IEEE TIP 2021).

The same span, :func:`atlas_basis`, is the subspace of the atlas prior (:mod:`.prior`).

Scales (:func:`basis_sigmas`): ``0.6 * 2**i`` px for ``i < n``, ``n = 1`` for 3x3 (6 of 9
dimensions), 2 for 5x5 (12 of 25), 3 for 7x7 and larger (18 of 49). The span holds most of
the energy of trained kernels (``benchmarks/train_levers.py``: 3x3 MobileNetV2 and
EfficientNet-Lite0 92% against 67% for noise; 5x5 EfficientNet-Lite0 88% against 48%; 7x7
PP-OCRv6 77% and the eight master keys 96% against 37%), see docs/training.md.

The parametrisation is ``torch.nn.utils.parametrize``: ``conv.weight`` stays the effective
kernel, ``conv.parametrizations.weight.original`` holds the coefficients ``[C, M]``, and
:func:`kernelatlas.train.bake_` turns it back into an ordinary weight.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import KernelAtlasError
from .init import _layer_norms, depthwise_convs, draw_dog_
from .schemes import KernelParametrization, register_scheme

__all__ = [
    "BASIS_ORDER",
    "BASIS_FUNCTIONS",
    "basis_sigmas",
    "atlas_basis",
    "orthonormal_basis",
    "StructuredKernel",
    "structure_depthwise_",
]

#: Highest derivative order of the basis, and its functions per scale.
BASIS_ORDER = 2
BASIS_FUNCTIONS: tuple[str, ...] = ("G", "Gx", "Gy", "Gxx", "Gxy", "Gyy")
_BASE_SIGMA = 0.6
_MAX_SCALES = 3


def basis_sigmas(kh: int, kw: int) -> tuple[float, ...]:
    """Default scales (px) of the basis for a ``kh x kw`` kernel: ``0.6 * 2**i``, ``i < n``.

    ``n = clip((min(kh, kw) - 1) // 2, 1, 3)``, lowered until the basis is smaller than the
    kernel (``6 n < kh * kw``).
    """
    n = max(1, min(_MAX_SCALES, (min(kh, kw) - 1) // 2))
    while n > 1 and len(BASIS_FUNCTIONS) * n >= kh * kw:
        n -= 1
    return tuple(_BASE_SIGMA * 2.0**i for i in range(n))


def _fits(kh: int, kw: int) -> bool:
    return min(kh, kw) >= 3 and len(BASIS_FUNCTIONS) < kh * kw


def atlas_basis(
    kh: int,
    kw: int,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The atlas basis ``[M, kh, kw]``: ``G, Gx, Gy, Gxx, Gxy, Gyy`` at every scale.

    ``M = 6 * len(sigmas)``; centred on the kernel, pixel-integrated, not normalised.
    ``sigmas`` may be a tensor (the result is then differentiable in it).

    Examples
    --------
    >>> atlas_basis(7, 7).shape
    torch.Size([18, 7, 7])
    """
    if not _fits(kh, kw):
        raise KernelAtlasError(
            f"a {kh}x{kw} kernel is too small for the order-{BASIS_ORDER} atlas basis "
            f"({len(BASIS_FUNCTIONS)} functions): it needs at least 3x3"
        )
    if sigmas is None:
        sigmas = basis_sigmas(kh, kw)
    s = torch.as_tensor(sigmas, dtype=dtype, device=device).reshape(-1)
    if s.numel() == 0 or not bool(torch.all(s > 0)):
        raise KernelAtlasError(f"basis sigmas must be positive pixels, got {sigmas!r}")
    from ..atlas.functional import gaussian_basis

    zero = torch.zeros_like(s)
    b = gaussian_basis(kh, kw, s, zero, zero, order=BASIS_ORDER)
    return torch.stack([b[name] for name in BASIS_FUNCTIONS], dim=1).reshape(-1, kh, kw)


def orthonormal_basis(basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns ``Q [kh*kw, M]`` spanning ``basis [M, kh, kw]`` (QR, signs fixed).

    Differentiable; raises when the functions are (numerically) linearly dependent.
    """
    m = basis.shape[0]
    a = basis.reshape(m, -1).T
    q, r = torch.linalg.qr(a)
    d = torch.diagonal(r)
    if not bool(torch.all(d.abs() > 1e-6 * d.abs().max())):
        raise KernelAtlasError(
            "the basis functions are linearly dependent at this kernel size: use fewer or "
            "more distinct sigmas"
        )
    return q * torch.where(d < 0, -1.0, 1.0).to(q.dtype)


class StructuredKernel(KernelParametrization):
    """Parametrisation ``a [C, M] -> Q a`` (kernels ``[C, 1, kh, kw]``) on the atlas basis.

    Parameters
    ----------
    kh, kw : kernel size.
    sigmas : basis scales (px); ``None``: :func:`basis_sigmas`.
    learn_sigma : learn ``log sigma`` (one per scale and layer: an N-jet); else fixed.
    sigma_lr : learning-rate multiplier of ``log_sigma``.

    The coefficients get the learning-rate multiplier ``sqrt(kh*kw / M)`` (tap-matched: one
    AdamW step changes the kernel by as much as a step on ``kh*kw`` ordinary taps would).
    """

    no_decay = frozenset({"log_sigma"})

    def __init__(
        self,
        kh: int,
        kw: int,
        sigmas: Sequence[float] | None = None,
        *,
        learn_sigma: bool = False,
        sigma_lr: float = 5.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.kh, self.kw = int(kh), int(kw)
        sig = torch.as_tensor(
            basis_sigmas(kh, kw) if sigmas is None else sigmas, dtype=torch.float64
        )
        q = orthonormal_basis(atlas_basis(kh, kw, sig))  # validates size and sigmas
        self.n_terms = int(q.shape[1])
        self.learn_sigma = bool(learn_sigma)
        log_sigma = sig.log().to(dtype=dtype, device=device)
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
            self.lr_scales = {"log_sigma": float(sigma_lr)}
        else:
            self.register_buffer("log_sigma", log_sigma)
            self.register_buffer("q", q.to(dtype=dtype, device=device))
        self.original_lr_scale = math.sqrt(kh * kw / self.n_terms)

    def basis(self) -> torch.Tensor:
        """The current orthonormal basis ``Q [kh*kw, M]``."""
        if not self.learn_sigma:
            return self.q
        b = atlas_basis(self.kh, self.kw, self.log_sigma.exp(), dtype=self.log_sigma.dtype)
        return orthonormal_basis(b)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        q = self.basis().to(coeffs.dtype)
        return (coeffs @ q.T).reshape(coeffs.shape[0], 1, self.kh, self.kw)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.shape[1:] != (1, self.kh, self.kw):
            raise KernelAtlasError(
                f"expected depthwise kernels [C, 1, {self.kh}, {self.kw}], got {tuple(weight.shape)}"
            )
        q = self.basis().detach().to(weight.dtype)
        return weight.reshape(weight.shape[0], -1) @ q


def structure_depthwise_(
    model: nn.Module,
    *,
    sigmas: Sequence[float] | None = None,
    learn_sigma: bool = False,
    sigma_lr: float = 5.0,
) -> list[str]:
    """Parametrise every depthwise kernel of ``model`` on the atlas basis, in place.

    The current kernels are projected on the basis and rescaled to their own norms, so
    the effective kernels keep their scale. Layers too small for the basis (below 3x3,
    e.g. 1x5) keep ordinary kernels, with a warning. Returns the names of the layers
    parametrised.
    """
    if not (isinstance(sigma_lr, int | float) and sigma_lr > 0):
        raise KernelAtlasError(f"sigma_lr must be > 0, got {sigma_lr!r}")
    done, skipped = [], []
    for name, conv in depthwise_convs(model):
        w = conv.weight
        kh, kw = w.shape[2], w.shape[3]
        if not _fits(kh, kw):
            skipped.append(f"{name} ({kh}x{kw})")
            continue
        norms = _layer_norms(w, name)
        p = StructuredKernel(
            kh,
            kw,
            sigmas,
            learn_sigma=learn_sigma,
            sigma_lr=sigma_lr,
            dtype=w.dtype,
            device=w.device,
        )
        parametrize.register_parametrization(conv, "weight", p)
        with torch.no_grad():
            coeffs = conv.parametrizations.weight.original
            have = torch.linalg.vector_norm(conv.weight.reshape(len(coeffs), -1), dim=1)
            coeffs.mul_((norms / have.double().clamp_min(1e-30)).to(coeffs.dtype)[:, None])
        done.append(name)
    if skipped:
        warnings.warn(
            "structured kernels need >= 3x3; kept ordinary kernels in " + ", ".join(skipped),
            stacklevel=3,
        )
    if not done:
        raise KernelAtlasError("no depthwise layer is large enough (>= 3x3) for structured kernels")
    return done


_JACOBSEN = "Jacobsen et al., CVPR 2016 (structured receptive fields)"
_PINTEA = "Pintea et al., IEEE TIP 2021 (N-jets: learnable Gaussian scales)"
_INITS = ("dog", "default")


def _structured(
    model: nn.Module, seed: int, init: str, sigmas: Sequence[float] | None, learn: bool, lr: float
) -> None:
    if init not in _INITS:
        raise KernelAtlasError(f"init must be one of {', '.join(_INITS)}, got {init!r}")
    if init == "dog":
        draw_dog_(model, seed=seed)
    structure_depthwise_(model, sigmas=sigmas, learn_sigma=learn, sigma_lr=lr)


@register_scheme(
    "structured",
    lever="structure",
    summary="kernels = learned coefficients on the atlas basis (G..Gyy, fixed scales), DoG start",
    paper=_JACOBSEN,
    control="dog",
)
def _structured_fixed(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    sigmas: Sequence[float] | None = None,
    init: str = "dog",
) -> None:
    _structured(model, seed, init, sigmas, False, 1.0)


@register_scheme(
    "structured_njet",
    lever="structure",
    summary="structured with learnable scales (one log-sigma per scale and layer), DoG start",
    paper=f"{_PINTEA}; {_JACOBSEN}",
    control="structured",
)
def _structured_njet(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    sigmas: Sequence[float] | None = None,
    init: str = "dog",
    sigma_lr: float = 5.0,
) -> None:
    _structured(model, seed, init, sigmas, True, sigma_lr)
