"""Read PyTorch pickles without running any of their code.

One restricted unpickler reads every torch file kernelatlas meets: ``torch.save``
checkpoints (zip or legacy), whole pickled models (``torch.save(model)``, Ultralytics YOLO
checkpoints), TorchScript archives (``torch.jit.save``) and bare pickles of arrays.
``torch.load`` and ``torch.jit.load`` are never called on a file.

How it stays inert
------------------
- A fixed allowlist (:data:`SAFE_GLOBALS`) maps the tensor-rebuild functions, storage
  types, dtypes, ``torch.Size``, ``OrderedDict`` and numpy's array reconstruction to
  kernelatlas's own functions, which build *records* (:class:`TensorRef`: storage key,
  offset, shape, stride) and never allocate tensor data.
- Every other global becomes a :class:`Global` placeholder (module and name, nothing
  imported). REDUCE, NEWOBJ, INST, OBJ and BUILD on a placeholder make an :class:`Opaque`
  that only records its arguments, state and items; nothing is ever called, so a payload
  (``os.system``, a getattr or attrgetter chain, ``exec``...) has nothing to run on.
- A global of a module that can run code (``os``, ``subprocess``, ``builtins.exec``,
  ``torch.load``...; :func:`code_running`) is refused with :class:`UnsafeFileError` as soon
  as the pickle names it; a pickle that fails to parse is scanned for such names too, so a
  payload behind corrupt or out-of-band (protocol 5) data is still called unsafe.
- Tensor data is copied out of the file only for the tensors a reader asks for
  (:meth:`TorchFile.array`), with plain reads (no mmap: a file truncated while being read
  is an error, not a SIGBUS), after checking the view against its storage and charging the
  float32 copy to the per-source budget (:mod:`kernelatlas.limits`). A view that would
  hold more elements than its storage (``expand()``, overlapping strides) is never
  materialised.
"""

from __future__ import annotations

import _compat_pickle
import ast
import io
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, KernelAtlasError, UnsafeFileError
from ..limits import charge, check_tensor, max_tensor_bytes

__all__ = [
    "DType",
    "TensorRef",
    "Global",
    "Opaque",
    "TorchFile",
    "open_torch_file",
    "code_running",
    "SAFE_GLOBALS",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Largest pickle kernelatlas parses (a whole YOLOv8x pickle is ~1 MB).
MAX_PICKLE_BYTES = 256 * 2**20
#: Largest TorchScript code file read for layer constants.
MAX_CODE_BYTES = 4 * 2**20
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
#: What zipfile raises on a damaged archive (zlib.error, struct.error... included).
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
    NotImplementedError, RuntimeError, OverflowError, zlib.error, struct.error,
)  # fmt: skip


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class DType:
    """A torch dtype as the pickle names it (``torch.float16`` or ``torch.HalfStorage``)."""

    name: str
    itemsize: int
    floating: bool
    np: str | None = None  # numpy dtype string; None where numpy has none (bfloat16, fp8)


_DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", 4, True, "<f4"), DType("float64", 8, True, "<f8"),
        DType("float16", 2, True, "<f2"), DType("bfloat16", 2, True),
        DType("float8_e4m3fn", 1, True), DType("float8_e5m2", 1, True),
        DType("int64", 8, False, "<i8"), DType("int32", 4, False, "<i4"),
        DType("int16", 2, False, "<i2"), DType("int8", 1, False, "i1"),
        DType("uint8", 1, False, "u1"), DType("uint16", 2, False, "<u2"),
        DType("uint32", 4, False, "<u4"), DType("uint64", 8, False, "<u8"),
        DType("bool", 1, False, "?"), DType("complex64", 8, False, "<c8"),
        DType("complex128", 16, False, "<c16"), DType("qint8", 1, False, "i1"),
        DType("quint8", 1, False, "u1"), DType("qint32", 4, False, "<i4"),
    )
}  # fmt: skip
_DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16",
}  # fmt: skip
_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "UntypedStorage": "uint8",
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class _StorageType:
    dtype: DType


@dataclass(frozen=True, eq=False)
class _Storage:
    """A storage the pickle refers to: its record key, dtype and element count."""

    key: str
    dtype: DType
    numel: int
    archive: str = "data"  # the record folder in a zip (TorchScript constants: "constants")
    base: int = 0  # legacy storage views: element offset into the root storage


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor as the file declares it: nothing is read until :meth:`TorchFile.array`."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, eq=False)
class _ArrayRef:
    """A numpy array pickled inline (bare pickles and some checkpoints)."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> DType:
        kind = self.data.dtype
        return DType(kind.name, kind.itemsize, kind.kind == "f", kind.str)


@dataclass(frozen=True, eq=False)
class Global:
    """A global the pickle names and kernelatlas does not know: never imported or called."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Opaque:
    """What the pickle built from a placeholder: only what it was given is recorded."""

    cls: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: Any = None
    items: list = field(default_factory=list)
    pairs: list = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return self.cls.qualname if isinstance(self.cls, Global) else "<opaque>"


