"""Depthwise initialisers built from the atlas: DoG, atlas-sampled, master-key, covariance.

The work is in pure functions that return unit-L2 kernel banks ``[n, kh, kw]``
(:func:`dog_kernels`, :func:`master_key_kernels`, :func:`atlas_kernels`,
:func:`covariance_kernels`). The registered ``init`` schemes below (``dog``, ``atlas``,
``master_key``, ``covariance``, ``default``) each make one call to one of them through
:func:`set_kernels_`, which finds every depthwise convolution of a model, draws a bank for
it and writes it in place, each kernel rescaled to the L2 norm of the kernel it replaces
(the layer's default initialisation), so only the *shape* of the initial kernels changes,
never their scale. :func:`~kernelatlas.train.schemes.init_depthwise_` applies them by name.

``freeze=True`` (:func:`freeze_depthwise_`) freezes the kernels and adds a learnable
per-channel scalar ``b`` to every tap of the channel's kernel (a
``torch.nn.utils.parametrize`` parametrisation, so ``conv.weight`` stays the effective kernel
and the frozen one is ``conv.parametrizations.weight.original``). The paper's full recipe,
``a * F + b`` with both terms at their own learning rate, is the ``master_key_frozen``
scheme (:mod:`.frozen`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import KernelAtlasError
from ..taxonomy import CENTER, FIRST_DERIVATIVE, PATTERN_FAMILIES
from .schemes import KernelParametrization, init_depthwise_, register_scheme

__all__ = [
    "SCHEMES",  # noqa: F822  (module __getattr__: the registry names)
    "DoGConfig",
    "set_kernels_",
    "freeze_depthwise_",
    "draw_dog_",
    "draw_master_keys_",
    "draw_atlas_",
    "draw_covariance_",
    "ChannelShift",
    "depthwise_convs",
    "dog_kernels",
    "master_key_kernels",
    "atlas_kernels",
    "covariance_kernels",
    "init_depthwise_",
]


def __getattr__(name: str) -> object:
    if name == "SCHEMES":  # the registry's names, read when asked (plugins included)
        from .schemes import list_schemes

        return tuple(list_schemes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class DoGConfig:
    """The mix drawn by the ``dog`` scheme.

    Attributes
    ----------
    center_fraction : share of centre-surround (DoG) kernels; the rest are oriented first
        derivatives of a Gaussian.
    on_fraction : share of on-centre kernels among the DoGs (0.5: on/off alternating).
    surround_ratios : surround sigma / centre sigma, cycled over the DoGs.
    sigma_range : (min, max) Gaussian sigma in pixels; ``None`` scales it with the kernel
        size: ``[0.6, 1.2] * sqrt(k / 7)``, at least 0.5 px.
    """

    center_fraction: float = 0.5
    on_fraction: float = 0.5
    surround_ratios: tuple[float, ...] = (1.6, 2.0, 2.5, 3.0)
    sigma_range: tuple[float, float] | None = None

    def validate(self) -> None:
        for name in ("center_fraction", "on_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise KernelAtlasError(f"DoGConfig.{name} must be in [0, 1], got {v}")
        if not self.surround_ratios or min(self.surround_ratios) <= 1.0:
            raise KernelAtlasError(
                "DoGConfig.surround_ratios must be a non-empty list of values > 1"
            )
        if self.sigma_range is not None:
            lo, hi = self.sigma_range
            if not 0 < lo <= hi:
                raise KernelAtlasError(
                    f"DoGConfig.sigma_range must be 0 < min <= max, got {lo}, {hi}"
                )


class ChannelShift(KernelParametrization):
    """Parametrisation ``w -> w + b[c]``: a learnable scalar added to every tap of a channel."""

    no_decay = frozenset({"shift"})
    original_decay = False

    def __init__(self, channels: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels, 1, 1, 1, device=device, dtype=dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.shift


# --------------------------------------------------------------------------- finder


def depthwise_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every spatial depthwise ``nn.Conv2d`` of ``model`` in module order.

    Depthwise as :func:`kernelatlas.harvest.torch_module.is_depthwise` defines it
    (``groups == in_channels > 1``, ``out_channels`` a multiple); 1x1 depthwise
    convolutions carry no spatial pattern and are skipped, as the harvester skips them.
    """
    from ..harvest.torch_module import is_depthwise

    return [
        (name, m)
        for name, m in model.named_modules()
        if is_depthwise(m) and tuple(m.kernel_size) != (1, 1)
    ]


