"""The training-scheme registry: every initialiser and training lever, behind one entry point.

A scheme is a small decorated function that changes the depthwise convolutions of any
``nn.Module`` in place: new kernels (an initialiser), a parametrisation of the kernels
(structured kernels, frozen filters with per-channel terms), a gradient hook (the atlas
prior) or a block setting (layer scale). :func:`init_depthwise_` applies one by name,
:func:`bake_` turns the model back into a plain one (ordinary weights, no
parametrisations, no hooks), and the CLI choices and the benchmark grid are read from
:func:`list_schemes`. Adding a scheme is one function in one file::

    from kernelatlas.train import register_scheme

    @register_scheme("my_init", lever="init", summary="what it does", paper="where from")
    def _my_init(model, *, seed, reference=None, total_steps=None, strength: float = 1.0):
        ...  # change model's depthwise convs in place

The function receives ``seed`` (an int), ``reference`` (whatever the caller passed, or
``None``), ``total_steps`` (the planned training length, ``None`` outside a benchmark) and
its own keyword-only options, which :func:`init_depthwise_` checks by name.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import KernelAtlasError, did_you_mean

__all__ = [
    "LEVERS",
    "SchemeInfo",
    "KernelParametrization",
    "register_scheme",
    "get_scheme",
    "list_schemes",
    "init_depthwise_",
    "bake_",
    "is_plain",
]

#: What a scheme changes: the initial kernels, their parametrisation (structure or frozen
#: filters with per-channel terms), a penalty during training, or nothing (a control).
LEVERS: tuple[str, ...] = ("control", "init", "structure", "frozen", "prior")
_RESERVED = ("model", "seed", "reference", "total_steps")


@dataclass(frozen=True)
class SchemeInfo:
    """One registered scheme.

    Attributes
    ----------
    name : registry key (also the CLI and benchmark name).
    fn : ``fn(model, *, seed, reference, total_steps, **options)``; changes ``model``.
    lever : one of :data:`LEVERS`.
    summary : one line for listings and docs.
    paper : where the idea comes from.
    needs_reference : the scheme needs ``reference=`` (a trained bank).
    needs_layer_scale : the scheme sets the layer scale of the blocks that hold depthwise
        convolutions (it does not apply to models without one, e.g. MobileNetV2).
    options : names of the keyword-only options ``fn`` accepts.
    control : the scheme that differs from this one by this scheme's lever only (``dog``
        for ``structured``, ``default_ls`` for ``dog_ls``...); the benchmark reports the
        speed-up over it beside the speed-up over ``default``.
    """

    name: str
    fn: Callable[..., Any]
    lever: str
    summary: str
    paper: str = ""
    needs_reference: bool = False
    needs_layer_scale: bool = False
    options: tuple[str, ...] = ()
    control: str = "default"


_REGISTRY: dict[str, SchemeInfo] = {}
_BUILTINS = (
    "kernelatlas.train.init",
    "kernelatlas.train.frozen",
    "kernelatlas.train.structured",
    "kernelatlas.train.prior",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        import importlib

        _loaded = True
        for mod in _BUILTINS:
            importlib.import_module(mod)


def register_scheme(
    name: str,
    *,
    lever: str,
    summary: str,
    paper: str = "",
    needs_reference: bool = False,
    needs_layer_scale: bool = False,
    control: str = "default",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as the scheme ``name`` (duplicates are refused).

    ``control``: the registered scheme this one adds its lever to (see :class:`SchemeInfo`).
    """
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise KernelAtlasError(f"scheme names are lower-case words joined by '_', got {name!r}")
    if lever not in LEVERS:
        raise KernelAtlasError(f"lever must be one of {', '.join(LEVERS)}, got {lever!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise KernelAtlasError(f"scheme {name!r} is already registered")
        params = inspect.signature(fn).parameters
        missing = [p for p in _RESERVED[1:] if p not in params]
        if missing:
            raise KernelAtlasError(
                f"scheme {name!r}: the function must accept keyword arguments {missing}"
            )
        options = tuple(
            p.name
            for p in params.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RESERVED
        )
        _REGISTRY[name] = SchemeInfo(
            name,
            fn,
            lever,
            summary,
            paper,
            needs_reference,
            needs_layer_scale,
            options,
            control,
        )
        return fn

    return deco


def list_schemes(pattern: str = "*", *, lever: str | None = None) -> list[str]:
    """Registered scheme names matching a shell-style ``pattern``, in registration order."""
    _load_builtins()
    return [
        n
        for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (lever is None or info.lever == lever)
    ]


def get_scheme(name: str) -> SchemeInfo:
    """The :class:`SchemeInfo` of ``name``; the error lists the choices."""
    _load_builtins()
    if name not in _REGISTRY:
        raise KernelAtlasError(
            f"unknown scheme {name!r} (choose one of {', '.join(_REGISTRY)})"
            f"{did_you_mean(name, list(_REGISTRY))}"
        )
    return _REGISTRY[name]


# --------------------------------------------------------------------------- parametrisations


class KernelParametrization(nn.Module):
    """Base of the parametrisations the schemes register on depthwise kernels.

    ``lr_scales`` maps a parameter name of the module to a learning-rate multiplier
    (:func:`kernelatlas.train.loop.param_groups` reads it); ``no_decay`` names the parameters
    that take no weight decay; ``original_lr_scale``/``original_decay`` say the same for the
    tensor the parametrisation is applied to (``parametrizations.weight.original``).
    :func:`bake_` removes only parametrisations of this type.
    """

    lr_scales: dict[str, float]
    no_decay: frozenset[str] = frozenset()
    original_lr_scale: float = 1.0
    original_decay: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.lr_scales = {}


def _ours(conv: nn.Module) -> bool:
    """Whether ``conv.weight`` is parametrised, only by kernelatlas parametrisations."""
    if not parametrize.is_parametrized(conv, "weight"):
        return False
    plist = conv.parametrizations.weight
    if not all(isinstance(p, KernelParametrization) for p in plist):
        raise KernelAtlasError(
            "a depthwise weight carries a parametrisation kernelatlas did not register: "
            "remove it (torch.nn.utils.parametrize.remove_parametrizations) first"
        )
    return True


def bake_(model: nn.Module) -> nn.Module:
    """Turn ``model`` back into a plain model, in place, keeping what it computes.

    Every kernelatlas parametrisation of a depthwise kernel is replaced by the ordinary
    weight it currently produces (``leave_parametrized=True``), trainable again; the atlas
    prior's gradient hooks are removed. Layer scales and other weights stay as they are.
    Returns the same ``model``; a model without any of these is returned unchanged.
    """
    from .init import depthwise_convs
    from .prior import remove_prior_

    remove_prior_(model)
    for _, conv in depthwise_convs(model):
        if _ours(conv):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
            conv.weight.requires_grad_(True)
    return model


def is_plain(model: nn.Module) -> bool:
    """True when no depthwise kernel of ``model`` is parametrised or hooked by kernelatlas."""
    from .init import depthwise_convs
    from .prior import has_prior

    return not has_prior(model) and not any(
        parametrize.is_parametrized(c, "weight") for _, c in depthwise_convs(model)
    )


# --------------------------------------------------------------------------- the entry point


def init_depthwise_(
    model: nn.Module,
    scheme: str,
    *,
    freeze: bool = False,
    seed: int | None = None,
    reference: object = None,
    config: object = None,
    total_steps: int | None = None,
    **options: Any,
) -> nn.Module:
    """Apply the registered ``scheme`` to every depthwise convolution of ``model``, in place.

    Parameters
    ----------
    model : any ``nn.Module``; called right after construction, its current kernels are the
        default initialisation whose per-kernel L2 norms new kernels inherit.
    scheme : a name of :func:`list_schemes` (``kernelatlas schemes`` lists them with a
        line each): ``default``, ``dog``, ``atlas``, ``master_key``, ``covariance``,
        ``master_key_frozen``, ``structured``, ``structured_njet``, ``atlas_prior``, the
        ``*_ls`` layer-scale variants...
    freeze : after an ``init`` scheme, freeze the kernels and learn a per-channel additive
        scalar (``conv.parametrizations.weight[0].shift``, as in kernelatlas 0.1.0).
    seed : seed of every random choice; ``None`` draws one from torch's global generator,
        so ``torch.manual_seed`` makes the call reproducible.
    reference : a trained bank for schemes that need one (``atlas``: an atlas DataFrame or a
        kernel array [N, kh, kw]; ``covariance``: an array or a dict keyed by layer name,
        ``(kh, kw)`` or ``kh``).
    config : :class:`~kernelatlas.train.init.DoGConfig` for the schemes that draw DoGs.
    total_steps : planned training length; schemes with a schedule (``atlas_prior``) size
        their warm-up from it.
    **options : the scheme's own options (``get_scheme(name).options``).

    Returns
    -------
    The same ``model``. An earlier kernelatlas parametrisation or prior is baked first
    (:func:`bake_`), so schemes do not stack.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(8, 8, 7, padding=3, groups=8))
    >>> _ = init_depthwise_(net, "dog", seed=0)
    >>> _ = init_depthwise_(net, "structured", seed=0)  # 18 coefficients per kernel
    >>> tuple(net[0].parametrizations.weight.original.shape)
    (8, 18)
    >>> _ = bake_(net)  # a plain nn.Conv2d again, same kernels
    """
    info = get_scheme(scheme)
    from .init import DoGConfig, depthwise_convs

    if config is not None:
        if not isinstance(config, DoGConfig):
            raise KernelAtlasError("config must be a kernelatlas.train.init.DoGConfig")
        if "config" not in info.options:
            raise KernelAtlasError(f"scheme {scheme!r} takes no DoGConfig (config=)")
        options["config"] = config
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        allowed = ", ".join(info.options) or "none"
        raise KernelAtlasError(
            f"scheme {scheme!r} has no option {', '.join(map(repr, unknown))} (options: {allowed})"
        )
    if info.needs_reference and reference is None:
        raise KernelAtlasError(
            f"scheme {scheme!r} needs reference=: a trained bank [N,kh,kw] "
            "(or an Atlas().predict DataFrame for 'atlas')"
        )
    if freeze and info.lever not in ("init", "control"):
        raise KernelAtlasError(
            f"freeze=True applies to initialisers; scheme {scheme!r} is a {info.lever} lever"
        )
    if total_steps is not None and int(total_steps) < 1:
        raise KernelAtlasError(f"total_steps must be >= 1, got {total_steps}")
    if not depthwise_convs(model):
        raise KernelAtlasError("the model has no depthwise convolutions (groups == in_channels)")
    if info.needs_layer_scale:
        from .frozen import layer_scales

        if not layer_scales(model):
            raise KernelAtlasError(
                f"scheme {scheme!r} sets the layer scale of the blocks holding depthwise "
                "convolutions, and this model has none (a 'gamma'/'layer_scale' parameter "
                "next to the depthwise conv): use the scheme without '_ls'"
            )
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    bake_(model)
    info.fn(model, seed=int(seed), reference=reference, total_steps=total_steps, **options)
    if freeze:
        from .init import freeze_depthwise_

        freeze_depthwise_(model)
    return model
