"""The format registry: one entry per weight format, each registered by its reader module.

A reader module decorates its read function::

    @register_format("onnx", extensions=(".onnx",), extra="onnx", can_fold_bn=True,
                     sniff=lambda head, ext: ext == ".onnx", description="ONNX graph")
    def read_onnx(path: Path, *, fold_bn: bool = False) -> ReadResult: ...

and is listed in :data:`BUILTIN_MODULES` (imported on the first lookup, so reader modules
must import their optional dependencies inside ``read``). Adding a format is one new module
plus one line there. :func:`detect_format` picks the reader from the file's leading bytes
(the extension breaks ties); the CLI's ``kernelatlas formats`` listing and the
"unknown format" message are generated from the registry.
"""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError, KernelAtlasError
from ..limits import source_budget
from .base import LayerKernels

__all__ = [
    "ReadResult",
    "FormatSpec",
    "register_format",
    "get_format",
    "list_formats",
    "detect_format",
    "is_weight_file",
    "read_file",
    "supported_text",
    "check_regular_file",
    "BUILTIN_MODULES",
    "HEAD_BYTES",
    "FOREIGN_FORMATS",
]

#: Reader modules that register the built-in formats, in priority order.
BUILTIN_MODULES: tuple[str, ...] = (
    "kernelatlas.harvest.keras_h5",
    "kernelatlas.harvest.tflite_",
    "kernelatlas.harvest.arrays",
    "kernelatlas.harvest.pt2",
    "kernelatlas.harvest.torchscript",
    "kernelatlas.harvest.checkpoint",
    "kernelatlas.harvest.safetensors_",
    "kernelatlas.harvest.onnx_",
    "kernelatlas.harvest.tfjs",
    "kernelatlas.harvest.openvino_ir",
    "kernelatlas.harvest.ncnn_",
    "kernelatlas.harvest.tf_graphdef",
)
#: How many leading bytes of a file ``sniff`` sees.
HEAD_BYTES = 64


@dataclass(frozen=True)
class ReadResult:
    """What every reader returns.

    Attributes
    ----------
    layers : kept depthwise layers, in model order.
    skipped : layers not kept, by reason (``{"1x1": 3, "stem": 1}``): counted, never silent.
    notes : caveats the reader met, one sentence each.
    """

    layers: list[LayerKernels]
    skipped: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


Reader = Callable[..., ReadResult]
Sniffer = Callable[[bytes, str], bool]


@dataclass(frozen=True)
class FormatSpec:
    """One registered weight format.

    Attributes
    ----------
    name : registry key (``checkpoint``, ``onnx``...), also the ``format`` column of a bank.
    extensions : lower-case file suffixes, with the dot (``.pt``); the first is the usual one.
    read : ``read(path, *, fold_bn=False) -> ReadResult``.
    sniff : ``sniff(head, ext) -> bool``: does a file with these leading bytes
        (:data:`HEAD_BYTES`) and lower-case suffix belong to this format?
    extra : the pip extra that installs the reader's dependency (``kernelatlas[extra]``).
    can_fold_bn : whether the reader can fold a following batch norm into the kernels.
    description : one line for ``kernelatlas formats``.
    folder_file : a file name (``model.json``) that makes a folder holding it a model of this
        format (multi-file formats); ``read`` then gets the folder.
    glob_by_content : a wildcard (``'models/*'``) keeps a file with one of ``extensions`` only
        when ``sniff`` accepts it (other tools' ``.xml`` files are common beside models).
    """

    name: str
    extensions: tuple[str, ...]
    read: Reader
    sniff: Sniffer
    extra: str | None = None
    can_fold_bn: bool = False
    description: str = ""
    folder_file: str | None = None
    glob_by_content: bool = False


_REGISTRY: dict[str, FormatSpec] = {}
_loaded = False


def register_format(
    name: str,
    *,
    extensions: tuple[str, ...],
    sniff: Sniffer,
    extra: str | None = None,
    can_fold_bn: bool = False,
    description: str = "",
    folder_file: str | None = None,
    glob_by_content: bool = False,
) -> Callable[[Reader], Reader]:
    """Register the decorated function as the reader of format ``name``.

    Raises :class:`KernelAtlasError` when ``name`` is already registered (no silent
    overwrite).
    """

    def deco(read: Reader) -> Reader:
        if name in _REGISTRY:
            raise KernelAtlasError(f"format {name!r} is already registered")
        exts = tuple(e.lower() for e in extensions)
        if not all(e.startswith(".") for e in exts):
            raise KernelAtlasError(f"format {name!r}: extensions must start with '.', got {exts}")
        _REGISTRY[name] = FormatSpec(
            name,
            exts,
            read,
            sniff,
            extra,
            can_fold_bn,
            description,
            folder_file,
            glob_by_content,
        )
        return read

    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def list_formats() -> list[FormatSpec]:
    """Every registered format, in priority order."""
    _load_builtins()
    return list(_REGISTRY.values())


