"""One estimator base for Atlas, KernelAutoencoder and KernelFitter (scikit-learn habits).

- ``__init__`` only stores its keyword arguments; the parameter names come from its
  signature, so :meth:`BaseEstimator.get_params`, :meth:`~BaseEstimator.set_params`,
  ``repr`` and :func:`clone` work for every subclass without code of their own.
- Parameters are declared with constraints (``_parameter_constraints``) and validated when
  ``fit`` runs: a subclass's ``fit`` is wrapped once, at class creation, so the check runs
  before the fit body (sklearn's ``_fit_context``), with a message that names the fix.
- Learned state ends in ``_``; :meth:`BaseEstimator._check_fitted` refuses an unfitted
  estimator (:class:`NotFittedError`).
- :meth:`BaseEstimator._check_kernels` is the one input check of ``predict``-like methods:
  ``[N, kh, kw]`` of the fitted size, or a message that says what to do.

Examples
--------
>>> from kernelatlas.estimator import BaseEstimator, Interval, clone
>>> class Scaler(BaseEstimator):
...     _parameter_constraints = {"factor": [Interval(float, 0, None, closed="neither")]}
...     def __init__(self, factor: float = 1.0) -> None:
...         self.factor = factor
...     def fit(self) -> "Scaler":
...         self.scale_ = self.factor
...         return self
>>> Scaler(factor=2.0)
Scaler(factor=2.0)
>>> clone(Scaler(factor=2.0)).get_params()
{'factor': 2.0}
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import numbers
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from .errors import KernelAtlasError
from .sizes import parse_kernel_size

__all__ = [
    "BaseEstimator",
    "NotFittedError",
    "Interval",
    "Options",
    "KernelSize",
    "Device",
    "clone",
    "validate_parameter",
]


class NotFittedError(KernelAtlasError):
    """A method that needs learned state was called before ``fit``."""


# --------------------------------------------------------------------------- constraints


class _Constraint:
    def is_satisfied_by(self, value: object) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def __str__(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Interval(_Constraint):
    """A number of ``kind`` (``int`` or ``float``; ints pass as floats) in an interval.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``; ``None`` bounds are open.
    """

    def __init__(
        self, kind: type, left: float | None, right: float | None, *, closed: str = "both"
    ) -> None:
        if kind not in (int, float) or closed not in ("both", "left", "right", "neither"):
            raise ValueError("Interval(kind=int|float, ..., closed=both|left|right|neither)")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value: object) -> bool:
        if not (_is_int(value) if self.kind is int else _is_real(value)):
            return False
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v):
            return False
        if self.left is not None:
            if v < self.left or (v == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if v > self.right or (v == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        what = "an int" if self.kind is int else "a number"
        lo = "-inf" if self.left is None else f"{self.left:g}"
        hi = "inf" if self.right is None else f"{self.right:g}"
        lb = "[" if self.closed in ("both", "left") and self.left is not None else "("
        rb = "]" if self.closed in ("both", "right") and self.right is not None else ")"
        return f"{what} in {lb}{lo}, {hi}{rb}"


class Options(_Constraint):
    """One of a fixed set of values."""

    def __init__(self, options: Iterable[object]) -> None:
        self.options = tuple(options)

    def is_satisfied_by(self, value: object) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class KernelSize(_Constraint):
    """``k`` or ``(kh, kw)`` as :func:`kernelatlas.sizes.parse_kernel_size` accepts it."""

    def is_satisfied_by(self, value: object) -> bool:
        try:
            parse_kernel_size(value)
        except KernelAtlasError:
            return False
        return True

    def __str__(self) -> str:
        return "an int or (kh, kw) of ints, each between 1 and 128"


class Device(_Constraint):
    """A torch device name or ``torch.device`` (whether it exists is checked when used)."""

    def is_satisfied_by(self, value: object) -> bool:
        import torch

        if isinstance(value, torch.device):
            return True
        if not isinstance(value, str):
            return False
        try:
            torch.device(value)
        except (RuntimeError, TypeError):
            return False
        return True

    def __str__(self) -> str:
        return "a torch device ('cpu', 'cuda', 'cuda:1', ...)"


class _Instance(_Constraint):
    def __init__(self, kind: type) -> None:
        self.kind = kind

    def is_satisfied_by(self, value: object) -> bool:
        if self.kind is bool:
            return isinstance(value, bool | np.bool_)
        if self.kind in (int,):
            return _is_int(value)
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return {bool: "True or False", int: "an int", str: "a string"}.get(
            self.kind, f"a {self.kind.__name__}"
        )


class _NoneConstraint(_Constraint):
    def is_satisfied_by(self, value: object) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


def _make_constraint(spec: object) -> _Constraint:
    if spec is None:
        return _NoneConstraint()
    if isinstance(spec, _Constraint):
        return spec
    if spec == "boolean":
        return _Instance(bool)
    if isinstance(spec, type):
        return _Instance(spec)
    raise TypeError(f"unknown parameter constraint {spec!r}")


def validate_parameter(owner: str, name: str, value: object, specs: Iterable[object]) -> None:
    """Raise a one-line :class:`KernelAtlasError` unless ``value`` meets one of ``specs``."""
    constraints = [_make_constraint(s) for s in specs]
    if any(c.is_satisfied_by(value) for c in constraints):
        return
    allowed = " or ".join(str(c) for c in constraints)
    raise KernelAtlasError(f"{owner}: {name} must be {allowed}, got {value!r}")


# --------------------------------------------------------------------------- the base


class BaseEstimator:
    """Signature-based parameters, declarative validation, fitted-state checks.

    Subclasses set ``_parameter_constraints`` (parameter name -> list of accepted kinds:
    :class:`Interval`, :class:`Options`, :class:`KernelSize`, :class:`Device`, a type,
    ``"boolean"`` or ``None``) and store every ``__init__`` keyword argument unchanged under
    its own name. A parameter without a declared constraint is accepted as it is.
    """

    _parameter_constraints: ClassVar[dict[str, list[object]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is not None and not getattr(fit, "_validates_parameters", False):

            @functools.wraps(fit)
            def fit_with_validation(self: BaseEstimator, *args: Any, **kw: Any) -> Any:
                self._validate_constraints()
                return fit(self, *args, **kw)

            fit_with_validation._validates_parameters = True  # type: ignore[attr-defined]
            cls.fit = fit_with_validation  # type: ignore[method-assign]

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must not take *args or **kwargs")
        return [p.name for p in params]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's keyword arguments, read back from the attributes they set."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> BaseEstimator:
        """Set parameters by name (validated at the next ``fit``); returns ``self``."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise KernelAtlasError(
                    f"{type(self).__name__} has no parameter {name!r}: "
                    f"valid parameters are {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default
            for p in list(inspect.signature(type(self).__init__).parameters.values())[1:]
        }
        shown = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            same = default is not inspect.Parameter.empty and _same(value, default)
            if not same:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _validate_constraints(self) -> None:
        owner = type(self).__name__
        for name, value in self.get_params().items():
            specs = self._parameter_constraints.get(name)
            if specs is not None:
                validate_parameter(owner, name, value, specs)

    # ------------------------------------------------------------------ fitted state
    def _is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("__") for k in vars(self))

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted yet: call {name}(...).fit() first")

    def _check_kernels(self, kernels: object, shape: tuple[int, int]) -> np.ndarray:
        """``kernels`` as an array [N, kh, kw] of the fitted ``shape`` (one kernel allowed)."""
        from .normalize import as_kernel_array

        arr = as_kernel_array(kernels)
        if arr.shape[1:] != tuple(shape):
            kh, kw = shape
            name = type(self).__name__
            fix = f"fit one {name} per kernel size"
            if np.ndim(kernels) == 2 and arr.shape[2] == kh * kw:  # rows of flattened kernels
                fix = (
                    f"a 2-D array is one kernel; for {arr.shape[1]} flattened kernels pass "
                    f"kernels.reshape(-1, {kh}, {kw})"
                )
            raise KernelAtlasError(
                f"this {name} is fitted for {kh}x{kw} kernels, got {arr.shape[1]}x{arr.shape[2]}: "
                f"{fix}"
            )
        return arr


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # arrays and the like: never equal to a scalar default
        return False


def clone(estimator: BaseEstimator) -> BaseEstimator:
    """A new, unfitted estimator with the same parameters (deep copies of mutable ones)."""
    if not isinstance(estimator, BaseEstimator):
        raise KernelAtlasError(f"clone needs a kernelatlas estimator, got {type(estimator)!r}")
    params = {k: copy.deepcopy(v) for k, v in estimator.get_params().items()}
    return type(estimator)(**params)