def is_tensor(obj: Any) -> bool:
    """Whether ``obj`` is a tensor record (:class:`TensorRef` or an inline numpy array)."""
    return isinstance(obj, TensorRef | _ArrayRef)


# ---------------------------------------------------------------------- safe functions
class _Safe:
    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, tuple | list) and all(type(v) is int for v in value):
        return tuple(value)
    raise FormatError(f"{what} is not a tuple of integers")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    if not isinstance(storage, _Storage) or type(offset) is not int:
        raise FormatError("a tensor refers to something that is not a storage")
    shape, strides = _ints(size, "tensor shape"), _ints(stride, "tensor stride")
    if len(shape) != len(strides):
        raise FormatError(f"tensor shape {list(shape)} and stride {list(strides)} differ in length")
    return TensorRef(storage, offset, shape, strides, storage.dtype)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
    dtype: Any = None, *_: Any,
) -> TensorRef:  # fmt: skip
    ref = _rebuild_tensor(storage, offset, size, stride)
    if isinstance(dtype, DType) and dtype is not ref.dtype:
        if storage.dtype.name != "uint8":  # only untyped (byte) storages take another dtype
            raise FormatError("a tensor's dtype does not match its storage")
        return TensorRef(storage, offset, ref.shape, ref.stride, dtype)
    return ref


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    # the tensor-subclass wrapper: rebuild the tensor only with an allowlisted function
    if isinstance(func, _Safe) and isinstance(args, tuple):
        return func.fn(*args)
    return Opaque(Global("torch._tensor", "_rebuild_from_type_v2"), (func, new_type, args, state))


def _ordered_dict(*args: Any) -> dict:
    if not args:
        return {}
    if len(args) == 1 and isinstance(args[0], list | tuple):
        try:
            return dict(args[0])
        except (TypeError, ValueError):
            pass
    raise FormatError("an OrderedDict built from something that is not a list of pairs")


def _size(*args: Any) -> tuple[int, ...]:
    if len(args) == 1:
        return _ints(args[0], "torch.Size")
    return _ints(args, "torch.Size")


def _encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    if type(text) is not str or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise FormatError("_codecs.encode on something that is not text")
    return text.encode(encoding)


def _identity(value: Any, *_: Any) -> Any:
    return value


