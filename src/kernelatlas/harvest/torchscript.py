"""Reader: TorchScript archives (``torch.jit.save``), read as data, never ``torch.jit.load``.

A TorchScript archive is a zip: ``<name>/data.pkl`` (the module tree as a pickle of
``__torch__.*`` objects), ``<name>/constants.pkl`` (a frozen model's weights),
``<name>/data/<key>`` tensor records and ``<name>/code/`` (the model's TorchScript source).
The pickles go through the restricted unpickler of
:mod:`kernelatlas.harvest.torch_pickle`; the code is never run: a scripted class's
``Final`` constants (``groups``, ``in_channels``, ``stride``, ``dilation``) are read from it
as literals, and a traced module's ``torch._convolution(...)`` call gives its groups, stride
and dilation. Layers without either are decided from their shapes, as in a state dict.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FormatError, KernelAtlasError
from .formats import ReadResult, register_format
from .torch_pickle import open_torch_file

__all__ = ["read_torchscript", "sniff_torchscript"]

# torch.jit.save writes the tensor records first (torch.save writes data.pkl first)
_FIRST_MEMBER = re.compile(rb"[^/]{1,200}/(?:data|constants)/\d+|[^/]{1,200}/code/\S+")


def sniff_torchscript(head: bytes, ext: str = "") -> bool:
    """A zip whose first member is a TorchScript record or code file (in the first 64 bytes
    the local header gives the first member's name)."""
    if head[:4] != b"PK\x03\x04" or len(head) < 30:
        return False
    n = int.from_bytes(head[26:28], "little")
    name = head[30 : 30 + n]
    return (
        len(name) == n
        and _FIRST_MEMBER.fullmatch(name) is not None
        or (len(name) < n and _FIRST_MEMBER.match(name) is not None and b"/code/" in name)
    )


@register_format(
    "torchscript",
    # .pt TorchScript is recognised by content; the .pt fallback stays the checkpoint's
    extensions=(".ptl", ".torchscript", ".jit"),
    sniff=sniff_torchscript,
    can_fold_bn=True,
    description="TorchScript archive (torch.jit.save, also as .pt), read as data: none of its "
    "code runs",
)
def read_torchscript(path: Path, *, fold_bn: bool = False) -> ReadResult:
    """Depthwise layers of a TorchScript archive."""
    from .checkpoint import read_torch_file  # here: checkpoint's sniff must register after ours

    try:
        with open_torch_file(path) as tf:
            if tf.kind != "torchscript":
                raise FormatError(
                    f"{path}: a zip without TorchScript code: read it as a checkpoint"
                )
            return read_torch_file(tf, fold_bn=fold_bn)
    except KernelAtlasError:
        raise
    except (MemoryError, RecursionError):
        raise FormatError(
            f"{path}: corrupt TorchScript archive (absurd sizes or nesting)"
        ) from None