# --------------------------------------------------------------------------- banks


def _spread(n: int, fraction: float) -> np.ndarray:
    """Boolean [n] with round(fraction * n) Trues spread evenly (0.5: alternating)."""
    i = np.arange(n)
    return (np.floor((i + 1) * fraction + 1e-9) - np.floor(i * fraction + 1e-9)) > 0


def _unit_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norm > 0, norm, 1.0)).reshape(x.shape).astype(np.float32)


def _default_sigma_range(kh: int, kw: int) -> tuple[float, float]:
    s = float(np.sqrt(min(kh, kw) / 7.0))
    return max(0.5, 0.6 * s), max(0.5, 1.2 * s)


def dog_kernels(
    n: int, kh: int, kw: int, *, rng: np.random.Generator, config: DoGConfig | None = None
) -> np.ndarray:
    """``n`` unit kernels: on/off DoGs and oriented first derivatives, evenly interleaved.

    DoGs alternate on/off centre (``config.on_fraction``) and cycle through the surround
    ratios; first derivatives take evenly spaced orientations with a random phase. Sigmas
    are drawn uniformly from ``config.sigma_range``.

    Examples
    --------
    >>> k = dog_kernels(4, 7, 7, rng=np.random.default_rng(0))
    >>> k.shape
    (4, 7, 7)
    """
    from ..atlas.registry import get_family

    config = config or DoGConfig()
    config.validate()
    lo, hi = config.sigma_range or _default_sigma_range(kh, kw)
    is_center = _spread(n, config.center_fraction)
    n_c, n_d = int(is_center.sum()), int((~is_center).sum())
    out = np.empty((n, kh, kw), dtype=np.float32)
    if n_c:  # drawn from the registered centre family's generator
        sig = rng.uniform(lo, hi, n_c)
        ratios = np.resize(np.asarray(config.surround_ratios, dtype=np.float64), n_c)
        pol = np.where(_spread(n_c, config.on_fraction), 1, -1)
        out[is_center] = get_family(CENTER).generate(
            kh, kw, n_c, rng=rng, scale=sig, polarity=pol, surround_ratio=ratios,
            surround_weight=1.0,
        )  # fmt: skip
    if n_d:  # and from the first-derivative family's
        sig = rng.uniform(lo, hi, n_d)
        theta = (rng.uniform(0, 360) + 360.0 * np.arange(n_d) / n_d) % 360.0
        out[~is_center] = get_family(FIRST_DERIVATIVE).generate(
            kh, kw, n_d, rng=rng, scale=sig, orientation=theta
        )
    return out