class _NdArray:
    """``numpy.core.multiarray._reconstruct``: an array filled in by BUILD (raw bytes only)."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def build(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise FormatError("a pickled numpy array has a malformed state")
        _, shape, dtype, fortran, raw = state
        dims = _ints(shape, "numpy array shape")
        if not isinstance(dtype, _NpDType) or not isinstance(raw, bytes | bytearray):
            return  # an object or string array: stays an inert record, never a tensor
        kind = dtype.resolve()
        n = math.prod(dims)
        if n * kind.itemsize != len(raw):
            raise FormatError(f"a pickled numpy array of shape {list(dims)} holds {len(raw)} bytes")
        arr = np.frombuffer(raw, kind, count=n)
        self.array = arr.reshape(dims, order="F" if fortran else "C")


class _NpDType:
    """``numpy.dtype(code, ...)`` for a numeric code (others: :func:`_np_dtype`)."""

    OK = re.compile(r"[fiub?c]\d{0,2}")

    def __init__(self, code: str) -> None:
        self.code, self.order = code, "<"

    def build(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = "<" if state[1] == "=" else state[1]

    def resolve(self) -> np.dtype:
        kind = np.dtype(self.code)
        return kind if kind.itemsize == 1 else kind.newbyteorder(self.order)


def _np_reconstruct(cls: Any, *_: Any) -> _NdArray:
    return _NdArray()


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C", *_: Any) -> Any:
    """``numpy._core.numeric._frombuffer``: how protocol 5 pickles an array in band."""
    if not (isinstance(dtype, _NpDType) and isinstance(buf, bytes | bytearray)):
        return Opaque(Global("numpy", "ndarray"), (buf, dtype, shape, order))
    holder = _NdArray()
    holder.build((1, shape, dtype, order == "F", buf))
    if holder.array is None:
        raise FormatError("a pickled numpy array is malformed")
    return _ArrayRef(holder.array)


def _np_dtype(code: Any, *args: Any) -> Any:
    if type(code) is str and _NpDType.OK.fullmatch(code):
        return _NpDType(code)
    return Opaque(Global("numpy", "dtype"), (code, *args))  # objects, strings: inert


def _safe_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    fns = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch", "Size"): _size,
        ("_codecs", "encode"): _encode,
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "dtype"): _np_dtype,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    }
    for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
                 "build_genlist", "restore_type_tag"):  # fmt: skip
        fns[("torch.jit._pickle", name)] = _identity
    for key, fn in fns.items():
        table[key] = _Safe(fn, ".".join(key))
    table[("numpy", "ndarray")] = Global("numpy", "ndarray")
    for name, dtype in _STORAGES.items():
        table[("torch", name)] = _StorageType(_DTYPES[dtype])
        table[("torch.storage", name)] = _StorageType(_DTYPES[dtype])
    for name, dt in _DTYPES.items():
        table[("torch", name)] = dt
    for alias, name in _DTYPE_ALIASES.items():
        table[("torch", alias)] = _DTYPES[name]
    return table


#: ``(module, name) ->`` what the unpickler puts on its stack instead of the real global.
SAFE_GLOBALS: Mapping[tuple[str, str], Any] = _safe_globals()

#: Modules whose globals run code, touch files or the network, or load other files.
_CODE_MODULES = (
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "importlib", "imp", "runpy",
    "shutil", "socket", "_socket", "ssl", "pickle", "_pickle", "cPickle", "marshal", "ctypes",
    "_ctypes", "code", "codeop", "pty", "tty", "webbrowser", "multiprocessing", "threading",
    "_thread", "signal", "asyncio", "pdb", "bdb", "timeit", "trace", "cProfile", "profile",
    "pydoc", "ensurepip", "venv", "distutils", "setuptools", "pip", "site", "io", "_io",
    "codecs", "fileinput", "tempfile", "zipimport", "zipfile", "tarfile", "urllib", "http",
    "ftplib", "smtplib", "telnetlib", "xmlrpc", "inspect", "gc", "ast", "dill", "joblib",
    "cloudpickle", "torch.hub", "torch.serialization", "torch.jit", "torch.ops", "torch._C",
    "torch.utils.cpp_extension", "torch.package", "torch.distributed", "torch._dynamo",
    "torch.compiler", "torch.library", "torch.classes", "torch.storage", "numpy.testing",
    "numpy.f2py", "numpy.distutils", "numpy.lib.npyio", "numpy.ctypeslib",
)  # fmt: skip
#: Code-running names in modules whose other globals only build data.
_CODE_NAMES = {
    "builtins": {"eval", "exec", "compile", "open", "__import__", "input", "breakpoint", "exit",
                 "quit", "help", "globals", "locals", "vars", "setattr", "delattr",
                 "__build_class__", "memoryview"},
    "types": {"FunctionType", "LambdaType", "CodeType", "MethodType", "ModuleType",
              "BuiltinFunctionType", "BuiltinMethodType", "new_class", "GeneratorType",
              "CoroutineType", "FrameType", "TracebackType"},
    "torch": {"load", "save", "compile", "hub", "jit", "ops", "classes", "library", "_C"},
    "numpy": {"load", "save", "fromfile", "loadtxt", "genfromtxt", "tofile", "memmap"},
    "operator": {"methodcaller"},
}  # fmt: skip


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name a protocol-2 pickle's Python 2 name resolves to (``commands.Popen``
    is ``subprocess.Popen``), as a normal unpickler maps it."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def code_running(module: str, name: str) -> bool:
    """Whether the global ``module.name`` could run code if a normal unpickler resolved it."""
    module, name = _py3_name(module, name)
    if (module, name) in SAFE_GLOBALS or module.startswith("torch.jit._pickle"):
        return False  # kernelatlas's own records
    if name in _CODE_NAMES.get("builtins" if module == "__builtin__" else module, ()):
        return True
    return any(module == m or module.startswith(m + ".") for m in _CODE_MODULES)


# ------------------------------------------------------------------------- unpickler
_D = pickle._Unpickler.dispatch  # type: ignore[attr-defined]


class _Unpickler(pickle._Unpickler):  # type: ignore[misc,name-defined]
    """Pure-Python unpickler (dict memo, no C allocations on declared sizes) whose
    globals are records and whose calls are never made (see the module docstring)."""

    def __init__(
        self,
        file: Any,
        what: str,
        persistent: Callable[[Any], Any] | None,
        *,
        limit: int | None = None,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._file = file
        self._what = what
        self._persistent = persistent
        self._size = limit if limit is not None else _remaining(file)
        self.globals_seen: list[str] = []

    # globals and persistent ids ---------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if type(module) is not str or type(name) is not str:
            raise FormatError(f"{self._what}: malformed global in the pickle")
        module, name = _py3_name(module, name)
        qual = f"{module}.{name}"
        self.globals_seen.append(qual)
        if code_running(module, name):
            raise UnsafeFileError(
                f"{self._what}: refused, its pickle calls {qual}, code that torch.load would "
                "run (kernelatlas ran none of it); do not load this file"
            )
        safe = SAFE_GLOBALS.get((module, name))
        return safe if safe is not None else Global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise FormatError(f"{self._what}: a persistent id in a pickle that has no records")
        return self._persistent(pid)

    # calls: only allowlisted functions run; a placeholder records --------------------
    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise FormatError(f"{self._what}: a pickled call whose arguments are not a tuple")
        if isinstance(func, _Safe):
            try:
                return func.fn(*args, **(kwargs or {}))
            except (TypeError, ValueError, OverflowError):
                raise FormatError(f"{self._what}: malformed arguments to {func.name}") from None
        if isinstance(func, Global | Opaque | _StorageType):
            return Opaque(func, args, dict(kwargs or {}))
        raise FormatError(f"{self._what}: the pickle calls a {type(func).__name__}")

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs))

    def _load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        cls = self.find_class(module, name)
        args = tuple(self.pop_mark())  # before self.append: pop_mark rebinds it
        self.append(self._call(cls, args))

    def _load_obj(self) -> None:
        args = self.pop_mark()
        if not args:
            raise FormatError(f"{self._what}: OBJ without a class")
        cls = args.pop(0)
        self.append(self._call(cls, tuple(args)))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Opaque):
            inst.state = state
        elif isinstance(inst, _NdArray | _NpDType):
            inst.build(state)
            if isinstance(inst, _NdArray):
                self.stack[-1] = (
                    _ArrayRef(inst.array)
                    if inst.array is not None
                    else Opaque(Global("numpy", "ndarray"), state=state)
                )
        elif not (is_tensor(inst) or type(inst) in (dict, list, set)):
            # the attributes of a tensor or an OrderedDict (its ``_metadata``) are dropped
            raise FormatError(f"{self._what}: BUILD on a {type(inst).__name__}")

    # containers: plain list/dict/set, or recorded on a placeholder -----------------
    def _add(self, target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, Opaque):
            target.items.extend(items)
        else:
            raise FormatError(f"{self._what}: APPEND to a {type(target).__name__}")

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._add(self.stack[-1], [value])

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._add(self.stack[-1], items)

    def _set(self, target: Any, pairs: list) -> None:
        if type(target) is dict:
            try:
                target.update(pairs)
            except TypeError:
                raise FormatError(f"{self._what}: an unhashable dict key") from None
        elif isinstance(target, Opaque):
            target.pairs.extend(pairs)
        else:
            raise FormatError(f"{self._what}: SETITEM on a {type(target).__name__}")

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set(self.stack[-1], [(key, value)])

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        self._set(self.stack[-1], list(zip(items[::2], items[1::2], strict=False)))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            try:
                target.update(items)
            except TypeError:
                raise FormatError(f"{self._what}: an unhashable set item") from None
        elif isinstance(target, Opaque):
            target.items.extend(items)
        else:
            raise FormatError(f"{self._what}: ADDITEMS on a {type(target).__name__}")

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise FormatError(f"{self._what}: BYTEARRAY8 longer than the file")
        self.append(bytearray(self.read(n)))

    def load(self) -> Any:
        """Unpickle one object. Frames are a buffering hint (their bytes follow inline), so
        the input is read directly, without the stock unframer's per-read indirection."""
        self.read, self.readline = self._file_read, self._file_readline
        self.readinto = self._file.readinto if hasattr(self._file, "readinto") else None
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError("pickle data ended before STOP")
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def _load_frame(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise FormatError(f"{self._what}: a pickle frame longer than the file")

    def _load_ext(self) -> None:
        raise FormatError(f"{self._what}: the pickle uses the copyreg extension registry")

    dispatch = {
        **_D,
        pickle.REDUCE[0]: _load_reduce,
        pickle.NEWOBJ[0]: _load_newobj,
        pickle.NEWOBJ_EX[0]: _load_newobj_ex,
        pickle.INST[0]: _load_inst,
        pickle.OBJ[0]: _load_obj,
        pickle.BUILD[0]: _load_build,
        pickle.APPEND[0]: _load_append,
        pickle.APPENDS[0]: _load_appends,
        pickle.SETITEM[0]: _load_setitem,
        pickle.SETITEMS[0]: _load_setitems,
        pickle.ADDITEMS[0]: _load_additems,
        pickle.BYTEARRAY8[0]: _load_bytearray8,
        pickle.FRAME[0]: _load_frame,
        pickle.EXT1[0]: _load_ext,
        pickle.EXT2[0]: _load_ext,
        pickle.EXT4[0]: _load_ext,
    }


def _remaining(file: Any) -> int:
    try:
        pos = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return MAX_PICKLE_BYTES


def _located(exc: KernelAtlasError, what: str) -> KernelAtlasError:
    """``exc`` with ``what`` (the file) in front of its message, once."""
    msg = str(exc)
    return exc if what in msg else type(exc)(f"{what}: {msg}")


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:160] if msg.strip() else "no detail"