def get_format(name: str) -> FormatSpec:
    """The format registered as ``name``."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KernelAtlasError(
            f"unknown format {name!r}; registered: {', '.join(_REGISTRY)}"
        ) from None


def supported_text() -> str:
    """``.pt/.pth/..., .onnx, ...``: the suffixes of every format, for messages."""
    return ", ".join("/".join(spec.extensions) for spec in list_formats())


def _suffix(path: Path) -> str:
    return path.suffix.lower()


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _folder_hint(folder: Path) -> str:
    """Why a folder is not a source, and what is: its weight files (by suffix) if any; an
    analysis (or comparison) output is named as one, with its bank."""
    import itertools

    from ..outputs import is_kernelatlas_dir

    if is_kernelatlas_dir(folder, "analysis"):
        return (
            " holding an earlier analysis (summary.json, kernels.parquet): to analyse its "
            f"kernels again pass its bank, {folder / 'bank'}; to compare runs, use "
            "`kernelatlas compare`"
        )
    if is_kernelatlas_dir(folder, "comparison"):
        return " holding a `kernelatlas compare` output: pass the analyses it compared"

    exts = {e for spec in list_formats() for e in spec.extensions}

    def is_file(entry: os.DirEntry) -> bool:
        try:
            return entry.is_file()
        except OSError:  # a symlink loop
            return False

    try:
        with os.scandir(folder) as it:
            names = [f.name for f in itertools.islice(it, 10_000) if is_file(f)]
    except OSError:
        names = []
    found = sorted({Path(n).suffix.lower() for n in names} & exts)
    what = (
        f"; it holds {'/'.join(found)} files: name them, e.g. '{folder / ('*' + found[0])}'"
        if found
        else ""
    )
    return (
        ", neither a kernel bank nor a TF.js model folder (model.json): pass a weight file, "
        "a TF.js model folder or, to `analyze`, a bank folder written by "
        f"`kernelatlas harvest --out`{what}"
    )


def check_regular_file(path: str | os.PathLike[str]) -> int:
    """Refuse anything but a regular file of known size, before a byte of it is read;
    return its size.

    Checked on the file a symlink points to: a dangling symlink, a directory, a FIFO, a
    socket or a device (``/dev/zero`` reads forever) is one :class:`FormatError` line.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if p.is_symlink():
            raise FormatError(
                f"{p} is a dangling symlink (to {os.readlink(p)}): point it at a weight file"
            ) from None
        from .zoo import did_you_mean

        raise FormatError(
            f"{p}: no such file or registered source{did_you_mean(str(path))} "
            "(`kernelatlas sources` lists names)"
        ) from None
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EACCES on a parent...
        raise FormatError(f"{p}: cannot open ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FormatError(_foreign(p) or f"{p} is a directory{_folder_hint(p)}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
        raise FormatError(f"{p} is {kind}, not a regular file: kernelatlas reads weight files only")
    return int(st.st_size)


#: Weight formats kernelatlas does not read, by suffix: (framework, what to do instead).
FOREIGN_FORMATS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (".pdiparams", ".pdmodel", ".pdparams"),
        ("PaddlePaddle", "convert the model to ONNX with paddle2onnx"),
    ),
    **dict.fromkeys(
        (".caffemodel", ".prototxt"), ("Caffe", "convert the model to ONNX (e.g. caffe2onnx)")
    ),
    ".mnn": ("MNN", "harvest the ONNX/TFLite/PyTorch model it was converted from"),
    ".weights": ("Darknet", "convert the model to ONNX"),
    **dict.fromkeys(
        (".mlmodel", ".mlpackage", ".mlmodelc"),
        ("Core ML", "harvest the model it was converted from"),
    ),
    ".blob": ("OpenVINO compiled blob (Myriad/DepthAI)", "harvest the model it was compiled from"),
    **dict.fromkeys((".engine", ".plan"), ("TensorRT", "harvest the ONNX model it was built from")),
}
#: Model files whose headerless ``.bin`` beside them holds their weights (harvest the model).
_BIN_COMPANIONS = {".xml": "OpenVINO IR", ".param": "ncnn"}
#: Folder formats of other frameworks: a folder, or any file inside one, is theirs.
_PACKAGES = (".mlpackage", ".mlmodelc")


