"""Lever 2: master keys the way the paper trains them, and an unmuted depthwise branch.

Babaiee et al. (NeurIPS 2025) find trained depthwise kernels to be mostly linear shifts
``a * F + b`` of eight filters ``F``, and train networks whose depthwise filters are those
eight, frozen. :class:`ChannelAffine` is that parametrisation: the kernel ``F`` (the
master key, norm-matched to the default initialisation) is frozen and every channel learns
a scale ``a`` (initialised to 1) and a shift ``b`` (initialised to 0) at their own learning
rates. By default those rates are *tap-matched*: AdamW moves every parameter by about ``lr``
per step, which changes a ``kh x kw`` kernel by about ``lr * sqrt(kh*kw)`` in L2 norm; the
scale gets ``lr * sqrt(kh*kw) / mean ||F||`` so one step changes the kernel as much as one
step of ordinary taps would, and the shift (already in tap units) keeps ``lr``.

ConvNeXt blocks multiply their residual branch by a layer scale initialised to 1e-6, which
mutes the depthwise kernels (whatever their initial shape) for the first tens of steps.
The ``*_ls`` schemes set that layer scale to ``layer_scale`` (default 1.0, the value of
ConvNeXt V2, which has no layer scale, and which the master-key paper trains) in every block
that holds a depthwise convolution; ``default_ls`` is their control.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import KernelAtlasError
from .init import depthwise_convs, draw_dog_, draw_master_keys_
from .schemes import KernelParametrization, register_scheme

__all__ = ["ChannelAffine", "layer_scales", "set_layer_scale_", "freeze_affine_"]

_NEURIPS = "Babaiee et al., NeurIPS 2025 (master key filters)"
_V2 = "Woo et al., CVPR 2023 (ConvNeXt V2: no layer scale)"
_LS_NAMES = ("gamma", "layer_scale")


class ChannelAffine(KernelParametrization):
    """Parametrisation ``F -> a[c] * F + b[c]`` with ``F`` frozen: the master-key recipe.

    ``scale`` (``a``, [C,1,1,1], starts at 1) and ``shift`` (``b``, starts at 0) are learned
    at ``lr * lr_scales[name]`` and take no weight decay.
    """

    no_decay = frozenset({"scale", "shift"})
    original_decay = False

    def __init__(
        self,
        channels: int,
        *,
        scale_lr: float,
        shift_lr: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1, 1, device=device, dtype=dtype))
        self.shift = nn.Parameter(torch.zeros(channels, 1, 1, 1, device=device, dtype=dtype))
        self.lr_scales = {"scale": float(scale_lr), "shift": float(shift_lr)}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale + self.shift


def _check_lr(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and 0 < value < 1e6):
        raise KernelAtlasError(f"{name} must be a positive learning-rate multiplier, got {value!r}")


def freeze_affine_(
    model: nn.Module, *, scale_lr: float | None = None, shift_lr: float = 1.0
) -> nn.Module:
    """Freeze every depthwise kernel ``F`` and learn ``a * F + b`` per channel.

    ``scale_lr`` ``None``: tap-matched (``sqrt(kh*kw) / mean ||F||`` of the layer).
    """
    _check_lr("scale_lr", scale_lr)
    _check_lr("shift_lr", shift_lr)
    for _, conv in depthwise_convs(model):
        w = conv.weight
        c, kh, kw = w.shape[0], w.shape[2], w.shape[3]
        if scale_lr is None:
            norm = float(torch.linalg.vector_norm(w.detach().reshape(c, -1), dim=1).mean())
            a_lr = math.sqrt(kh * kw) / max(norm, 1e-12)
        else:
            a_lr = float(scale_lr)
        w.requires_grad_(False)
        affine = ChannelAffine(c, scale_lr=a_lr, shift_lr=shift_lr, device=w.device, dtype=w.dtype)
        parametrize.register_parametrization(conv, "weight", affine)
    return model


# --------------------------------------------------------------------------- layer scale


def layer_scales(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layer-scale parameters of the blocks that hold depthwise convolutions.

    A block is the module whose direct child is the depthwise conv; its layer scale is a
    direct parameter named ``gamma`` or ``layer_scale`` (timm's and torchvision's ConvNeXt),
    or the only parameter, ``gamma``, of a direct child module without children (timm's
    ``LayerScale``). Models without any (MobileNetV2) give an empty list.
    """
    found: dict[str, nn.Parameter] = {}
    for name, _ in depthwise_convs(model):
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        prefix = f"{parent_name}." if parent_name else ""
        for pname, p in parent.named_parameters(recurse=False):
            if pname in _LS_NAMES:
                found[prefix + pname] = p
        for cname, child in parent.named_children():
            direct = dict(child.named_parameters(recurse=False))
            if set(direct) == {"gamma"} and next(child.children(), None) is None:
                found[f"{prefix}{cname}.gamma"] = direct["gamma"]
    return list(found.items())


