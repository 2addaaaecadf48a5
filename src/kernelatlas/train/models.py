"""Small depthwise-separable networks for 28-64 px single-channel images.

- ``convnext``: timm's ConvNeXt with the ConvNeXt-atto shape (depths 2-2-6-2, dims
  40-80-160-320, 7x7 depthwise kernels, ``conv_mlp``) and a 1x1 stem below 64 px, so a
  28 px image gives 28-14-7-3 px stage maps (at 64 px: the usual 4x4 patch stem, 16-8-4-2).
- ``mobilenetv2``: torchvision's MobileNetV2 (3x3 depthwise kernels) with a stride-1 stem
  and the last stride-2 stage made stride 1 for small images (28 -> 14 -> 7 -> 4 px);
  ``stem_stride=2`` halves every map (28 -> 14 -> 7 -> 4 -> 2 px, about 3x cheaper on a CPU).

``width`` scales the channel counts, ``depth`` the number of blocks per stage, so the same
architecture can be sized for a CPU smoke test or a GPU benchmark. timm and torchvision
are imported lazily (the ``timm`` extra).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import KernelAtlasError

__all__ = ["ARCHS", "build_model", "convnext_small_images", "mobilenetv2_small_images"]

_ATTO_DEPTHS = (2, 2, 6, 2)
_ATTO_DIMS = (40, 80, 160, 320)
# MobileNetV2's inverted-residual setting [expansion t, channels c, blocks n, stride s],
# with the stride of the 160-channel stage set to 1 for 28 px inputs.
_MBV2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)


def _scaled(n: int, factor: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * factor)))


def _check_scale(width: float, depth: float, image_size: int) -> None:
    if not (width > 0 and depth > 0):
        raise KernelAtlasError(f"width and depth must be > 0, got width={width}, depth={depth}")
    if image_size < 8:
        raise KernelAtlasError(f"image_size must be >= 8 px, got {image_size}")


def convnext_small_images(
    num_classes: int = 10,
    *,
    in_chans: int = 1,
    image_size: int = 28,
    width: float = 1.0,
    depth: float = 1.0,
    kernel_size: int = 7,
) -> nn.Module:
    """A ConvNeXt-atto-shaped timm ``ConvNeXt`` for small images (untrained).

    Examples
    --------
    >>> m = convnext_small_images(10, image_size=28, width=0.25, depth=0.5)
    >>> tuple(m(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    _check_scale(width, depth, image_size)
    try:
        from timm.models.convnext import ConvNeXt
    except ImportError:
        raise KernelAtlasError(
            "the convnext architecture needs timm: pip install 'kernelatlas[timm]'"
        ) from None
    patch = 1 if image_size < 64 else 4
    if image_size < 24:
        raise KernelAtlasError(f"convnext needs image_size >= 24 px, got {image_size}")
    depths = tuple(_scaled(d, depth) for d in _ATTO_DEPTHS)
    dims = tuple(_scaled(c, width, 8) for c in _ATTO_DIMS)
    return ConvNeXt(
        in_chans=in_chans,
        num_classes=num_classes,
        depths=depths,
        dims=dims,
        kernel_sizes=kernel_size,
        patch_size=patch,
        conv_mlp=True,
    )


def mobilenetv2_small_images(
    num_classes: int = 10,
    *,
    in_chans: int = 1,
    image_size: int = 28,
    width: float = 1.0,
    depth: float = 1.0,
    stem_stride: int | None = None,
) -> nn.Module:
    """A torchvision ``MobileNetV2`` adapted to small single-channel images (untrained).

    ``stem_stride`` ``None``: 1 up to 64 px, else 2.

    Examples
    --------
    >>> m = mobilenetv2_small_images(10, width=0.25, depth=0.5)
    >>> tuple(m(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    _check_scale(width, depth, image_size)
    if stem_stride not in (None, 1, 2):
        raise KernelAtlasError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    try:
        from torchvision.models import MobileNetV2
        from torchvision.ops.misc import Conv2dNormActivation
    except ImportError:
        raise KernelAtlasError(
            "the mobilenetv2 architecture needs torchvision: pip install 'kernelatlas[timm]'"
        ) from None
    setting = [[t, c, _scaled(n, depth), s] for t, c, n, s in _MBV2_SETTING]
    model = MobileNetV2(
        num_classes=num_classes, width_mult=width, inverted_residual_setting=setting, dropout=0.0
    )
    stem = model.features[0][0]
    model.features[0] = Conv2dNormActivation(
        in_chans,
        stem.out_channels,
        kernel_size=3,
        stride=stem_stride or (1 if image_size <= 64 else 2),
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU6,
    )
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")  # as torchvision does
    return model


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "convnext": convnext_small_images,
    "mobilenetv2": mobilenetv2_small_images,
}


def build_model(
    arch: str,
    num_classes: int = 10,
    *,
    in_chans: int = 1,
    image_size: int = 28,
    width: float = 1.0,
    depth: float = 1.0,
    seed: int | None = None,
    **options: object,
) -> nn.Module:
    """Build one of :data:`ARCHS`, untrained; with ``seed`` the default init is reproducible.

    ``options`` go to the builder (``stem_stride`` for ``mobilenetv2``).
    """
    if arch not in ARCHS:
        raise KernelAtlasError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    import inspect

    allowed = set(inspect.signature(ARCHS[arch]).parameters) - {"num_classes"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise KernelAtlasError(f"arch {arch!r} has no option {', '.join(unknown)}")
    kwargs = dict(in_chans=in_chans, image_size=image_size, width=width, depth=depth, **options)
    if seed is None:
        return ARCHS[arch](num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHS[arch](num_classes, **kwargs)