def _foreign(p: Path) -> str | None:
    """``"P: OpenVINO IR weights, a format ... not read; harvest ..."`` for a known format
    kernelatlas does not read, else None."""
    ext = _suffix(p)
    package = next((q.suffix.lower() for q in p.parents if q.suffix.lower() in _PACKAGES), None)
    if package is not None:  # a file inside a Core ML package (Data/.../weights/weight.bin)
        ext = package
    elif ext == ".bin":  # OpenVINO model.xml + model.bin, ncnn model.param + model.bin
        for companion, what in _BIN_COMPANIONS.items():
            model = p.with_suffix(companion)
            if model.is_file():
                return f"{p}: the weights of the {what} model {model.name}: harvest {model}"
        return None
    if ext not in FOREIGN_FORMATS:
        return None
    what, fix = FOREIGN_FORMATS[ext]
    return f"{p}: {what} weights, a format kernelatlas does not read; {fix}"


def _folder_format(folder: Path) -> str | None:
    """The multi-file format whose folder this is (TF.js: ``model.json`` + shards), or None."""
    return next(
        (s.name for s in list_formats() if s.folder_file and (folder / s.folder_file).is_file()),
        None,
    )


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a file: the first whose ``sniff`` accepts its leading bytes, else the
    first that claims its extension.

    Raises :class:`FormatError` (one line) for a missing, unreadable, empty or unknown file,
    and for anything that is not a regular file (:func:`check_regular_file`).
    """
    p = Path(path)
    name = _folder_format(p) if p.is_dir() else None
    if name is not None:
        return name
    check_regular_file(p)
    try:
        with open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise FormatError(f"{p}: cannot read ({exc.strerror}); check its permissions") from None
    if not head:
        raise FormatError(f"{p}: empty file; download or export it again")
    name = _claimed(p, head)
    if name is not None:
        return name
    raise FormatError(_foreign(p) or f"{p}: unknown weight format; supported: {supported_text()}")


def _claimed(p: Path, head: bytes) -> str | None:
    """The first format whose ``sniff`` accepts ``head``, else the first that claims the
    extension (not for another framework's file), else None."""
    ext = _suffix(p)
    if any(q.suffix.lower() in _PACKAGES for q in p.parents):
        return None  # inside another framework's package folder (its JSON, its .bin)
    specs = list_formats()
    for spec in specs:
        if spec.sniff(head, ext):
            return spec.name
    if _foreign(p):
        return None
    return next((spec.name for spec in specs if ext in spec.extensions), None)


def is_weight_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file or folder is one kernelatlas would try to read: a format claims it
    (:func:`detect_format` would not answer "unknown weight format" or "a format kernelatlas
    does not read"). What cannot be opened counts as claimed, so that reading it says why.
    For wildcard expansions: ``'models/*'`` keeps the weight files and leaves a README out."""
    p = Path(path)
    if p.is_dir():
        return _folder_format(p) is not None
    try:
        with open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return True
    if not head:  # empty: claimed by its extension (reading it then says it is empty)
        return any(_suffix(p) in s.extensions for s in list_formats())
    name = _claimed(p, head)
    return name is not None and (get_format(name).sniff(head, _suffix(p))
                                 or not get_format(name).glob_by_content)  # fmt: skip


def read_file(
    path: Path, fmt: str, *, fold_bn: bool = False, source: str | None = None
) -> ReadResult:
    """Read ``path`` with the reader of ``fmt``; a missing optional dependency is one line.

    ``source`` is what the user named (a registry name, a path as typed), for messages.
    """
    spec = get_format(fmt)
    if not (spec.folder_file and Path(path).is_dir()):
        check_regular_file(path)
    if fold_bn and not spec.can_fold_bn:
        where = f"{source} ({path})" if source and source != str(path) else str(path)
        folding = "/".join(s.name for s in list_formats() if s.can_fold_bn)
        raise KernelAtlasError(
            f"{where}: --fold-bn is not supported for the {fmt} format (batch norm is folded "
            f"for {folding} files and for timm: and nn.Module sources): drop --fold-bn"
        )
    try:
        with source_budget(str(path)):
            return spec.read(path, fold_bn=fold_bn)
    except ImportError as exc:
        if exc.name is None or exc.name.startswith("kernelatlas"):
            raise
        raise KernelAtlasError(
            f"reading {fmt} needs {exc.name}: pip install 'kernelatlas[{spec.extra or 'all'}]'"
        ) from None