def _unsafe_names(data: bytes) -> str | None:
    """The first code-running global a (possibly corrupt) pickle names, by opcode scan."""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, name = arg.partition(" ")
                if code_running(module, name):
                    return ".".join(_py3_name(module, name))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                if code_running(strings[-2], strings[-1]):
                    return ".".join(_py3_name(strings[-2], strings[-1]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a corrupt tail ends the scan
        pass
    return None


def _parse(data: bytes, what: str, persistent: Callable[[Any], Any] | None) -> Any:
    """Unpickle ``data`` with :class:`_Unpickler`; every failure is one line."""
    try:
        return _Unpickler(io.BytesIO(data), what, persistent).load()
    except KernelAtlasError as exc:
        raise _located(exc, what) from None
    except (MemoryError, RecursionError):
        raise FormatError(f"{what}: corrupt pickle (absurd sizes or nesting)") from None
    except Exception as exc:  # a corrupt pickle raises anything (EOFError, KeyError, ...)
        bad = _unsafe_names(data)
        if bad:
            raise UnsafeFileError(
                f"{what}: refused, its pickle calls {bad}, code that torch.load would run "
                "(kernelatlas ran none of it); do not load this file"
            ) from None
        raise FormatError(
            f"{what}: truncated or corrupt pickle ({type(exc).__name__}: {_first_line(str(exc))})"
        ) from None


# ------------------------------------------------------------------------- containers
class TorchFile:
    """An opened torch file: its unpickled object (records) and how to read a tensor.

    Attributes
    ----------
    obj : the object ``torch.save`` pickled (dicts, lists, :class:`Opaque`, :class:`TensorRef`).
    kind : ``zip``, ``torchscript``, ``legacy`` or ``pickle``.
    constants : TorchScript's ``constants.pkl`` (frozen models keep their weights there).
    """

    def __init__(self, path: Path, kind: str, obj: Any, reader: Callable[[_Storage], bytes],
                 *, big_endian: bool = False, constants: Any = None,
                 code: Callable[[str], str | None] | None = None) -> None:  # fmt: skip
        self.path, self.kind, self.obj = path, kind, obj
        self.constants = constants
        self._reader = reader
        self._big = big_endian
        self._code = code
        self._cache: dict[tuple[str, str], bytes] = {}

    def __enter__(self) -> TorchFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the archive (if one is open) and the storage bytes read so far."""
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()
        self._cache.clear()

    def code(self, module: str) -> str | None:
        """TorchScript source of ``module`` (``__torch__.x.y``), or None."""
        return self._code(module) if self._code is not None else None

    def _bytes(self, st: _Storage) -> bytes:
        key = (st.archive, st.key)
        if key not in self._cache:
            self._cache[key] = self._reader(st)
        return self._cache[key]

    def array(self, ref: Any, what: str) -> np.ndarray:
        """The tensor ``ref`` as a float32 array (a copy; nothing stays tied to the file).

        Raises FormatError for a view outside its storage, TensorTooLargeError over a limit.
        """
        if isinstance(ref, _ArrayRef):
            check_tensor(what, ref.shape, ref.data.dtype.itemsize)
            return np.asarray(ref.data, np.float32).copy()
        if not isinstance(ref, TensorRef):
            raise FormatError(f"{what}: not a tensor")
        st = ref.storage
        if ref.offset < 0 or any(s < 0 for s in ref.stride) or any(d < 0 for d in ref.shape):
            raise FormatError(f"{what}: negative shape, offset or stride; the file is corrupt")
        if overlapping(ref):
            raise FormatError(f"{what}: an expanded or overlapping view; not a trained weight")
        check_tensor(what, ref.shape, ref.dtype.itemsize)
        n = math.prod(ref.shape)
        end = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
        if n and end >= st.numel:
            raise FormatError(
                f"{what}: view of shape {list(ref.shape)} runs past its storage of {st.numel} "
                "elements; the file is corrupt"
            )
        raw = self._bytes(st)
        item = ref.dtype.itemsize
        start = (st.base + ref.offset) * item
        if not n:
            return np.zeros(ref.shape, np.float32)
        try:
            flat = _decode(raw, ref.dtype, self._big, start, (end - ref.offset + 1))
        except KernelAtlasError as exc:
            raise _located(exc, what) from None
        view = np.lib.stride_tricks.as_strided(
            flat, ref.shape, [s * flat.itemsize for s in ref.stride], writeable=False
        )
        return np.array(view, np.float32, order="C")  # always a copy: writeable, owned


def overlapping(ref: TensorRef) -> bool:
    """Whether a view has more elements than the storage span it covers (``expand()``)."""
    n = math.prod(ref.shape)
    if n <= 1:
        return False
    span = 1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
    return span < n or any(s == 0 for d, s in zip(ref.shape, ref.stride, strict=True) if d > 1)


def _decode(raw: bytes, dtype: DType, big: bool, start: int, count: int) -> np.ndarray:
    """``count`` elements of ``dtype`` from byte ``start`` of ``raw`` as a numpy array."""
    nbytes = count * dtype.itemsize
    if start < 0 or start + nbytes > len(raw):
        raise FormatError("a tensor runs past the bytes of its storage record; the file is corrupt")
    chunk = memoryview(raw)[start : start + nbytes]
    if dtype.np is not None:
        code = (">" + dtype.np[1:]) if big and dtype.np[0] == "<" else dtype.np
        return np.frombuffer(chunk, code, count=count)
    if dtype.name == "bfloat16":
        u16 = np.frombuffer(chunk, ">u2" if big else "<u2", count=count).astype(np.uint32)
        return (u16 << 16).view(np.float32)
    import torch  # float8: torch knows the formats

    t = torch.frombuffer(bytearray(chunk), dtype=getattr(torch, dtype.name))
    return t.float().numpy()


def _storage_from_pid(pid: Any, what: str, archive: str) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise FormatError(f"{what}: a persistent id that is not a storage")
    kind, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(kind, _StorageType):
        raise FormatError(f"{what}: a storage of unknown type")
    if type(key) is not str or not _KEY.fullmatch(key) or ".." in key:
        raise FormatError(f"{what}: storage key {str(key)[:40]!r} is not a record name")
    if type(numel) is not int or numel < 0:
        raise FormatError(f"{what}: storage {key} declares {numel!r} elements")
    check_tensor(f"{what}: storage of {numel} x {kind.dtype.name}", [numel], kind.dtype.itemsize,
                 budget=False)  # fmt: skip
    base = 0
    if len(pid) >= 6 and pid[5] is not None:  # legacy storage view (view_key, offset, size)
        view = pid[5]
        if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int):
            raise FormatError(f"{what}: malformed storage view")
        base = view[1]
    return _Storage(key, kind.dtype, numel, archive, base)


def open_torch_file(path: Path) -> TorchFile:
    """Open a torch file (zip, TorchScript, legacy or bare pickle) without running it."""
    what = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise FormatError(f"{what}: cannot read ({exc.strerror})") from None
    if head == b"PK\x03\x04" or head[:2] == b"PK":
        return _open_zip(path, what)
    return _open_pickle(path, what)


def _zip_member(zf: zipfile.ZipFile, name: str, what: str, *, limit: int | None = None) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"{what}: the archive has no member {name!r}; it is incomplete") from None
    cap = limit if limit is not None else max_tensor_bytes()
    if info.file_size > cap:
        raise FormatError(
            f"{what}: member {name!r} declares {info.file_size:,} bytes (limit {cap:,})"
        )
    charge(f"member {name!r}", info.file_size)
    try:
        with zf.open(info) as src:
            if info.CRC == 0 and info.file_size and hasattr(src, "_expected_crc"):
                # torch.save with CRC32 disabled (set_crc32_options(False)) writes CRC 0;
                # the other checks (sizes, shapes, bounds) still hold
                src._expected_crc = None
            data = src.read(info.file_size + 1)
    except ZIP_ERRORS as exc:
        raise FormatError(
            f"{what}: member {name!r} is truncated or corrupt ({type(exc).__name__}: "
            f"{_first_line(str(exc))}); the file is damaged"
        ) from None
    if len(data) != info.file_size:
        raise FormatError(f"{what}: member {name!r} is truncated")
    return data


def _safe_member_name(name: str, what: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise FormatError(f"{what}: archive member {name[:80]!r} points outside the archive")


def _open_zip(path: Path, what: str) -> TorchFile:
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise FormatError(
            f"{what}: truncated or corrupt zip archive ({_first_line(str(exc))}); the file is "
            "damaged or not a PyTorch file"
        ) from None
    with zf:
        names = zf.namelist()
        pkls = sorted((n for n in names if n.rsplit("/", 1)[-1] == "data.pkl"), key=len)
        if not pkls:
            raise FormatError(f"{what}: a zip without data.pkl: not a PyTorch checkpoint")
        _safe_member_name(pkls[0], what)
        prefix = pkls[0][: -len("data.pkl")]
        members = set(names)
        big = False
        if prefix + "byteorder" in members:
            big = _zip_member(zf, prefix + "byteorder", what, limit=16).strip() == b"big"
        script = prefix + "constants.pkl" in members or any(
            n.startswith(prefix + "code/") for n in names
        )

        def persistent(archive: str) -> Callable[[Any], Any]:
            return lambda pid: _storage_from_pid(pid, what, archive)

        obj = _parse(_zip_member(zf, pkls[0], what, limit=MAX_PICKLE_BYTES), what,
                     persistent("data"))  # fmt: skip
        constants = None
        if script and prefix + "constants.pkl" in members:
            constants = _parse(
                _zip_member(zf, prefix + "constants.pkl", what, limit=MAX_PICKLE_BYTES),
                what,
                persistent("constants"),
            )
    kind = "torchscript" if script else "zip"

    records = _Records(path, prefix)

    def code(module: str) -> str | None:
        if not re.fullmatch(r"__torch__(\.[A-Za-z_]\w*)+", module):
            return None
        name = f"{prefix}code/{module.replace('.', '/')}.py"
        z = records.archive()
        if name not in z.NameToInfo:
            return None
        return _zip_member(z, name, what, limit=MAX_CODE_BYTES).decode("utf-8", "replace")

    return TorchFile(path, kind, obj, records, big_endian=big, constants=constants, code=code)


class _Records:
    """Reads the storage records of a zip through one archive opened on first use."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix = path, prefix
        self._zf: zipfile.ZipFile | None = None

    def archive(self) -> zipfile.ZipFile:
        try:
            if self._zf is None:
                self._zf = zipfile.ZipFile(self.path)
        except ZIP_ERRORS as exc:
            raise FormatError(
                f"{self.path}: cannot reopen the archive ({type(exc).__name__}); it changed "
                "while being read or is damaged"
            ) from None
        return self._zf

    def __call__(self, st: _Storage) -> bytes:
        name = f"{self.prefix}{st.archive}/{st.key}"
        data = _zip_member(self.archive(), name, str(self.path))
        if len(data) < st.numel * st.dtype.itemsize:
            raise FormatError(
                f"{self.path}: storage {st.key} declares {st.numel * st.dtype.itemsize:,} bytes "
                f"but its record holds {len(data):,}; the file is truncated or corrupt"
            )
        return data

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None


class _Window(Exception):
    """The pickles run past the bytes read so far: read a larger prefix of the file."""


def _open_pickle(path: Path, what: str) -> TorchFile:
    """A legacy ``torch.save`` file (magic number, protocol, sys info, object, storage keys,
    then the storages) or a bare pickle (the first object is the content). The pickles are
    parsed from a prefix of the file held in memory (grown if they are longer), so no read
    can ask for more than the file holds; the storages are read later, only those asked for.
    """
    size = path.stat().st_size
    window = min(size, 4 * 2**20)
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read(window)
        except OSError as exc:
            raise FormatError(f"{what}: cannot read ({exc.strerror})") from None
        try:
            return _legacy_from(path, what, data, size)
        except _Window:
            if window >= min(size, MAX_PICKLE_BYTES):
                raise FormatError(
                    f"{what}: truncated or corrupt PyTorch pickle (it runs past {window:,} bytes)"
                ) from None
            window = min(window * 8, size, MAX_PICKLE_BYTES)


_NOT_TORCH = (
    "{what}: not a PyTorch file (no zip archive or pickle header); check that it is the "
    "weight file, or download or export it again"
)


def _legacy_from(path: Path, what: str, data: bytes, size: int) -> TorchFile:
    buf = io.BytesIO(data)
    storages: dict[str, _Storage] = {}

    def persistent(pid: Any) -> _Storage:
        st = _storage_from_pid(pid, what, "data")
        storages.setdefault(st.key, _Storage(st.key, st.dtype, st.numel))
        return st

    def load(pers: Callable[[Any], Any] | None) -> Any:
        start = buf.tell()
        try:
            return _Unpickler(buf, what, pers, limit=size - start).load()
        except UnsafeFileError as exc:
            raise _located(exc, what) from None
        except KernelAtlasError as exc:
            if start == 0 and data[:1] != b"\x80":  # not a pickle at all (a Core ML .bin...)
                raise FormatError(_NOT_TORCH.format(what=what)) from None
            raise _located(exc, what) from None
        except (MemoryError, RecursionError):
            raise FormatError(f"{what}: corrupt pickle (absurd sizes or nesting)") from None
        except Exception as exc:  # noqa: BLE001 - corrupt pickles raise anything
            bad = _unsafe_names(data[start:])
            if bad:
                raise UnsafeFileError(
                    f"{what}: refused, its pickle calls {bad}, code that torch.load would "
                    "run (kernelatlas ran none of it); do not load this file"
                ) from None
            if start == 0 and data[:1] != b"\x80":  # torch.save pickles open with PROTO
                raise FormatError(_NOT_TORCH.format(what=what)) from None
            if buf.tell() >= len(data) and len(data) < size:
                raise _Window from None
            raise FormatError(
                f"{what}: truncated or corrupt PyTorch pickle ({type(exc).__name__}: "
                f"{_first_line(str(exc))})"
            ) from None

    first = load(None)
    if not (type(first) is int and first == LEGACY_MAGIC):
        return TorchFile(path, "pickle", first, _no_records(what))
    protocol = load(None)
    if protocol != 1001:
        raise FormatError(f"{what}: legacy checkpoint of protocol {protocol!r} (expected 1001)")
    sys_info = load(None)
    big = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    obj = load(persistent)
    keys = load(None)
    if not (isinstance(keys, list) and all(type(k) is str for k in keys)):
        raise FormatError(f"{what}: malformed storage list; the file is corrupt")
    offsets: dict[str, int] = {}
    pos = buf.tell()
    fmt = ">q" if big else "<q"
    with open(path, "rb") as f:
        for key in keys:
            st = storages.get(key)
            f.seek(pos)
            raw = f.read(8)
            if len(raw) < 8:
                raise FormatError(f"{what}: truncated before storage {key}; the file is damaged")
            (numel,) = struct.unpack(fmt, raw)
            if st is None or numel != st.numel:
                raise FormatError(f"{what}: storage {key} does not match its declaration")
            offsets[key] = pos + 8
            pos += 8 + numel * st.dtype.itemsize
            if pos > size:
                raise FormatError(
                    f"{what}: storage {key} runs past the end of the file; it is truncated"
                )

    def read(st: _Storage) -> bytes:
        if st.key not in offsets:
            raise FormatError(f"{what}: storage {st.key} is missing from the file")
        nbytes = storages[st.key].numel * st.dtype.itemsize
        charge(f"storage {st.key}", nbytes)
        with open(path, "rb") as g:
            g.seek(offsets[st.key])
            data = g.read(nbytes)
        if len(data) != nbytes:
            raise FormatError(
                f"{what}: storage {st.key} is truncated; the file changed or is damaged"
            )
        return data

    return TorchFile(path, "legacy", obj, read, big_endian=big)


def _no_records(what: str) -> Callable[[_Storage], bytes]:
    def read(st: _Storage) -> bytes:
        raise FormatError(f"{what}: refers to a storage record that a bare pickle cannot hold")

    return read


# ------------------------------------------------------------------ TorchScript code
_FINAL = re.compile(r"^  (\w+) : Final\[[^\n=]*\] = ([^\n]{1,80})$", re.MULTILINE)
_CLASS = re.compile(r"^class (\w+)\(", re.MULTILINE)
_TRACED_BN = re.compile(
    r"torch\.batch_norm\(\w+, [^,]+, [^,]+, [^,]+, [^,]+, (?:True|False), [-+.\deE]+, "
    r"([-+.\deE]+),"
)
_TRACED_CONV = re.compile(
    r"torch\._convolution\(\w+, weight, [^,]+, \[(\d+), (\d+)\], \[[^\]]*\], "
    r"\[(\d+), (\d+)\], (True|False), \[[^\]]*\], (\d+),"
)


def script_constants(source: str, cls: str) -> dict[str, Any]:
    """The ``Final`` class constants (``groups``, ``in_channels``, ``eps``...) of class
    ``cls`` in a TorchScript code file, read as literals (nothing is run), plus
    stride/dilation/groups of a traced ``torch._convolution`` call on ``weight`` and the
    ``eps`` of a traced ``torch.batch_norm`` call."""
    spans = [(m.group(1), m.start()) for m in _CLASS.finditer(source)]
    body = ""
    for i, (name, start) in enumerate(spans):
        if name == cls:
            end = spans[i + 1][1] if i + 1 < len(spans) else len(source)
            body = source[start:end]
            break
    out: dict[str, Any] = {}
    for m in _FINAL.finditer(body):
        try:
            out[m.group(1)] = ast.literal_eval(m.group(2).strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    bn = _TRACED_BN.search(body)
    if bn and "eps" not in out:
        try:
            out["eps"] = float(bn.group(1))
        except ValueError:
            pass
    traced = _TRACED_CONV.search(body)
    if traced and "groups" not in out:
        sh, sw, dh, dw, transposed, groups = traced.groups()
        out.update(stride=(int(sh), int(sw)), dilation=(int(dh), int(dw)),
                   transposed=transposed == "True", groups=int(groups))  # fmt: skip
    return out


def walk(obj: Any, limit: int = 2_000_000) -> Iterator[Any]:
    """Every object reachable from ``obj`` once (dicts, lists, tuples, placeholders)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if len(seen) > limit:
            raise FormatError("the pickle holds more objects than kernelatlas walks")
        yield o
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif isinstance(o, Opaque):
            stack.extend([o.state, *o.args, *o.items, *(v for _, v in o.pairs)])