def _fit_support(filters: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Centre-crop (smaller) or pad with each filter's border mean (larger) to [.., kh, kw]."""
    _, h, w = filters.shape
    out = filters
    if kh < h or kw < w:
        top, left = (h - min(kh, h)) // 2, (w - min(kw, w)) // 2
        out = out[:, top : top + min(kh, h), left : left + min(kw, w)]
    _, h2, w2 = out.shape
    if kh > h2 or kw > w2:
        border = np.concatenate(
            [filters[:, 0], filters[:, -1], filters[:, 1:-1, 0], filters[:, 1:-1, -1]], axis=1
        ).mean(axis=1)
        big = np.broadcast_to(border[:, None, None], (len(filters), kh, kw)).copy()
        top, left = (kh - h2) // 2, (kw - w2) // 2
        big[:, top : top + h2, left : left + w2] = out
        out = big
    return np.ascontiguousarray(out, dtype=np.float32)


def master_key_kernels(n: int, kh: int, kw: int, *, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit kernels from the eight published master-key filters, in equal shares.

    The 7x7 filters concentrate in their central 3x3 (Lindeberg et al. fit sigmas near one
    pixel), so other sizes take their centre crop (smaller kernels) or are padded with the
    filter's border level (larger ones), keeping the pixel scale the networks learned.
    The filters are used as published (not re-centred); channels get a seeded, balanced
    assignment.
    """
    from ..atlas import functional as F

    bank = _unit_rows(_fit_support(F.master_key_filters(), kh, kw))
    idx = rng.permutation(np.resize(np.arange(len(bank)), n))
    return bank[idx]


def _reference_frame(reference: object):
    """An atlas DataFrame as given, or the atlas analysis of a kernel array [N, kh, kw]."""
    import pandas as pd

    if isinstance(reference, pd.DataFrame):
        df = reference
    else:
        from ..normalize import as_kernel_array
        from .coverage import shared_atlas

        arr = as_kernel_array(reference).astype(np.float32)
        df = shared_atlas(int(arr.shape[1]), int(arr.shape[2])).predict(arr)
        df = df.assign(kh=int(arr.shape[1]), kw=int(arr.shape[2]))
    if "family" not in df.columns:
        raise KernelAtlasError(
            "reference DataFrame needs a 'family' column: pass Atlas().predict(...) output"
        )
    return df


def atlas_kernels(
    n: int, kh: int, kw: int, *, rng: np.random.Generator, reference: object
) -> np.ndarray:
    """``n`` unit atlas patterns with the families and parameters of a reference bank.

    Rows of the reference's atlas analysis (a DataFrame with ``family`` and, where present,
    ``classified``, ``polarity``, ``orientation``, ``scale``, ``kh``/``kw``; or a kernel
    array that is analysed with :class:`~kernelatlas.atlas.Atlas`) are resampled with
    replacement among its classified pattern kernels, so the family shares *among
    classified kernels* and the joint (orientation, polarity, scale) distribution are
    reproduced; each row is rendered by its family's generator
    (:meth:`kernelatlas.atlas.family.PatternFamily.generate`, every registered family;
    second derivatives as bars). Rows of the same kernel size are preferred; otherwise scales are
    rescaled by the ratio of kernel sizes.
    """
    from ..atlas.registry import get_family

    df = _reference_frame(reference)
    keep = np.array(df["family"].isin(PATTERN_FAMILIES), dtype=bool)
    if "classified" in df.columns:
        keep &= np.array(df["classified"].fillna(False), dtype=bool)
    ref = df.loc[keep]
    if ref.empty:
        raise KernelAtlasError(
            "the atlas reference has no classified pattern kernels: pass a trained model's bank"
        )
    factor = 1.0
    if "kh" in ref.columns and "kw" in ref.columns:
        same = (ref["kh"].to_numpy() == kh) & (ref["kw"].to_numpy() == kw)
        if same.any():
            ref = ref.loc[same]
        else:
            factor = float(np.sqrt(kh * kw / (ref["kh"] * ref["kw"]).median()))
    rows = ref.iloc[rng.integers(0, len(ref), n)]
    fam = rows["family"].to_numpy()

    def col(name: str, default: float) -> np.ndarray:
        if name not in rows.columns:
            return np.full(n, default)
        v = pd_to_float(rows[name])
        return np.where(np.isfinite(v), v, default)

    lo, hi = _default_sigma_range(kh, kw)
    scale = col("scale", np.nan)
    scale = np.where(np.isfinite(scale), scale * factor, rng.uniform(lo, hi, n))
    scale = np.clip(scale, 0.25, max(kh, kw) / 2.0)
    orient = col("orientation", np.nan)
    orient = np.where(np.isfinite(orient), orient, rng.uniform(0, 360, n))
    pol = np.where(col("polarity", 1.0) < 0, -1, 1)
    out = np.empty((n, kh, kw), dtype=np.float32)
    for family in PATTERN_FAMILIES:  # one vectorised call per family, not per kernel
        m = fam == family
        if m.any():
            out[m] = get_family(family).generate(
                kh, kw, int(m.sum()), rng=rng, scale=scale[m], orientation=orient[m],
                polarity=pol[m],
            )  # fmt: skip
    return out


def pd_to_float(series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


def _reference_array(reference: object, name: str, kh: int, kw: int) -> np.ndarray:
    from ..normalize import as_kernel_array

    if reference is None:
        raise KernelAtlasError(
            "scheme 'covariance' needs reference=: a trained bank [N,kh,kw] (or a dict per layer)"
        )
    ref = reference
    if isinstance(reference, Mapping):
        for key in (name, (kh, kw), kh):
            if key in reference:
                ref = reference[key]
                break
        else:
            raise KernelAtlasError(f"reference has no entry for layer {name!r} nor size {kh}x{kw}")
    arr = as_kernel_array(ref)
    if arr.shape[1:] != (kh, kw):
        raise KernelAtlasError(
            f"reference kernels are {arr.shape[1]}x{arr.shape[2]} but layer {name!r} is "
            f"{kh}x{kw}: pass a reference of that size (or a dict keyed by layer or size)"
        )
    return arr


def covariance_kernels(
    n: int, kh: int, kw: int, *, rng: np.random.Generator, reference: np.ndarray
) -> np.ndarray:
    """``n`` unit kernels from a multivariate Gaussian fitted to a reference bank.

    Trockman, Willmott and Kolter (ICLR 2023): draw depthwise kernels from ``N(mu, S)``,
    with the mean and covariance of (unit-normalised) trained kernels. ``S`` is shrunk by
    1e-3 of its mean variance so that small references stay positive definite.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    ref = ref[np.isfinite(ref).all(axis=1)]
    norms = np.linalg.norm(ref, axis=1)
    ref = ref[norms > 0] / norms[norms > 0, None]
    if len(ref) < 2:
        raise KernelAtlasError("the covariance reference needs at least 2 non-zero kernels")
    mu = ref.mean(axis=0)
    cov = np.cov(ref, rowvar=False)
    d = cov.shape[0]
    cov = cov + 1e-3 * np.trace(cov) / d * np.eye(d)
    chol = np.linalg.cholesky(cov)
    z = rng.standard_normal((n, d))
    return _unit_rows((mu + z @ chol.T).reshape(n, kh, kw))


# --------------------------------------------------------------------------- writing kernels

#: draw(name, channels, kh, kw) -> unit kernels [channels, kh, kw]
KernelDraw = Callable[[str, int, int, int], np.ndarray]


def _layer_norms(weight: torch.Tensor, name: str) -> torch.Tensor:
    """Per-kernel L2 norms [C] of the current weights, zeros replaced by the layer mean."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    norms = torch.linalg.vector_norm(w, dim=1)
    positive = norms > 0
    if not bool(positive.any()) or not bool(torch.isfinite(norms).all()):
        raise KernelAtlasError(
            f"depthwise layer {name!r} has all-zero or non-finite kernels: build the model "
            "with its default initialisation before calling init_depthwise_"
        )
    return torch.where(positive, norms, norms[positive].mean())


def set_kernels_(model: nn.Module, draw: KernelDraw) -> nn.Module:
    """Write ``draw(name, c, kh, kw)`` into every depthwise conv, each kernel norm-matched.

    Layers are visited in module order (so one seeded generator inside ``draw`` gives the
    same kernels on every call); each new kernel is scaled to the L2 norm of the kernel it
    replaces.
    """
    for name, conv in depthwise_convs(model):
        weight = conv.weight
        c, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        bank = draw(name, c, kh, kw)
        norms = _layer_norms(weight, name)
        new = torch.from_numpy(np.asarray(bank)).double() * norms[:, None, None]
        with torch.no_grad():
            weight.copy_(new.reshape(weight.shape).to(weight.dtype))
    return model


def freeze_depthwise_(model: nn.Module) -> nn.Module:
    """Freeze every depthwise kernel and add a learnable per-channel shift (``freeze=True``)."""
    for _, conv in depthwise_convs(model):
        weight = conv.weight
        weight.requires_grad_(False)
        shift = ChannelShift(weight.shape[0], device=weight.device, dtype=weight.dtype)
        parametrize.register_parametrization(conv, "weight", shift)
    return model


# --------------------------------------------------------------------------- the kernel sources
# The one place each generator is called from a model: every scheme that starts from DoGs,
# master keys, atlas samples or covariance draws goes through these (swap a call here to
# change where the kernels come from, e.g. to a pattern-family registry).


def draw_dog_(model: nn.Module, *, seed: int, config: DoGConfig | None = None) -> nn.Module:
    """:func:`dog_kernels` into every depthwise conv (norm-matched), one seeded generator."""
    rng = np.random.default_rng(seed)
    return set_kernels_(model, lambda _n, c, kh, kw: dog_kernels(c, kh, kw, rng=rng, config=config))


def draw_master_keys_(model: nn.Module, *, seed: int) -> nn.Module:
    """:func:`master_key_kernels` into every depthwise conv (norm-matched)."""
    rng = np.random.default_rng(seed)
    return set_kernels_(model, lambda _n, c, kh, kw: master_key_kernels(c, kh, kw, rng=rng))


def draw_atlas_(model: nn.Module, *, seed: int, reference: object) -> nn.Module:
    """:func:`atlas_kernels` from a reference (DataFrame or bank) into every depthwise conv."""
    rng = np.random.default_rng(seed)
    frame = _reference_frame(reference)
    return set_kernels_(
        model, lambda _n, c, kh, kw: atlas_kernels(c, kh, kw, rng=rng, reference=frame)
    )


def draw_covariance_(model: nn.Module, *, seed: int, reference: object) -> nn.Module:
    """:func:`covariance_kernels` fitted per layer (or size) of ``reference``."""
    rng = np.random.default_rng(seed)
    return set_kernels_(
        model,
        lambda name, c, kh, kw: covariance_kernels(
            c, kh, kw, rng=rng, reference=_reference_array(reference, name, kh, kw)
        ),
    )


# --------------------------------------------------------------------------- the init schemes

_ICLR = "Babaiee et al., ICLR 2024 (the atlas); Neural Echos, WACV 2024"


@register_scheme("default", lever="control", summary="keep the layer's current kernels")
def _default(model: nn.Module, *, seed: int, reference: object, total_steps: int | None) -> None:
    return None


@register_scheme(
    "dog",
    lever="init",
    summary="on/off centre-surround DoGs and oriented first derivatives, norm-matched",
    paper=_ICLR,
)
def _dog(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    config: DoGConfig | None = None,
) -> None:
    draw_dog_(model, seed=seed, config=config)


@register_scheme(
    "atlas",
    lever="init",
    summary="atlas patterns resampled from a reference's classified kernels",
    paper="Babaiee et al., ICLR 2024",
    needs_reference=True,
)
def _atlas(model: nn.Module, *, seed: int, reference: object, total_steps: int | None) -> None:
    draw_atlas_(model, seed=seed, reference=reference)


@register_scheme(
    "master_key",
    lever="init",
    summary="the eight published master-key filters, balanced over channels (trainable)",
    paper="Babaiee et al., NeurIPS 2025 (filters CC BY 4.0 via Lindeberg)",
)
def _master_key(model: nn.Module, *, seed: int, reference: object, total_steps: int | None) -> None:
    draw_master_keys_(model, seed=seed)


@register_scheme(
    "covariance",
    lever="init",
    summary="draws from the mean and covariance of a reference bank",
    paper="Trockman, Willmott & Kolter, ICLR 2023",
    needs_reference=True,
)
def _covariance(model: nn.Module, *, seed: int, reference: object, total_steps: int | None) -> None:
    draw_covariance_(model, seed=seed, reference=reference)
