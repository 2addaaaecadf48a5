"""The pattern-family registry: ``@register_family`` and the lookups every stage uses.

Built-in families live one per module in :mod:`kernelatlas.atlas.families` and are found
by listing that package (adding a family there is adding one file). Anyone can register
more from their own code::

    from kernelatlas.atlas.family import PatternFamily
    from kernelatlas.atlas.registry import register_family

    @register_family
    class Gabor(PatternFamily):
        name = "gabor"
        ...

A name can be registered once: a second registration is refused (no silent overwrite).
The order of :func:`families` is each family's ``order``, then its name.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import threading

from ..errors import KernelAtlasError
from .family import PatternFamily, _check_family_class

__all__ = ["register_family", "unregister_family", "families", "get_family", "list_families"]

_REGISTRY: dict[str, PatternFamily] = {}
_LOCK = threading.RLock()
_loaded = False
_loading = False
_RESERVED = ("unclassified", "degenerate")


def _load_builtins() -> None:
    global _loaded, _loading
    if _loaded:
        return
    with _LOCK:  # other threads wait here; the loading thread re-enters (RLock)
        if _loaded or _loading:
            return
        _loading = True
        try:
            package = importlib.import_module(f"{__package__}.families")

            for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not mod.name.startswith("_"):
                    importlib.import_module(f"{package.__name__}.{mod.name}")
            _loaded = True
        finally:
            _loading = False


def register_family(cls: type[PatternFamily]) -> type[PatternFamily]:
    """Class decorator: register a :class:`~kernelatlas.atlas.family.PatternFamily`.

    Refuses an incomplete definition, a reserved name (``unclassified``, ``degenerate``)
    and a name that is already registered.
    """
    if not (isinstance(cls, type) and issubclass(cls, PatternFamily)):
        raise KernelAtlasError("register_family decorates a subclass of PatternFamily")
    _check_family_class(cls)
    _load_builtins()
    name = cls.name
    if name in _RESERVED or not name.isidentifier():
        raise KernelAtlasError(
            f"pattern family name {name!r} is reserved or not an identifier: choose another"
        )
    with _LOCK:
        if name in _REGISTRY:
            raise KernelAtlasError(
                f"pattern family {name!r} is already registered "
                f"({type(_REGISTRY[name]).__module__}): choose another name"
            )
        _REGISTRY[name] = cls()
    return cls


def unregister_family(name: str) -> None:
    """Remove a family registered at run time (for tests and notebooks)."""
    _load_builtins()
    with _LOCK:
        if name not in _REGISTRY:
            raise KernelAtlasError(f"no pattern family {name!r} is registered")
        del _REGISTRY[name]


def families() -> tuple[PatternFamily, ...]:
    """Every registered family, in order."""
    _load_builtins()
    with _LOCK:
        return tuple(sorted(_REGISTRY.values(), key=lambda f: (f.order, f.name)))


def get_family(name: str) -> PatternFamily:
    """The family registered under ``name``."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(f.name for f in families())
        raise KernelAtlasError(f"unknown pattern family {name!r}: choose one of {known}") from None


def list_families(pattern: str = "*") -> list[str]:
    """Names of the registered families matching a shell-style wildcard, in order."""
    return [f.name for f in families() if fnmatch.fnmatchcase(f.name, pattern)]