def set_layer_scale_(model: nn.Module, value: float) -> int:
    """Set every layer scale of :func:`layer_scales` to ``value``; returns how many."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise KernelAtlasError(f"layer_scale must be a positive number, got {value!r}")
    params = layer_scales(model)
    with torch.no_grad():
        for _, p in params:
            p.fill_(float(value))
    return len(params)


# --------------------------------------------------------------------------- the schemes


@register_scheme(
    "master_key_frozen",
    lever="frozen",
    summary="the eight master keys frozen; per-channel a*F+b at tap-matched learning rates",
    paper=_NEURIPS,
    control="default_frozen",
)
def _master_key_frozen(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    scale_lr: float | None = None,
    shift_lr: float = 1.0,
) -> None:
    draw_master_keys_(model, seed=seed)
    freeze_affine_(model, scale_lr=scale_lr, shift_lr=shift_lr)


@register_scheme(
    "default_frozen",
    lever="frozen",
    summary="control: the default random kernels frozen, per-channel a*F+b as master_key_frozen",
)
def _default_frozen(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    scale_lr: float | None = None,
    shift_lr: float = 1.0,
) -> None:
    freeze_affine_(model, scale_lr=scale_lr, shift_lr=shift_lr)


@register_scheme(
    "default_ls",
    lever="control",
    summary="control: default kernels, the blocks' layer scale set to layer_scale (1.0)",
    paper=_V2,
    needs_layer_scale=True,
)
def _default_ls(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    layer_scale: float = 1.0,
) -> None:
    set_layer_scale_(model, layer_scale)


@register_scheme(
    "dog_ls",
    lever="init",
    summary="dog init with the blocks' layer scale set to layer_scale (1.0)",
    paper=f"Babaiee et al., ICLR 2024; {_V2}",
    needs_layer_scale=True,
    control="default_ls",
)
def _dog_ls(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    layer_scale: float = 1.0,
) -> None:
    draw_dog_(model, seed=seed)
    set_layer_scale_(model, layer_scale)


@register_scheme(
    "master_key_ls",
    lever="init",
    summary="trainable master-key init with the blocks' layer scale set to layer_scale (1.0)",
    paper=f"{_NEURIPS}; {_V2}",
    needs_layer_scale=True,
    control="default_ls",
)
def _master_key_ls(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    layer_scale: float = 1.0,
) -> None:
    draw_master_keys_(model, seed=seed)
    set_layer_scale_(model, layer_scale)


@register_scheme(
    "master_key_frozen_ls",
    lever="frozen",
    summary="master_key_frozen with the blocks' layer scale set to layer_scale (1.0)",
    paper=f"{_NEURIPS}; {_V2}",
    needs_layer_scale=True,
    control="default_ls",
)
def _master_key_frozen_ls(
    model: nn.Module,
    *,
    seed: int,
    reference: object,
    total_steps: int | None,
    layer_scale: float = 1.0,
    scale_lr: float | None = None,
    shift_lr: float = 1.0,
) -> None:
    draw_master_keys_(model, seed=seed)
    freeze_affine_(model, scale_lr=scale_lr, shift_lr=shift_lr)
    set_layer_scale_(model, layer_scale)
