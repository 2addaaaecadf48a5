"""Reader: a PyTorch ``nn.Module`` (timm, torchvision or your own).

Depthwise = ``nn.Conv2d`` with ``groups == in_channels > 1`` and ``out_channels`` a multiple
of it. A convolution with a single input channel (a grayscale stem) satisfies
``groups == in_channels`` too, but it is an ordinary convolution on the image and is not kept.

``fold_bn=True`` multiplies each kernel by ``gamma / sqrt(running_var + eps)`` of the batch
norm that consumes the convolution's output. That BN is found structurally: from a
``torch.fx`` trace (the conv's only user is a BatchNorm module), or, when the model does not
trace, as the next sibling of the conv inside an ``nn.Sequential``.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn

from .base import LayerKernels
from .formats import ReadResult

__all__ = ["read_module", "is_depthwise", "following_batchnorms", "fold_bn_scale"]


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise 2-D convolution (see the module docstring)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.in_channels > 1
        and module.groups == module.in_channels
        and module.out_channels % module.in_channels == 0
    )


def _usable_bn(module: nn.Module | None) -> bool:
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.running_var is not None
        and module.track_running_stats
    )


@functools.cache
def _leaf_tracer() -> type:
    import torch.fx

    class LeafTracer(torch.fx.Tracer):
        """fx's tracer, with every batch norm and convolution a leaf: fx traces into a module
        defined outside ``torch.nn`` (timm's ``BatchNormAct2d``, ``Conv2dSame``), and its
        ``F.batch_norm`` call was no BatchNorm module to fold."""

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            leaf = isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Conv2d)
            return leaf or super().is_leaf_module(m, qualname)

    return LeafTracer


def following_batchnorms(model: nn.Module, conv_names: list[str]) -> dict[str, str]:
    """Map each depthwise conv path to the path of the BN that consumes its output."""
    modules = dict(model.named_modules())
    found: dict[str, str] = {}
    try:
        graph = _leaf_tracer()().trace(model)
    except Exception:  # models with data-dependent control flow do not trace
        graph = None
    if graph is not None:
        wanted = set(conv_names)
        for node in graph.nodes:
            if node.op == "call_module" and node.target in wanted and len(node.users) == 1:
                (user,) = node.users
                if user.op == "call_module" and _usable_bn(modules.get(user.target)):
                    found[node.target] = str(user.target)
        return found
    # fallback: the next sibling in an nn.Sequential
    for name in conv_names:
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name)
        if isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            i = keys.index(child)
            if i + 1 < len(keys) and _usable_bn(parent._modules[keys[i + 1]]):
                found[name] = f"{parent_name}.{keys[i + 1]}" if parent_name else keys[i + 1]
    return found


def fold_bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> np.ndarray:
    """Per-channel scale ``gamma / sqrt(running_var + eps)`` of a batch norm."""
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    return (gamma / torch.sqrt(var + bn.eps)).float().cpu().numpy()


def read_module(model: nn.Module, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of ``model`` in module order (1x1 ones counted as skipped)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    convs = [(name, m) for name, m in model.named_modules() if is_depthwise(m)]
    kept = [(n, m) for n, m in convs if tuple(m.kernel_size) != (1, 1)]
    skipped = len(convs) - len(kept)
    bns: dict[str, str] = {}
    if fold_bn and kept:
        bns = following_batchnorms(model, [n for n, _ in kept])
        missing = len(kept) - len(bns)
        if missing:
            warnings.warn(
                f"fold_bn: {missing} of {len(kept)} depthwise layers have no following "
                "BatchNorm; kept unfolded (bn_folded=False)",
                stacklevel=3,
            )
    modules = dict(model.named_modules())
    layers = []
    with torch.no_grad():
        for i, (name, conv) in enumerate(kept):
            w = conv.weight.detach()
            dtype = str(w.dtype).removeprefix("torch.")
            k = w.float().cpu().numpy().reshape(w.shape[0], w.shape[2], w.shape[3])
            folded = name in bns
            if folded:
                k = k * fold_bn_scale(modules[bns[name]])[:, None, None]
            layers.append(
                LayerKernels(
                    layer=name,
                    layer_index=i,
                    weights=np.ascontiguousarray(k, np.float32),
                    stride=int(max(conv.stride)),
                    dilation=int(max(conv.dilation)),
                    bn_folded=folded,
                    dtype=dtype,
                )
            )
    return ReadResult(layers, {"1x1": skipped} if skipped else {})
